#!/bin/bash
# Upstream's command, with the model and extra flags settable from the environment (defaults are upstream's):
#   MODEL_PATH=./checkpoints/<run> MODEL_BASE=lmsys/vicuna-13b-v1.5 CKPT=<name> EVAL_ARGS="--device cpu --batch-size 8"
# The benchmark data is not shipped: put it under ./playground/data/eval as upstream's docs/Evaluation.md says.

MODEL_PATH=${MODEL_PATH:-liuhaotian/llava-v1.5-13b}
CKPT=${CKPT:-llava-v1.5-13b}

# The review asks GPT-4 (OPENAI_API_KEY); REVIEW_ARGS="--api-base http://localhost:8000/v1 --model <name>" asks any
# OpenAI-compatible server instead. The review rules are upstream's llava/eval/table/rule.json, which comes with
# upstream's repository, not with this package: copy it there, or point RULE_FILE at it.
RULE_FILE=${RULE_FILE:-llava/eval/table/rule.json}

python -m llava.eval.model_vqa \
    --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
    --question-file ./playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
    --image-folder ./playground/data/eval/llava-bench-in-the-wild/images \
    --answers-file ./playground/data/eval/llava-bench-in-the-wild/answers/$CKPT.jsonl \
    --temperature 0 \
    --conv-mode vicuna_v1 $EVAL_ARGS

mkdir -p playground/data/eval/llava-bench-in-the-wild/reviews

python llava/eval/eval_gpt_review_bench.py \
    --question playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
    --context playground/data/eval/llava-bench-in-the-wild/context.jsonl \
    --rule "$RULE_FILE" \
    --answer-list \
        playground/data/eval/llava-bench-in-the-wild/answers_gpt4.jsonl \
        playground/data/eval/llava-bench-in-the-wild/answers/$CKPT.jsonl \
    --output \
        playground/data/eval/llava-bench-in-the-wild/reviews/$CKPT.jsonl $REVIEW_ARGS

python llava/eval/summarize_gpt_review.py -f playground/data/eval/llava-bench-in-the-wild/reviews/$CKPT.jsonl
