"""Sizes of the tiny stand-ins: the structure of Llama-2 / CLIP ViT-L/14-336, only much smaller.

Every linear layer of the language model has a width divisible by 32: bitsandbytes' CPU kernels pack 4-bit
weights in blocks of 32 output rows (``_convert_weight_packed_for_cpu``), so ``--load-4bit`` inference of a tiny run
works on a CPU as it does on a GPU.
"""

VOCAB_SIZE = 1024
LLM_HIDDEN = 64
LLM_INTERMEDIATE = 192
LLM_LAYERS = 2
LLM_HEADS = 4
LLM_MAX_POSITIONS = 2048
CLIP_HIDDEN = 32
CLIP_INTERMEDIATE = 64
CLIP_LAYERS = 3
CLIP_HEADS = 2
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8  # 4 x 4 = 16 patches (LLaVA-1.5: 24 x 24 = 576)
MODEL_MAX_LENGTH = 2048
LM_HEAD_SCALE = 10.0
# Grid pinpoints for anyres at the tiny tower's resolution (LLaVA-1.6 uses multiples of 336).
IMAGE_GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]

# OpenAI CLIP normalisation constants (as in CLIPImageProcessor for openai/clip-vit-*).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
