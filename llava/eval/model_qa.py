"""Answer a JSONL file of text questions with a language model (upstream's ``model_qa``, same flags):

    python -m llava.eval.model_qa --model-name ./checkpoints/vicuna-7b --question-file tables/question.jsonl \
        --answers-file answer.jsonl

Each question line (``question_id``, ``text``, ``category``) is asked in ``default_conversation`` and answered by
sampling (temperature 0.7, up to 1024 new tokens, as upstream; ``--temperature`` / ``--max-new-tokens`` /
``--device`` beyond it) until the template's stop string; one line per answer (``question_id``, ``text``,
``answer_id``, ``model_id``, ``metadata``). Upstream's prompt ends with the user's turn and it cut the answer at the
first separator, which for the v1 templates (separator ``" "``) was the first space; here the assistant's turn is
opened in the prompt and the answer ends at the template's own stop string.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from llava import conversation as conversation_lib
from llava.conversation import SeparatorStyle
from llava.eval.answers import AnswersFile, read_jsonl, short_uuid
from llava.inference import default_device, generation_options
from llava.mm_utils import KeywordsStoppingCriteria  # noqa: F401  (upstream defines its own copy here)

logger = logging.getLogger(__name__)

UPSTREAM_TEMPERATURE = 0.7
UPSTREAM_MAX_NEW_TOKENS = 1024


def stop_string(conv) -> str:
    """Where an answer in ``conv``'s template ends."""
    return conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep


@torch.inference_mode()
def eval_model(
    model_name, questions_file, answers_file, *, temperature=UPSTREAM_TEMPERATURE,
    max_new_tokens=UPSTREAM_MAX_NEW_TOKENS, device=None,
) -> int:  # fmt: skip
    """Answer every question of ``questions_file`` into ``answers_file``; returns how many were answered."""
    from llava.model.builder import load_pretrained_model

    model_name = os.path.expanduser(model_name)
    tokenizer, model, _, _ = load_pretrained_model(model_name, None, None, device=device or default_device())
    options = generation_options(temperature, max_new_tokens)
    questions = read_jsonl(questions_file)
    with AnswersFile(answers_file) as answers:
        for question in questions:
            conv = conversation_lib.default_conversation.copy()
            conv.append_message(conv.roles[0], question["text"])
            conv.append_message(conv.roles[1], None)
            input_ids = torch.as_tensor(tokenizer([conv.get_prompt()]).input_ids, device=model.device)
            stop = stop_string(conv)
            output = model.generate(
                input_ids, stopping_criteria=[KeywordsStoppingCriteria([stop], tokenizer, input_ids)], **options
            )
            length = input_ids.shape[1]  # a plain LM returns the prompt too, a LLaVA model only the answer
            returns_prompt = output.shape[1] >= length and torch.equal(output[:, :length], input_ids)
            new_tokens = output[:, length:] if returns_prompt else output
            text = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)[0].split(stop)[0].strip()
            answers.write(
                {"question_id": question["question_id"], "text": text, "answer_id": short_uuid(),
                 "model_id": model_name, "metadata": {}}
            )  # fmt: skip
    logger.info("%d answers written to %s", len(questions), answers_file)
    return len(questions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Answer a JSONL file of text questions with a language model.")
    parser.add_argument("--model-name", type=str, default="facebook/opt-350m")
    parser.add_argument("--question-file", type=str, default="tables/question.jsonl")
    parser.add_argument("--answers-file", type=str, default="answer.jsonl")
    parser.add_argument("--temperature", type=float, default=UPSTREAM_TEMPERATURE, help="0 for greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=UPSTREAM_MAX_NEW_TOKENS)
    parser.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return eval_model(
        args.model_name, args.question_file, args.answers_file, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, device=args.device,
    )  # fmt: skip


if __name__ == "__main__":
    main()
