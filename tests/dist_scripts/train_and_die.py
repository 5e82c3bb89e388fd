"""Worker script for the crash-safety test: `train()` from the command line, killed with SIGKILL at a chosen point.

    python train_and_die.py <train.py arguments>      with LLAVA_TEST_DIE_AT set to
      "save:<step>"  - during the save of checkpoint-<step>, after the LoRA files were written and before the
                       optimizer, scheduler, RNG and trainer state (what a crash in the middle of a save leaves);
      "step:<step>"  - at the start of training step <step> (a crash between saves).
SIGKILL gives Python no chance to clean up, as with an OOM kill or a lost node.
"""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

from llava.train import llava_trainer, saving
from llava.train.train import train

DIE_AT_ENV = "LLAVA_TEST_DIE_AT"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DieAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            _die()


def main() -> None:
    kind, _, step = os.environ[DIE_AT_ENV].partition(":")
    step = int(step)
    if kind == "save":
        original = saving.save_lora_outputs

        def save_then_die(model, output_dir, *args, **kwargs):
            original(model, output_dir, *args, **kwargs)
            if os.path.basename(output_dir) == f"checkpoint-{step}":
                _die()

        saving.save_lora_outputs = save_then_die
    else:
        original_init = llava_trainer.LLaVATrainer.__init__

        def init_with_callback(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self.add_callback(_DieAtStep(step))

        llava_trainer.LLaVATrainer.__init__ = init_with_callback
    train()


if __name__ == "__main__":
    main()
