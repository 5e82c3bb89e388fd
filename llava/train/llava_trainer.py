"""`LLaVATrainer`: transformers' `Trainer` with LLaVA's sampler, optimizer groups, saving and resuming.

What it adds to `Trainer`, as upstream does (and where upstream is buggy, fixed):
- `--group_by_modality_length`: batches hold only image or only text samples, grouped by length
  (`LengthGroupedSampler`). The order is drawn from a generator seeded with the seed and the epoch, so a resumed
  run sees the same order as an uninterrupted one (upstream used the global RNG, even for the inner shuffles).
- `--mm_projector_lr`: the projector gets its own learning rate (same weight-decay split as the rest); so do the
  vision tower (`--mm_vision_tower_lr`) and LoRA+'s B matrices (`--loraplus_lr_ratio`), see `llava.train.param_groups`.
- Saving: one `save_model` serves every `checkpoint-N/` and the final save. A LoRA run writes the adapter, the
  trainable non-LoRA tensors (`non_lora_trainables.bin`) and `config.json` into every checkpoint too (upstream
  #1010, #1245, #1566); projector pretraining writes `mm_projector.bin`; a full fine-tune writes a normal model.
- Resuming restores those files into the model, the projector included (upstream #1200).
- The share of supervised tokens and the number of fully masked samples are counted from the batches' labels and
  logged (upstream #661, #1166, #1706).
- A non-finite loss or gradient norm stops the run at that step (:class:`NonFiniteTrainingError`), before that
  step's checkpoint is written, and no save ever writes NaN or inf weights. Transformers only hides such a loss
  (`logging_nan_inf_filter`) and keeps training: an fp16 model logged `loss 0`, `grad_norm nan`, exited 0 and saved
  NaN adapter weights (docs/upstream_differences.md #13).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn
from torch.utils.data import Sampler
from transformers import ProgressCallback, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import get_parameter_names  # noqa: F401  (re-exported for upstream users)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints

from llava.constants import IGNORE_INDEX
from llava.data.packing import PACKING_STATS_KEY
from llava.distributed.zero3 import get_mm_adapter_state_maybe_zero_3, maybe_zero_3  # noqa: F401  (upstream's names here)
from llava.model import compat
from llava.model.files import TRAINING_ARGS_FILE
from llava.train import param_groups, saving

logger = logging.getLogger(__name__)

# Checkpoints are written under output_dir/.staging/ and renamed into place when complete (crash safety).
STAGING_DIR = ".staging"

PROJECTOR_KEY = param_groups.PROJECTOR_KEY
# What projector pretraining saves to mm_projector.bin. (Upstream adds the embeddings when --mm_use_im_start_end,
# but it refuses to pretrain with that flag, so they never get there.)
PROJECTOR_KEYS = (PROJECTOR_KEY, "vision_resampler")


# ----------------------------------------------------------------------------------------------------------------
# Length-grouped sampling (upstream's functions, same names and results for the same random draws)


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Split `indices` into `num_chunks` chunks of equal count whose summed lengths are as even as greedy gets.

    Each index goes to the chunk with the smallest total length so far (the first such chunk on ties); a full
    chunk takes no more. When the count does not divide evenly, chunks are taken round-robin instead.
    """
    if len(indices) % num_chunks != 0:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals: list[float] = [0] * num_chunks
    for index in indices:
        target = totals.index(min(totals))
        chunks[target].append(index)
        totals[target] += lengths[index]
        if len(chunks[target]) == per_chunk:
            totals[target] = float("inf")
    return chunks


def get_length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world_size: int,
    generator: Optional[torch.Generator] = None,
    merge: bool = True,
) -> list[int]:
    """A random order in which each megabatch (`world_size * batch_size` samples) is sorted longest first and
    split into `world_size` chunks of balanced total length. (`merge` is unused, kept for upstream's signature.)"""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch_size = world_size * batch_size
    result: list[int] = []
    for start in range(0, len(order), megabatch_size):
        megabatch = sorted(order[start : start + megabatch_size], key=lambda i: lengths[i], reverse=True)
        for chunk in split_to_even_chunks(megabatch, lengths, world_size):
            result.extend(chunk)
    return result


def get_modality_length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world_size: int,
    generator: Optional[torch.Generator] = None,
) -> list[int]:
    """Like `get_length_grouped_indices`, but no megabatch mixes image samples (length > 0) with text-only ones
    (length < 0), except one final megabatch made of both modalities' leftovers.

    Upstream drew the two inner shuffles from the global RNG (`generator=None`); here every draw comes from
    `generator`, so the order depends on the seed alone and a resumed run sees the same batches.
    """
    if any(length == 0 for length in lengths):
        zero = [i for i, length in enumerate(lengths) if length == 0]
        raise ValueError(
            f"modality lengths must be non-zero (positive: with image, negative: text only); samples {zero[:10]} "
            "have length 0."
        )
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)
    mm_indices = [i for i, length in enumerate(lengths) if length > 0]
    lang_indices = [i for i, length in enumerate(lengths) if length < 0]
    mm_lengths = [lengths[i] for i in mm_indices]
    lang_lengths = [-lengths[i] for i in lang_indices]

    megabatch_size = world_size * batch_size
    mm_order = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator)]
    lang_order = [lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator)]
    mm_megabatches = [mm_order[i : i + megabatch_size] for i in range(0, len(mm_order), megabatch_size)]
    lang_megabatches = [lang_order[i : i + megabatch_size] for i in range(0, len(lang_order), megabatch_size)]

    # The last (possibly short) megabatch of each modality goes together at the very end.
    leftovers = mm_megabatches[-1] + lang_megabatches[-1]
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    shuffled = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    if leftovers:
        shuffled.append(sorted(leftovers))
    return [i for megabatch in shuffled for i in megabatch]


class LengthGroupedSampler(Sampler):
    """Samples indices so that each batch holds samples of similar length (and, with `group_by_modality`, of
    one modality), keeping some randomness.

    Without an explicit `generator`, each epoch's order is drawn from a generator seeded with `seed + epoch`
    (`set_epoch` is called by the training loop), so the order is reproducible and a resumed run can skip exactly
    the batches it has already trained on.
    """

    def __init__(
        self,
        batch_size: int,
        world_size: int,
        lengths: Optional[list[int]] = None,
        generator: Optional[torch.Generator] = None,
        group_by_modality: bool = False,
        seed: int = 0,
    ):
        if lengths is None:
            raise ValueError("LengthGroupedSampler needs the samples' lengths.")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = lengths
        self.generator = generator
        self.group_by_modality = group_by_modality
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = self.generator
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
        grouping = get_modality_length_grouped_indices if self.group_by_modality else get_length_grouped_indices
        return iter(grouping(self.lengths, self.batch_size, self.world_size, generator=generator))


# ----------------------------------------------------------------------------------------------------------------
# Trainer


class ConsoleLogCallback(ProgressCallback):
    """transformers' progress bar, with one short line per `every` logged training steps instead of a dict per log.

    Only the console changes: every log still reaches `log_history` and the reporters.
    """

    FIELDS = (("loss", "loss {:.4f}"), ("grad_norm", "grad_norm {:.3g}"), ("learning_rate", "lr {:.3g}"))

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = max(1, every)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs and state.global_step % self.every and state.global_step != state.max_steps:
            return
        shown = [template.format(float(logs[key])) for key, template in self.FIELDS if key in logs]
        shown += [f"{key} {value:.4g}" for key, value in logs.items() if key.startswith("eval_")]
        if not shown:
            shown = [f"{key} {value}" for key, value in logs.items() if isinstance(value, (int, float))][:4]
        self.training_bar.write(f"step {state.global_step}/{state.max_steps}  " + "  ".join(shown))


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradient norm became NaN or inf: training stopped before saving anything of that step."""


class StopOnNonFinite(TrainerCallback):
    """Stops the run with :class:`NonFiniteTrainingError` at the end of an optimizer step whose loss or gradient norm
    is not finite. `on_step_end` comes right after the optimizer step and before that step is logged, evaluated or
    saved, so nothing of it reaches a file."""

    def __init__(self, trainer: LLaVATrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.stop_if_not_finite()


class LoadBestRun(TrainerCallback):
    """`--load_best_model_at_end` for LoRA and projector runs without DeepSpeed: transformers reloads only the adapter
    of a PEFT model (and nothing of a projector run, whose checkpoints hold no full-model weights), which would leave
    the last step's projector next to the best step's LoRA weights. At `on_train_end`, which comes after
    transformers' own reload and after `--save_total_limit` has pruned every checkpoint but the best, the best
    checkpoint's files are read back whole. Under DeepSpeed the engine's checkpoint holds every parameter and
    transformers' reload is complete; a full fine-tune's reload is complete too."""

    def __init__(self, trainer: LLaVATrainer) -> None:
        self.trainer = trainer

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if not args.load_best_model_at_end or state.best_model_checkpoint is None or trainer.is_deepspeed_enabled:
            return
        if saving.output_kind(trainer.model, args) == saving.OutputKind.FULL:
            return
        logger.info("Loading the best run from %s (%s)", state.best_model_checkpoint, state.best_metric)
        trainer.load_outputs(state.best_model_checkpoint)


class LLaVATrainer(Trainer):
    """`Trainer` for LLaVA: modality-grouped sampling, projector learning rate, LLaVA's output files.

    What it overrides of transformers' private methods: upstream's three (`_get_train_sampler`, `_save_checkpoint`,
    `_save`) and two more where no public hook serves (`_get_output_dir`, `_load_from_checkpoint`); each says why,
    and tests/test_trainer_hooks.py pins their signatures and the behaviour relied on against the installed
    transformers. The rest goes through public hooks: `training_step`, `compute_loss`, `create_optimizer`, `log`,
    `save_model`, and the callbacks :class:`StopOnNonFinite` and :class:`LoadBestRun`.
    """

    def __init__(self, *args, **kwargs):
        training_args = kwargs["args"] if "args" in kwargs else (args[1] if len(args) > 1 else None)
        if hasattr(training_args, "setup_distributed"):
            # Trainer builds its Accelerator from finished arguments: ours finish on the process state first.
            training_args.setup_distributed()
        super().__init__(*args, **kwargs)
        self._label_counts = _LabelCounts()
        every = getattr(self.args, "console_log_steps", 0)
        if every and not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(ConsoleLogCallback(every))
        self.add_callback(StopOnNonFinite(self))
        self.add_callback(LoadBestRun(self))
        # Over the micro-batches of the current optimizer step: are the losses finite, and the gradient norm of the
        # step's accumulated gradients (without DeepSpeed, which keeps its own).
        self._step_losses_finite: Optional[torch.Tensor] = None
        self._step_grad_norm: Optional[torch.Tensor] = None
        # Where transformers' `_save_checkpoint` writes while ours stages a checkpoint (see `_get_output_dir`).
        self._checkpoint_root: Optional[str] = None

    # -- stopping on NaN / inf --------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()  # stays on the device: checked once per optimizer step
        self._step_losses_finite = finite if self._step_losses_finite is None else self._step_losses_finite & finite
        if self.accelerator.sync_gradients and not self.is_deepspeed_enabled:
            # The last micro-batch of the step: the gradients are complete (and reduced), not yet clipped; this is
            # the norm transformers clips with and logs.
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            self._step_grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        return loss

    def stop_if_not_finite(self) -> None:
        """Raise :class:`NonFiniteTrainingError` on every rank when the step just taken had a non-finite loss or
        gradient norm on any rank (called by :class:`StopOnNonFinite` after each optimizer step)."""
        losses_finite, self._step_losses_finite = self._step_losses_finite, None
        grad_norm, self._step_grad_norm = self._step_grad_norm, None
        if self.is_deepspeed_enabled:
            grad_norm = self.model_wrapped.get_global_grad_norm()  # the engine computed it while stepping
        loss_bad = 0.0 if losses_finite is None else float(not bool(losses_finite))
        # With fp16 loss scaling an overflowing gradient is expected now and then: the scaler skips that step.
        overflow_skipped = self.args.fp16 and self.accelerator.optimizer_step_was_skipped
        norm_bad = 0.0
        if grad_norm is not None and not overflow_skipped:
            norm_bad = float(not math.isfinite(float(grad_norm)))
        flags = torch.tensor([loss_bad, norm_bad], device=self.args.device)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            # Every rank must stop at the same step (the loss differs per rank; a lone rank raising would hang the others).
            flags = self.accelerator.reduce(flags, reduction="sum")
        loss_bad, norm_bad = (bool(flag) for flag in flags.tolist())
        if loss_bad or norm_bad:
            shown = None if grad_norm is None else float(grad_norm)
            raise NonFiniteTrainingError(self._nonfinite_message(loss_bad, norm_bad, shown))

    def _nonfinite_message(self, loss_bad: bool, norm_bad: bool, grad_norm) -> str:
        what = " and ".join(
            part for part, bad in (("the loss", loss_bad), (f"the gradient norm ({grad_norm})", norm_bad)) if bad
        )
        trainable = sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters() if p.requires_grad})
        frozen = sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters() if not p.requires_grad})
        precision = "--bf16" if self.args.bf16 else "--fp16" if self.args.fp16 else "float32 (no --bf16 / --fp16)"
        return (
            f"step {self.state.global_step}: {what} {'are' if loss_bad and norm_bad else 'is'} not finite (NaN or "
            "inf). Training stopped; nothing of this "
            f"step was saved (checkpoints written before it are intact). Dtypes in use: {precision}, trainable "
            f"parameters {', '.join(trainable) or '-'}, frozen weights {', '.join(frozen) or '-'}. What to change: "
            "lower --learning_rate (or raise --warmup_ratio); keep trainable weights in float32 or bf16 "
            "(--bf16 True where the hardware has it; float16 master weights overflow); keep --max_grad_norm on; and "
            f"check the samples of step {self.state.global_step} (python -m llava.data.check)."
        )

    # -- data -------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Optional[Sampler]:
        # Upstream's override. transformers' `get_train_dataloader` asks this method for the sampler and builds the
        # DataLoader (workers, collator, seeding, accelerate's sharding) around it; overriding the public method
        # instead would mean rebuilding all of that.
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.args.group_by_modality_length or dataset is None or not has_length(dataset):
            return super()._get_train_sampler(train_dataset)
        # As upstream: a "world" of world_size * gradient_accumulation_steps batches is grouped at once.
        return LengthGroupedSampler(
            self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            lengths=dataset.modality_lengths,
            group_by_modality=True,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    # -- optimizer --------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None or not param_groups.needs_own_groups(self.args):
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = param_groups.param_groups(
            opt_model,
            decay_parameters=set(self.get_decay_parameter_names(opt_model)),
            weight_decay=self.args.weight_decay,
            learning_rate=self.args.learning_rate,
            projector_lr=self.args.mm_projector_lr,
            vision_tower_lr=getattr(self.args, "mm_vision_tower_lr", None),
            loraplus_lr_ratio=getattr(self.args, "loraplus_lr_ratio", None),
        )
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- label statistics -------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packing_stats = inputs.pop(PACKING_STATS_KEY, None)  # --packing: the collator's counts, not a model input
        if model.training and "labels" in inputs:
            self._label_counts.add(inputs["labels"], inputs.get("attention_mask"), packing_stats)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if self.model.training or "train_loss" in logs:
            logs = {**logs, **self.label_statistics()}
        super().log(logs, start_time)

    def label_statistics(self) -> dict[str, float]:
        """Counts over every training batch seen so far by all processes (a collective when distributed).

        With --packing also `packing_efficiency`: real tokens over the positions the packed rows take, both counted
        after the image features are spliced in (1.0: no padding at all).
        """
        counts = self._label_counts.totals(self.accelerator)
        statistics = {
            "masked_samples": counts["masked_samples"],
            "supervised_tokens": counts["supervised_tokens"],
            "supervised_token_share": counts["supervised_tokens"] / max(counts["tokens"], 1),
        }
        if counts["packed_positions"]:
            statistics["packing_efficiency"] = counts["packed_tokens"] / counts["packed_positions"]
        return statistics

    # -- saving and resuming ----------------------------------------------------------------------------------

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Write LLaVA's output files; used for every `checkpoint-N/` and for the final save.

        Every rank must call this (ZeRO-3 gathering is collective); only the main process writes.
        """
        output_dir = self.args.output_dir if output_dir is None else output_dir
        mode = saving.output_kind(self.model, self.args)
        if mode == saving.OutputKind.FULL:
            super().save_model(output_dir, _internal_call=_internal_call)
            if self.args.should_save:
                saving.files_for_upstream_stack(output_dir, self.processing_class)
            return
        if mode == saving.OutputKind.LORA:
            saving.save_lora_outputs(self.model, output_dir, self.args.lora_bias, self.args.should_save)
        else:
            saving.save_projector_outputs(self.model, output_dir, PROJECTOR_KEYS, self.args.should_save)
        if self.args.should_save:
            if self.processing_class is not None:
                compat.save_tokenizer(self.processing_class, output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_FILE))

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        """A full fine-tune's weights (transformers' save, on the main process): never with NaN or inf."""
        # Upstream's override. transformers' `save_model` hands every full-model save (DeepSpeed's gathered state
        # dict included) to this method; it is where the weights can be checked before they are written.
        state = self.model.state_dict() if state_dict is None else state_dict
        saving.refuse_nonfinite(state, output_dir or self.args.output_dir)
        super()._save(output_dir, state_dict=state_dict)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N/` aside and rename it into place only once complete.

        A run killed while saving (SIGKILL, node failure) then leaves the previous checkpoints intact and at most an
        unfinished `.staging/` folder, which the next save replaces; resuming picks the last complete checkpoint.
        Every rank writes into the staging folder (DeepSpeed's shards too); the main process renames it.
        """
        # Upstream's override. transformers writes a checkpoint (model through `save_model`, optimizer, scheduler,
        # scaler, RNG, trainer state) in this one method and offers no hook around the whole of it.
        run_dir = super()._get_output_dir(trial)
        staging_root = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left by a run that died while saving
        self.accelerator.wait_for_everyone()
        self._checkpoint_root = staging_root
        try:
            super()._save_checkpoint(model, trial)  # writes into staging_root/checkpoint-N
        finally:
            self._checkpoint_root = None
        self._point_best_checkpoint_at(run_dir, staged)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            if not os.listdir(staging_root):
                os.rmdir(staging_root)
            _fsync_directory(run_dir)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        # Kept private override 1 of 2. transformers' `_save_checkpoint` writes `checkpoint-N/` under whatever this
        # returns, and nothing public moves it: the alternatives are rewriting `args.output_dir` for the duration
        # (it would end up in the checkpoint's training_args.bin) or re-implementing the checkpoint with three
        # other private methods. Only while our `_save_checkpoint` delegates does it point into the staging folder.
        if self._checkpoint_root is not None:
            return self._checkpoint_root
        return super()._get_output_dir(trial)

    def _point_best_checkpoint_at(self, run_dir: str, staged: str) -> None:
        """transformers records the best checkpoint under the folder it saved into (the staging folder) or, for an
        earlier step, not at all: point it at the renamed `checkpoint-N/`, which `load_best_model_at_end` loads and
        `save_total_limit` must keep, and record that in the staged trainer_state.json before the rename."""
        if not self.state.best_global_step:
            return
        best = f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
        self.state.best_model_checkpoint = os.path.join(run_dir, best)
        if self.args.should_save and os.path.isdir(staged):
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        # Kept private override 2 of 2. `train(resume_from_checkpoint=...)` restores the weights here, before the
        # training loop and before any callback runs (`on_train_begin` comes later and is not told the checkpoint).
        # transformers' own version refuses a projector run's checkpoint ("Can't find a valid checkpoint": it holds
        # mm_projector.bin, no full-model weights) and restores only the adapter of a LoRA run, losing the projector
        # (upstream #1200). Under DeepSpeed transformers loads the engine's checkpoint instead and never calls it.
        model = self.model if model is None else model
        if saving.output_kind(model, self.args) == saving.OutputKind.FULL:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            self.load_outputs(resume_from_checkpoint, model)

    def load_outputs(self, checkpoint_dir: str, model: Optional[nn.Module] = None) -> None:
        """Read a LoRA or projector run's files in `checkpoint_dir` back into the model (the projector included)."""
        model = self.model if model is None else model
        if saving.output_kind(model, self.args) == saving.OutputKind.LORA:
            saving.load_lora_outputs(model, checkpoint_dir)
        else:
            saving.load_projector_outputs(model, checkpoint_dir)


def _fsync_directory(path: str) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry lives in the directory's own data)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class _LabelCounts:
    """Running totals of supervised tokens, all tokens, fully masked samples and, for packed batches, real tokens
    and row positions after the splice (kept on device: no syncs)."""

    def __init__(self) -> None:
        # [supervised_tokens, tokens, masked_samples, packed_tokens, packed_positions]
        self._counts: Optional[torch.Tensor] = None

    def add(
        self, labels: torch.Tensor, attention_mask: Optional[torch.Tensor], packing_stats: Optional[torch.Tensor] = None
    ) -> None:
        supervised = labels.ne(IGNORE_INDEX)
        device = supervised.device
        if packing_stats is not None:
            # Rows hold many samples (and padding): the collator counted tokens and masked samples per sample.
            spliced, positions, tokens, masked = packing_stats.to(device=device, dtype=torch.float64).unbind()
            batch = torch.stack([supervised.sum().double(), tokens, masked, spliced, positions])
        else:
            tokens = attention_mask.sum() if attention_mask is not None else torch.tensor(labels.numel())
            zero = torch.zeros((), device=device)
            batch = torch.stack([supervised.sum(), tokens.to(device), (~supervised.any(dim=-1)).sum(), zero, zero]).to(
                torch.float64
            )
        self._counts = batch if self._counts is None else self._counts + batch

    def totals(self, accelerator) -> dict[str, float]:
        counts = self._counts if self._counts is not None else torch.zeros(5, dtype=torch.float64)
        if accelerator is not None and accelerator.num_processes > 1:
            counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum")
        supervised, tokens, masked, packed_tokens, packed_positions = counts.tolist()
        return {
            "supervised_tokens": int(supervised),
            "tokens": int(tokens),
            "masked_samples": int(masked),
            "packed_tokens": int(packed_tokens),
            "packed_positions": int(packed_positions),
        }
