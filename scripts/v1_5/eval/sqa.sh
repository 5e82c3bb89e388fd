#!/bin/bash
# Upstream's command, with the model and extra flags settable from the environment (defaults are upstream's):
#   MODEL_PATH=./checkpoints/<run> MODEL_BASE=lmsys/vicuna-13b-v1.5 CKPT=<name> EVAL_ARGS="--device cpu --batch-size 8"
# The benchmark data is not shipped: put it under ./playground/data/eval as upstream's docs/Evaluation.md says.

MODEL_PATH=${MODEL_PATH:-liuhaotian/llava-v1.5-13b}
CKPT=${CKPT:-llava-v1.5-13b}

python -m llava.eval.model_vqa_science \
    --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
    --question-file ./playground/data/eval/scienceqa/llava_test_CQM-A.json \
    --image-folder ./playground/data/eval/scienceqa/images/test \
    --answers-file ./playground/data/eval/scienceqa/answers/$CKPT.jsonl \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode vicuna_v1 $EVAL_ARGS

python llava/eval/eval_science_qa.py \
    --base-dir ./playground/data/eval/scienceqa \
    --result-file ./playground/data/eval/scienceqa/answers/$CKPT.jsonl \
    --output-file ./playground/data/eval/scienceqa/answers/${CKPT}_output.jsonl \
    --output-result ./playground/data/eval/scienceqa/answers/${CKPT}_result.json
