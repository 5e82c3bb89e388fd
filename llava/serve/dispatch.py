"""Which worker serves a model: upstream's dispatch methods ``lottery`` and ``shortest_queue``."""

from __future__ import annotations

import dataclasses
import random
from enum import Enum, auto

# Upstream treats a summed speed below this as "no worker".
MIN_TOTAL_SPEED = 1e-4


class DispatchMethod(Enum):
    LOTTERY = auto()
    SHORTEST_QUEUE = auto()

    @classmethod
    def from_str(cls, name: str) -> DispatchMethod:
        try:
            return {"lottery": cls.LOTTERY, "shortest_queue": cls.SHORTEST_QUEUE}[name]
        except KeyError:
            raise ValueError(f"Invalid dispatch method {name!r}: use lottery or shortest_queue") from None


@dataclasses.dataclass
class WorkerInfo:
    model_names: list[str]
    speed: int
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float


def choose_worker(
    method: DispatchMethod, workers: dict[str, WorkerInfo], model_name: str, rng: random.Random | None = None
) -> str:
    """The address of a worker serving ``model_name``, "" when none does.

    lottery: drawn with probability proportional to the workers' speeds. shortest_queue: the smallest queue per
    unit of speed; its queue grows by one at once, so the next caller is sent elsewhere before the next heartbeat.
    """
    candidates = [(name, info) for name, info in workers.items() if model_name in info.model_names]
    if method is DispatchMethod.LOTTERY:
        total = sum(info.speed for _, info in candidates)
        if total < MIN_TOTAL_SPEED:
            return ""
        return (rng or random).choices([name for name, _ in candidates], weights=[i.speed for _, i in candidates])[0]
    candidates = [(name, info) for name, info in candidates if info.speed > 0]
    if not candidates:
        return ""
    name, info = min(candidates, key=lambda item: item[1].queue_length / item[1].speed)
    info.queue_length += 1
    return name
