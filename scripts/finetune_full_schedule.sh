#!/bin/bash
# Full fine-tuning on LLaVA-Instruct-158K for 3 epochs with upstream LLaVA's flags (the original LLaVA recipe, NOT
# LLaVA-1.5's). Set PROMPT_VERSION and MODEL_VERSION, as upstream asks:
#
#   Vicuna:   PROMPT_VERSION=v1             MODEL_VERSION="vicuna-v1-3-7b"
#   LLaMA-2:  PROMPT_VERSION="llava_llama_2" MODEL_VERSION="llama-2-7b-chat"
#
# Every path can be overridden from the environment; the defaults are upstream's. LAUNCHER_ARGS goes to the
# deepspeed launcher (e.g. "--num_gpus 2 --master_port 29600"). Runs on a CPU-only machine too.

MODEL_PATH=${MODEL_PATH:-./checkpoints/$MODEL_VERSION}
DATA_PATH=${DATA_PATH:-./playground/data/llava_instruct_158k.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-/path/to/coco/train2017}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14}
PRETRAIN_MM_MLP_ADAPTER=${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/llava-$MODEL_VERSION-pretrain/mm_projector.bin}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-$MODEL_VERSION-finetune}
DEEPSPEED_CONFIG=${DEEPSPEED_CONFIG:-./scripts/zero2.json}

deepspeed $LAUNCHER_ARGS llava/train/train_mem.py \
    --deepspeed "$DEEPSPEED_CONFIG" \
    --model_name_or_path "$MODEL_PATH" \
    --version $PROMPT_VERSION \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER" \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 3 \
    --per_device_train_batch_size 16 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to wandb
