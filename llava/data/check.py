"""Check LLaVA training data before spending GPU hours on it.

    python -m llava.data.check --data_path data.json --image_folder images/ \\
        --model_name_or_path lmsys/vicuna-7b-v1.5 --version v1 [--model_max_length 2048]

(also installed as `llava-check-data`). Reports by sample id every sample that training would reject or learn nothing
from: bad structure, unknown or out-of-order roles, a missing or unreadable image, a `<image>` count that does not
match the sample's images, labels that end up fully masked, and replies cut off entirely by `--model_max_length`.
Prints a summary and exits 1 when anything is wrong, 0 otherwise (`--json` for machine-readable output).

Speed: structure and image existence are checked for every sample (image files in threads). Images are decoded
(`PIL.Image.verify`) and conversations tokenised for every sample by default; `--tokenize sample:N` tokenises a
random N of them and `--tokenize none` skips it, `--no-decode-images` skips decoding, and `--num_workers` spreads the
tokenisation over processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.validation import (
    KIND_FIXES,
    TRUNCATED,
    Problem,
    Report,
    sample_id,
    validate_for_training,
)

logger = logging.getLogger(__name__)

# LLaVA-1.5's CLIP ViT-L/14-336: 24 x 24 patches. Used when the model directory does not name its vision tower.
DEFAULT_IMAGE_TOKENS = 576
TOKENIZE_CHUNK = 256


@dataclass
class Statistics:
    samples: int = 0
    images: int = 0
    tokenized: int = 0
    tokens: list[int] = field(default_factory=list)
    supervised: int = 0

    def as_dict(self) -> dict:
        tokens = self.tokens
        return {
            "samples": self.samples,
            "images": self.images,
            "tokenized_samples": self.tokenized,
            "tokens_per_sample": {
                "min": min(tokens) if tokens else 0,
                "mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                "max": max(tokens) if tokens else 0,
            },
            "supervised_token_share": round(self.supervised / max(sum(tokens), 1), 4),
        }


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation (in worker processes when asked)

_worker: dict = {}


def _init_worker(model_name_or_path: str, version: str, model_max_length: int, image_tokens: int) -> None:
    from transformers import AutoTokenizer

    from llava.conversation import get_conv_template, template_name

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, model_max_length=model_max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    _worker.update(
        tokenizer=tokenizer,
        conv=get_conv_template(template_name(version)),
        max_length=model_max_length,
        image_tokens=image_tokens,
    )


def _label_counts(chunk: Sequence[tuple[int, dict]]) -> list[tuple[int, int, int, int]]:
    """(index, tokens in the model's sequence, supervised tokens, supervised tokens within model_max_length)."""
    from types import SimpleNamespace

    from llava.data.preprocess import preprocess, preprocess_multimodal

    tokenizer, conv = _worker["tokenizer"], _worker["conv"]
    max_length, image_tokens = _worker["max_length"], _worker["image_tokens"]
    multimodal = SimpleNamespace(is_multimodal=True)
    results = []
    for index, record in chunk:
        has_image = "image" in record
        sources = [record["conversations"]]
        if has_image:
            sources = preprocess_multimodal(sources, multimodal, conv=conv)
        data = preprocess(sources, tokenizer, has_image=has_image, conv=conv)
        ids, labels = data["input_ids"][0].tolist(), data["labels"][0].tolist()
        # Where each token lands once the image's features replace its placeholder (as the model splices them);
        # the collator cuts input_ids at model_max_length and the model cuts the spliced sequence there too.
        shift, kept, supervised = 0, 0, 0
        for position, (token, label) in enumerate(zip(ids, labels)):
            if token == IMAGE_TOKEN_INDEX:
                shift += image_tokens - 1
            elif label != IGNORE_INDEX:
                supervised += 1
                kept += position < max_length and position + shift < max_length
        results.append((index, len(ids) + shift, supervised, kept))
    return results


def _tokenize_all(items, init_args, num_workers: int, progress) -> list[tuple[int, int, int, int]]:
    chunks = [items[start : start + TOKENIZE_CHUNK] for start in range(0, len(items), TOKENIZE_CHUNK)]
    results = []
    if num_workers <= 1:
        _init_worker(*init_args)
        for chunk in progress(chunks, unit_scale=TOKENIZE_CHUNK):
            results.extend(_label_counts(chunk))
        return results
    with ProcessPoolExecutor(num_workers, initializer=_init_worker, initargs=init_args) as pool:
        for chunk_result in progress(pool.map(_label_counts, chunks), total=len(chunks), unit_scale=TOKENIZE_CHUNK):
            results.extend(chunk_result)
    return results


def image_tokens_per_image(model_name_or_path: str | None, vision_tower: str | None) -> tuple[int, str]:
    """Patch count of the vision tower (from --vision_tower or the model's mm_vision_tower), and where it came from."""
    from transformers import AutoConfig, CLIPVisionConfig

    tower = vision_tower
    if tower is None and model_name_or_path is not None:
        try:
            tower = getattr(AutoConfig.from_pretrained(model_name_or_path), "mm_vision_tower", None)
        except (OSError, ValueError):
            tower = None
    if tower is not None:
        try:
            config = CLIPVisionConfig.from_pretrained(tower)
            return (config.image_size // config.patch_size) ** 2, f"vision tower {tower}"
        except (OSError, ValueError):
            pass
    return DEFAULT_IMAGE_TOKENS, "assumed (CLIP ViT-L/14-336); pass --vision_tower to count exactly"


# ----------------------------------------------------------------------------------------------------------------
# The check


def run_check(args: argparse.Namespace) -> tuple[Report, Statistics, dict]:
    from llava.conversation import get_conv_template, template_name
    from llava.data.records import load_records

    progress = _progress_factory(args.json)
    records = load_records(args.data_path)
    conv = get_conv_template(template_name(args.version))
    is_multimodal = args.image_folder is not None or any(isinstance(r, dict) and "image" in r for r in records)
    stats = Statistics(samples=len(records), images=sum(isinstance(r, dict) and "image" in r for r in records))
    info = {"template": template_name(args.version)}
    report = validate_for_training(
        records, data_path=args.data_path, image_folder=args.image_folder, conv=conv, is_multimodal=is_multimodal,
        decode=args.decode_images, progress=lambda it: progress(it, total=stats.images, desc="images"),
    )  # fmt: skip

    if args.tokenize != "none" and args.model_name_or_path:
        bad = {problem.index for problem in report.errors}
        candidates = [(index, record) for index, record in enumerate(records) if index not in bad]
        if args.tokenize.startswith("sample:"):
            count = int(args.tokenize.split(":", 1)[1])
            candidates = random.Random(0).sample(candidates, min(count, len(candidates)))
        image_tokens, source = image_tokens_per_image(args.model_name_or_path, args.vision_tower)
        info.update(image_tokens=image_tokens, image_tokens_source=source)
        init_args = (args.model_name_or_path, args.version, args.model_max_length, image_tokens)
        tokenize_progress = lambda it, **kw: progress(it, desc="tokenize", **kw)  # noqa: E731
        for index, tokens, supervised, kept in _tokenize_all(
            candidates, init_args, args.num_workers, tokenize_progress
        ):
            stats.tokenized += 1
            stats.tokens.append(tokens)
            stats.supervised += kept
            ident = sample_id(records[index], index)
            # (A sample with nothing to supervise is caught by the cheap checks already: FULLY_MASKED.)
            if supervised and kept == 0:
                report.problems.append(
                    Problem(index, ident, TRUNCATED, f"all {supervised} supervised tokens lie beyond "
                            f"--model_max_length {args.model_max_length} ({tokens} tokens with the image)")
                )  # fmt: skip
    report.problems.sort(key=lambda problem: (problem.index, problem.kind))
    return report, stats, info


def _progress_factory(quiet: bool):
    def progress(iterable, **kwargs):
        if quiet:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, file=sys.stderr, leave=False, **kwargs)

    return progress


def format_report(report: Report, stats: Statistics, info: dict) -> str:
    summary = stats.as_dict()
    lines = [f"Checked {report.data_path} (template {info['template']})"]
    lines += [problem.format() + ("  [warning]" if not problem.is_error else "") for problem in report.problems]
    per_sample = summary["tokens_per_sample"]
    lines += [
        "",
        f"samples: {summary['samples']}   images: {summary['images']}   tokenized: {summary['tokenized_samples']}",
        f"tokens per sample (images counted as {info.get('image_tokens', '-')} tokens): "
        f"min {per_sample['min']}, mean {per_sample['mean']}, max {per_sample['max']}",
        f"supervised share of tokens: {summary['supervised_token_share']:.1%}",
    ]
    counts = report.counts()
    if counts:
        lines.append("problems: " + ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())))
        lines += [f"  {kind}: {KIND_FIXES[kind]}" for kind in sorted(counts)]
    errors = len({problem.index for problem in report.errors})
    lines.append(f"{errors} sample(s) with errors." if errors else "No errors.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-check-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="LLaVA JSON list or JSONL")
    parser.add_argument("--image_folder", default=None, help="folder the 'image' paths are relative to")
    parser.add_argument("--model_name_or_path", default=None, help="model whose tokenizer training uses")
    parser.add_argument("--version", default="v1", help="conversation template, as --version in training")
    parser.add_argument("--model_max_length", type=int, default=2048)
    parser.add_argument("--vision_tower", default=None, help="CLIP directory, to count image tokens exactly")
    parser.add_argument("--tokenize", default="all", help="'all', 'sample:N' or 'none'")
    parser.add_argument("--num_workers", type=int, default=1, help="processes for tokenisation")
    parser.add_argument("--no-decode-images", dest="decode_images", action="store_false",
                        help="only check that image files exist")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tokenize not in ("all", "none") and not args.tokenize.startswith("sample:"):
        build_parser().error("--tokenize must be 'all', 'none' or 'sample:N'")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report, stats, info = run_check(args)
    if args.json:
        print(json.dumps({
            "data_path": report.data_path, **info, "summary": stats.as_dict(), "counts": report.counts(),
            "ok": not report.errors,
            "problems": [
                {"index": p.index, "id": p.sample_id, "kind": p.kind, "message": p.message, "error": p.is_error}
                for p in report.problems
            ],
        }, indent=1))  # fmt: skip
    else:
        print(format_report(report, stats, info))
    return 1 if report.errors else 0


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
