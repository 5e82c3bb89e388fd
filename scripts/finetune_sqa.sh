#!/bin/bash
# Fine-tuning on ScienceQA with upstream LLaVA's flags (the original LLaVA recipe, NOT LLaVA-1.5's). The data comes
# from scripts/convert_sqa_to_llava.py convert_to_llava --base-dir <scienceqa> --split train. Set PROMPT_VERSION
# (e.g. v1), as upstream asks.
#
# Every path can be overridden from the environment; the defaults are upstream's. LAUNCHER_ARGS goes to the
# deepspeed launcher (e.g. "--num_gpus 2 --master_port 29600"). Runs on a CPU-only machine too.

MODEL_PATH=${MODEL_PATH:-lmsys/vicuna-13b-v1.3}
DATA_PATH=${DATA_PATH:-/Data/ScienceQA/data/scienceqa/llava_train_QCM-LEA.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-/Data/ScienceQA/data/scienceqa/images/train}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14}
PRETRAIN_MM_MLP_ADAPTER=${PRETRAIN_MM_MLP_ADAPTER:-./checkpoints/huggingface/liuhaotian/llava-pretrain-vicuna-13b-v1.3/mm_projector.bin}
OUTPUT_DIR=${OUTPUT_DIR:-./checkpoints/llava-vicuna-13b-v1.3-pretrain_lcs558k_plain-ScienceQA_QCM_LEA-12e}
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
    --num_train_epochs 12 \
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
