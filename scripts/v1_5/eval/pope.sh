#!/bin/bash
# Upstream's command, with the model and extra flags settable from the environment (defaults are upstream's):
#   MODEL_PATH=./checkpoints/<run> MODEL_BASE=lmsys/vicuna-13b-v1.5 CKPT=<name> EVAL_ARGS="--device cpu --batch-size 8"
# The benchmark data is not shipped: put it under ./playground/data/eval as upstream's docs/Evaluation.md says.

MODEL_PATH=${MODEL_PATH:-liuhaotian/llava-v1.5-13b}
CKPT=${CKPT:-llava-v1.5-13b}

python -m llava.eval.model_vqa_loader \
    --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
    --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \
    --image-folder ./playground/data/eval/pope/val2014 \
    --answers-file ./playground/data/eval/pope/answers/$CKPT.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1 $EVAL_ARGS

python llava/eval/eval_pope.py \
    --annotation-dir ./playground/data/eval/pope/coco \
    --question-file ./playground/data/eval/pope/llava_pope_test.jsonl \
    --result-file ./playground/data/eval/pope/answers/$CKPT.jsonl
