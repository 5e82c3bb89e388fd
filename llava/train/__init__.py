"""Training: the arguments, model set-up, LoRA, saving, the trainer and `train()` itself."""

# First, before anything here imports transformers' trainer stack (which imports PEFT, which imports bitsandbytes):
# it filters a notice bitsandbytes logs at import (see the module).
import llava.model.quantization  # noqa: F401
