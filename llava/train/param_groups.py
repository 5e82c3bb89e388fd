"""The optimizer's parameter groups: each trainable parameter's learning rate and weight decay.

Upstream gives the projector its own learning rate (`--mm_projector_lr`). Beyond it, as the peers do:
- `--mm_vision_tower_lr` (LLaVA-NeXT): every trained vision-tower parameter (full tuning or tower LoRA);
- `--loraplus_lr_ratio R` (LoRA+, as peft's `create_loraplus_optimizer` and LLaMA-Factory group it): the LoRA B
  matrices, and the other 1-D trainables (DoRA magnitudes, trained biases and norms), at R x `--learning_rate`.
  Only the language model's: the projector and the tower keep the rates their own flags give them.
Each role is split by weight decay as transformers splits it (`Trainer.get_decay_parameter_names`); empty groups are
left out (DeepSpeed's ZeRO optimizers do not accept them).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

PROJECTOR_KEY = "mm_projector"
VISION_TOWER_KEY = "vision_tower"
LORA_B_KEY = "lora_B"
# PEFT's name of the B matrix of a LoRA embedding layer.
LORA_EMBEDDING_B_KEY = "lora_embedding_B"


def param_role(name: str, param: nn.Parameter, loraplus: bool) -> str:
    """'projector', 'vision_tower', 'loraplus_b' (LoRA+ only) or 'rest'."""
    if PROJECTOR_KEY in name:
        return "projector"
    if VISION_TOWER_KEY in name:
        return "vision_tower"
    if loraplus and (LORA_B_KEY in name or LORA_EMBEDDING_B_KEY in name or param.ndim == 1):
        return "loraplus_b"
    return "rest"


ROLES = ("rest", "loraplus_b", "projector", "vision_tower")


def param_groups(
    model: nn.Module,
    decay_parameters: set[str],
    weight_decay: float,
    learning_rate: float,
    projector_lr: Optional[float] = None,
    vision_tower_lr: Optional[float] = None,
    loraplus_lr_ratio: Optional[float] = None,
) -> list[dict[str, Any]]:
    """Groups in the order rest, LoRA+ B, projector, tower, each (weight decay | none). A group whose learning rate
    is the base one carries none (the optimizer's default, as transformers leaves it)."""
    rates = {
        "rest": None,
        "loraplus_b": None if loraplus_lr_ratio is None else learning_rate * loraplus_lr_ratio,
        "projector": projector_lr,
        "vision_tower": vision_tower_lr,
    }
    members: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = param_role(name, param, loraplus_lr_ratio is not None)
        members.setdefault((role, name in decay_parameters), []).append(param)
    groups = []
    for role in ROLES:
        for decays in (True, False):
            params = members.get((role, decays))
            if not params:
                continue
            group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decays else 0.0}
            if rates[role] is not None:
                group["lr"] = rates[role]
            groups.append(group)
    return groups


def needs_own_groups(args) -> bool:
    """Whether any flag asks for a learning rate other than `--learning_rate`."""
    return any(
        getattr(args, flag, None) is not None for flag in ("mm_projector_lr", "mm_vision_tower_lr", "loraplus_lr_ratio")
    )
