"""Constants shared by data processing, the model and serving (same names and values as upstream LLaVA)."""

CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15

LOGDIR = "."

# Label value ignored by the cross-entropy loss (torch's default ignore_index).
IGNORE_INDEX = -100
# Placeholder id in `input_ids` marking where the image features are spliced in; never a real vocabulary id.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"

# Kept out of bitsandbytes quantization, in training (--bits 4|8) and loading (load_4bit / load_8bit) alike: the
# projector trains in full precision (upstream), the vision tower is never quantized, and the output head stays
# whole (transformers' own default) so that added tokens can resize it. transformers 5 matches these patterns from the
# start of a module's full name (or as its suffix), so upstream's bare "mm_projector" no longer protects
# `model.mm_projector.0`: the leading `.*` is needed.
QUANTIZATION_SKIP_MODULES = (r".*mm_projector", r".*vision_tower", "lm_head")
