#!/bin/bash
# Projector pretraining through llava/train/train_xformers.py (upstream's recipe for GPUs without flash-attention:
# bf16 and tf32 off; the attention is PyTorch's memory-efficient SDPA here, see llava/train/train_xformers.py).
# Set MODEL_VERSION as upstream asks (vicuna-v1-3-7b or llama-2-7b-chat). The prompt version must stay "plain".
#
# Every path can be overridden from the environment; the defaults are upstream's. LAUNCHER_ARGS goes to the
# deepspeed launcher (e.g. "--num_gpus 2 --master_port 29600"). Runs on a CPU-only machine too.

PROMPT_VERSION=plain

MODEL_PATH=${MODEL_PATH:-./checkpoints/$MODEL_VERSION}
DATA_PATH=${DATA_PATH:-/path/to/pretrain_data.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-/path/to/images}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-$MODEL_VERSION-pretrain}
DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG:-./scripts/zero2.json}

deepspeed $LAUNCHER_ARGS llava/train/train_xformers.py \
    --deepspeed "$DEEPSPEED_CONFIG" \
    --model_name_or_path "$MODEL_PATH" \
    --version $PROMPT_VERSION \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 False \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 4 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 24000 \
    --save_total_limit 1 \
    --learning_rate 2e-3 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 False \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb
