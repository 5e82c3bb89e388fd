"""LLaVA training entry point: `python llava/train/train.py ...` (or `deepspeed llava/train/train_mem.py ...`).

`train()` parses and validates the flags; `run()` is the job, in steps: set up distributed -> seed -> check the data
-> model -> k-bit preparation -> LoRA -> tokenizer and template -> vision modules -> data -> trainer -> train
(resuming from the last `checkpoint-*`) -> save. Upstream's public names are importable from here, as they were from upstream's train.py.
"""

from __future__ import annotations

import logging
import pathlib
import random
from collections.abc import Sequence
from typing import Optional

import tokenizers
import transformers
from packaging import version

from llava.conversation import get_conv_template, template_name
from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset, make_supervised_data_module
from llava.data.packing import PackingConfig, packing_attention_cost
from llava.data.preprocess import (
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
)
from llava.data.store import RecordStore, load_store, take
from llava.data.validation import validate_for_training
from llava.distributed.state import exit_process, gather_objects, get_rank, get_world_size, is_main_process
from llava.distributed.zero3 import (
    get_mm_adapter_state_maybe_zero_3,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)
from llava.model.files import CHECKPOINT_GLOB
from llava.model.llava_arch import image_feature_length
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments, parse_args
from llava.train.eval_generation import add_eval_generation
from llava.train.liger import use_liger_kernels
from llava.train.llava_trainer import LLaVATrainer
from llava.train.lora import (
    add_lora,
    cast_kbit_modules,
    enable_input_grads,
    find_all_linear_names,
    prepare_for_kbit_training,
)
from llava.train.model_setup import (
    align_trainable_dtypes,
    load_model,
    load_tokenizer,
    setup_template,
    setup_vision_modules,
    smart_tokenizer_and_embedding_resize,
)
from llava.train.saving import safe_save_model_for_hf_trainer

__all__ = [
    "DataArguments",
    "DataCollatorForSupervisedDataset",
    "LazySupervisedDataset",
    "ModelArguments",
    "TrainingArguments",
    "find_all_linear_names",
    "get_mm_adapter_state_maybe_zero_3",
    "get_peft_state_maybe_zero_3",
    "get_peft_state_non_lora_maybe_zero_3",
    "make_supervised_data_module",
    "maybe_zero_3",
    "preprocess",
    "preprocess_llama_2",
    "preprocess_mpt",
    "preprocess_multimodal",
    "preprocess_plain",
    "preprocess_v1",
    "rank0_print",
    "safe_save_model_for_hf_trainer",
    "smart_tokenizer_and_embedding_resize",
    "train",
]

logger = logging.getLogger(__name__)

# Upstream's flag for its tokenizer arithmetic (tokenizers >= 0.14 changed the legacy Llama offsets); the masking
# here labels by character offsets instead and reads nothing from it.
IS_TOKENIZER_GREATER_THAN_0_14 = version.parse(tokenizers.__version__) >= version.parse("0.14")

# Upstream's module global: the process's local rank once `run()` has read the training arguments (None before).
# Nothing here reads it; ask `llava.distributed.state` for the process's rank.
local_rank: Optional[int] = None


def rank0_print(*args) -> None:
    """Print on the main process, also in a single process (upstream's printed nothing until `train()` had set
    `local_rank`, so a fork's calls before training, or in its own scripts, were silent)."""
    if is_main_process():
        print(*args)


def train(attn_implementation: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> LLaVATrainer:
    """Run a training job configured by the command line (`sys.argv`, or `argv` when given).

    Returns the trainer (upstream returns None), whose `model` and `state` describe the finished run.
    """
    model_args, data_args, training_args = parse_args(argv)
    return run(model_args, data_args, training_args, attn_implementation=attn_implementation)


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    attn_implementation: Optional[str] = None,
) -> LLaVATrainer:
    """The training job itself, as a function of the three parsed argument dataclasses."""
    global local_rank
    training_args.setup_distributed()
    local_rank = training_args.local_rank
    _configure_logging()
    # Before the model and LoRA exist, so that the same seed gives the same run (docs/upstream_differences.md #8).
    _seed(training_args)
    records, eval_records = _split_for_evaluation(
        _check_data(model_args, data_args, data_args.data_path), model_args, data_args, training_args
    )

    model = load_model(model_args, training_args, attn_implementation)
    model = _prepare_for_training(model, model_args, training_args)
    tokenizer = load_tokenizer(model_args, training_args)
    template = setup_template(model_args, tokenizer, model)
    vision = None
    if model_args.vision_tower is not None:
        vision = setup_vision_modules(model, tokenizer, model_args, data_args, training_args)
    if training_args.bits in (4, 8):
        cast_kbit_modules(model, training_args)
    align_trainable_dtypes(model, training_args)
    if training_args.use_liger_kernel:  # only still on where Liger runs (llava.train.arguments)
        use_liger_kernels(model)

    packing = None
    if training_args.packing:
        attention = getattr(model.config, "_attn_implementation", None)
        packing = PackingConfig(
            image_feature_length=image_feature_length(model),
            attention_cost=packing_attention_cost(model.config.hidden_size, attention),
        )
    data_module = make_supervised_data_module(
        tokenizer=tokenizer, data_args=data_args, eval_records=eval_records, vision=vision, conv=template,
        records=records, checked=True, packing=packing,
    )  # fmt: skip
    trainer = LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
    add_eval_generation(trainer, tokenizer, training_args)
    _fit(trainer, training_args)
    _save(trainer)
    return trainer


def _configure_logging() -> None:
    """INFO from this package on the main process only; other ranks report warnings and errors."""
    package_logger = logging.getLogger("llava")
    package_logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    if not logging.getLogger().handlers and not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)


def _seed(training_args: TrainingArguments) -> None:
    if training_args.full_determinism:
        transformers.enable_full_determinism(training_args.seed)
    else:
        transformers.set_seed(training_args.seed)


def _check_data(model_args: ModelArguments, data_args: DataArguments, data_path: str) -> RecordStore:
    """Read the data into the node's shared record store (once per node) and check every sample cheaply (structure,
    roles, image placeholders, image files exist) before anything heavy loads, each rank its share, so that the job
    checks each sample once; a problem stops the run on every rank with the data checker's message (upstream #677,
    #732), or with `--skip_invalid_samples` drops the sample (logging it) on every rank alike."""
    records = load_store(data_path)
    report = validate_for_training(
        records,
        data_path=data_path,
        image_folder=data_args.image_folder,
        conv=get_conv_template(template_name(model_args.version)),
        is_multimodal=model_args.vision_tower is not None,
        rank=get_rank(),
        world=get_world_size(),
        gather=gather_objects,
    )
    if data_args.skip_invalid_samples:
        return report.drop_invalid(records, logger)
    report.enforce(logger)
    return records


def _split_for_evaluation(
    records: RecordStore, model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> tuple[RecordStore, Optional[RecordStore]]:
    """(training records, evaluation records or None): `--eval_data_path` checked like the training data, or a
    `--eval_split_ratio` share of the training data held out, chosen by `--seed` (both keep the file's order; views
    of the same store)."""
    if data_args.eval_data_path is not None:
        return records, _check_data(model_args, data_args, data_args.eval_data_path)
    if data_args.eval_split_ratio <= 0:
        return records, None
    held_out = max(1, round(len(records) * data_args.eval_split_ratio))
    if held_out >= len(records):
        raise ValueError(
            f"--eval_split_ratio {data_args.eval_split_ratio} of the {len(records)} samples in {data_args.data_path} "
            "leaves nothing to train on; lower it or pass --eval_data_path"
        )
    chosen = set(random.Random(training_args.seed).sample(range(len(records)), held_out))
    logger.info("Holding out %d of %d samples of %s for evaluation", held_out, len(records), data_args.data_path)
    return (
        take(records, [index for index in range(len(records)) if index not in chosen]),
        take(records, sorted(chosen)),
    )


def _prepare_for_training(model, model_args: ModelArguments, training_args: TrainingArguments):
    """k-bit preparation, input gradients for checkpointing, then LoRA (the order upstream uses).

    With `--lora_vision_tower` the vision modules are built first, so that LoRA finds the tower's layers;
    `setup_vision_modules` finds them built (as from a LLaVA checkpoint) and makes the projector trainable again."""
    if training_args.bits in (4, 8):
        model = prepare_for_kbit_training(model, training_args)
    if training_args.gradient_checkpointing:
        enable_input_grads(model)
    if training_args.lora_enable and training_args.lora_vision_tower:
        model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    if training_args.lora_enable:
        model = add_lora(model, training_args)
    return model


def _fit(trainer: LLaVATrainer, training_args: TrainingArguments) -> None:
    """Train, resuming from the last checkpoint when `output_dir` has one (as upstream)."""
    resume = any(pathlib.Path(training_args.output_dir).glob(CHECKPOINT_GLOB))
    if resume:
        logger.info("Resuming from the last checkpoint in %s", training_args.output_dir)
    trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_state()
    stats = trainer.label_statistics()
    logger.info(
        "Trained on %d supervised tokens (%.1f%% of all tokens); %d samples were fully masked",
        stats["supervised_tokens"],
        100 * stats["supervised_token_share"],
        stats["masked_samples"],
    )


def _save(trainer: LLaVATrainer) -> None:
    """The final save into `output_dir` (every rank takes part, only the main process writes)."""
    trainer.model.config.use_cache = True
    trainer.save_model(trainer.args.output_dir)


if __name__ == "__main__":
    train()
    exit_process()
