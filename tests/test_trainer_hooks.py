"""The private members of transformers that `LLaVATrainer` overrides, pinned against the installed transformers.

`LLaVATrainer` overrides upstream's three private methods (`_get_train_sampler`, `_save_checkpoint`, `_save`) and two
more for which no public hook serves (`_get_output_dir`, `_load_from_checkpoint`); everything else goes through public
hooks. A transformers release that renames one of them, changes its signature or stops calling it where we rely on it
fails here, naming the member, instead of silently skipping a save in a real run. The behaviour tests drive a plain
`transformers.Trainer` on a toy model, so they test transformers itself, not our code.
"""

from __future__ import annotations

import inspect
import json
import os
from inspect import Parameter

import pytest
import torch
import transformers
from torch import nn
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from llava.train.arguments import TrainingArguments
from llava.train.llava_trainer import LLaVATrainer

EMPTY = Parameter.empty
POSITIONAL = Parameter.POSITIONAL_OR_KEYWORD
# member -> its parameters (name, default) as the overrides rely on them
PINNED_SIGNATURES = {
    "_get_train_sampler": [("self", EMPTY), ("train_dataset", None)],
    "_save_checkpoint": [("self", EMPTY), ("model", EMPTY), ("trial", EMPTY)],
    "_save": [("self", EMPTY), ("output_dir", None), ("state_dict", None)],
    "_get_output_dir": [("self", EMPTY), ("trial", EMPTY)],
    "_load_from_checkpoint": [("self", EMPTY), ("resume_from_checkpoint", EMPTY), ("model", None)],
}
UPSTREAMS_OWN = {"_get_train_sampler", "_save_checkpoint", "_save"}


def private_overrides(cls: type, base: type) -> set[str]:
    """Names `cls` itself defines that override a private (single-underscore) member of `base`, plus `__getattr__`
    (which intercepts attributes of `base`). How the count in llava/train/llava_trainer.py's docstring is made."""
    names = set()
    for name in vars(cls):
        if name == "__getattr__" or (not name.startswith("__") and name.startswith("_") and hasattr(base, name)):
            names.add(name)
    return names


def test_the_private_overrides_are_exactly_the_pinned_ones():
    overridden = private_overrides(LLaVATrainer, Trainer)
    assert overridden == set(PINNED_SIGNATURES), (
        f"LLaVATrainer overrides transformers.Trainer's private members {sorted(overridden)}; each one needs a why-"
        f"comment and a pinned signature here (pinned: {sorted(PINNED_SIGNATURES)})"
    )
    assert len(overridden - UPSTREAMS_OWN) <= 2
    assert private_overrides(TrainingArguments, transformers.TrainingArguments) == set(), (
        "llava.train.arguments.TrainingArguments overrides a private member of transformers.TrainingArguments; use "
        "the explicit setup_distributed() step instead"
    )


@pytest.mark.parametrize("member", sorted(PINNED_SIGNATURES))
def test_pinned_signature(member):
    assert hasattr(Trainer, member), (
        f"transformers {transformers.__version__} has no Trainer.{member} any more; LLaVATrainer overrides it "
        "(llava/train/llava_trainer.py) and must move to what replaced it"
    )
    expected = PINNED_SIGNATURES[member]
    for owner in (Trainer, LLaVATrainer):
        parameters = list(inspect.signature(getattr(owner, member)).parameters.values())
        actual = [(p.name, p.default) for p in parameters]
        assert actual == expected and all(p.kind == POSITIONAL for p in parameters), (
            f"{owner.__module__}.{owner.__name__}.{member} is now {inspect.signature(getattr(owner, member))} "
            f"(transformers {transformers.__version__}); LLaVATrainer's override relies on the parameters {expected}"
        )


# ----------------------------------------------------------------------------------------------------------------
# The behaviour relied on, on a toy model and transformers' own Trainer


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def _samples(count=8):
    return [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i) / 2)} for i in range(count)]


class _Reversed(Sampler):
    def __init__(self, size):
        self.size = size

    def __iter__(self):
        return iter(range(self.size - 1, -1, -1))

    def __len__(self):
        return self.size


class _Spy(Trainer):
    """transformers' Trainer recording when it calls the members LLaVATrainer overrides (and where they write)."""

    def __init__(self, *args, redirect=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple] = []
        self.redirect = redirect
        self.saving = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.calls.append(("training_step", self.state.global_step, self.accelerator.sync_gradients))
        return super().training_step(model, inputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        self.calls.append(("_get_train_sampler", train_dataset))
        return _Reversed(len(train_dataset))

    def _save_checkpoint(self, model, trial):
        self.calls.append(("_save_checkpoint", self.state.global_step))
        self.saving = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.saving = False

    def _get_output_dir(self, trial):
        self.calls.append(("_get_output_dir", trial))
        if self.saving and self.redirect is not None:
            return self.redirect
        return super()._get_output_dir(trial)

    def save_model(self, output_dir=None, _internal_call=False):
        self.calls.append(("save_model", output_dir, _internal_call))
        super().save_model(output_dir, _internal_call=_internal_call)

    def _save(self, output_dir=None, state_dict=None):
        self.calls.append(("_save", output_dir, state_dict))
        super()._save(output_dir, state_dict=state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self.calls.append(("_load_from_checkpoint", resume_from_checkpoint, model))
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def log(self, logs, start_time=None):
        if "loss" in logs:
            self.calls.append(("log", self.state.global_step))
        super().log(logs, start_time)


class _StepEnd(TrainerCallback):
    def __init__(self):
        self.trainer = None

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.calls.append(("on_step_end", state.global_step))


def _spy(tmp_path, redirect=None, eval_dataset=None, **flags):
    values = dict(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], max_steps=2, save_steps=1,
                  logging_steps=1, learning_rate=0.1, per_device_train_batch_size=2, disable_tqdm=True)  # fmt: skip
    args = transformers.TrainingArguments(**{**values, **flags})
    step_end = _StepEnd()
    trainer = _Spy(
        model=_Toy(),
        args=args,
        train_dataset=_samples(),
        eval_dataset=eval_dataset,
        redirect=redirect,
        callbacks=[step_end],
    )
    step_end.trainer = trainer
    return trainer


def _named(calls, name):
    return [call[1:] for call in calls if call[0] == name]


def test_get_train_sampler_gives_the_training_dataloader_its_order(tmp_path):
    trainer = _spy(tmp_path)
    batches = list(trainer.get_train_dataloader())
    assert _named(trainer.calls, "_get_train_sampler") == [(trainer.train_dataset,)], (
        "transformers' get_train_dataloader no longer asks Trainer._get_train_sampler(train_dataset) for the sampler "
        "(LLaVATrainer's --group_by_modality_length sampler is set there)"
    )
    assert [x[0].item() for batch in batches for x in batch["x"]] == [7, 6, 5, 4, 3, 2, 1, 0], (
        "the sampler Trainer._get_train_sampler returns no longer decides the training order"
    )


def test_save_checkpoint_writes_everything_under_get_output_dir_through_save_model_and_save(tmp_path):
    aside = str(tmp_path / "aside")
    trainer = _spy(tmp_path, redirect=aside, gradient_accumulation_steps=2)
    trainer.train()
    calls = trainer.calls
    assert _named(calls, "_save_checkpoint") == [(1,), (2,)], "the training loop no longer calls _save_checkpoint"
    for step in (1, 2):
        folder = os.path.join(aside, f"checkpoint-{step}")
        assert ("save_model", folder, True) in calls, (
            "Trainer._save_checkpoint no longer writes the model with save_model(<_get_output_dir(trial)>/"
            "checkpoint-N, _internal_call=True) (LLaVATrainer stages checkpoints through _get_output_dir and writes "
            "its files in save_model)"
        )
        assert ("_save", folder, None) in calls, "Trainer.save_model no longer hands a plain model's save to _save"
        assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(os.listdir(folder)), (
            "Trainer._save_checkpoint no longer writes the optimizer, scheduler, RNG and trainer state under "
            "_get_output_dir(trial)"
        )
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "checkpoint-1"))

    # The NaN stop (llava_trainer.StopOnNonFinite): the last micro-batch of each step runs with sync_gradients set,
    # and on_step_end comes after the optimizer step, before that step is logged or saved.
    steps = [(step, sync) for step, sync in _named(calls, "training_step")]
    assert steps == [(0, False), (0, True), (1, False), (1, True)], (
        "training_step no longer runs with accelerator.sync_gradients set on the last micro-batch of a step only"
    )
    order = [call for call in calls if call[0] in ("on_step_end", "log", "_save_checkpoint")]
    assert order == [("on_step_end", 1), ("log", 1), ("_save_checkpoint", 1), ("on_step_end", 2), ("log", 2),
                     ("_save_checkpoint", 2)], "on_step_end no longer precedes the step's log and checkpoint"  # fmt: skip

    # Resuming: train(resume_from_checkpoint=...) restores the weights through _load_from_checkpoint, before training.
    resumed = _spy(tmp_path, max_steps=3)
    resumed.train(resume_from_checkpoint=os.path.join(aside, "checkpoint-2"))
    first = [call[0] for call in resumed.calls if call[0] in ("_load_from_checkpoint", "training_step")][:2]
    assert _named(resumed.calls, "_load_from_checkpoint") == [(os.path.join(aside, "checkpoint-2"), None)], (
        "Trainer.train(resume_from_checkpoint=...) no longer calls _load_from_checkpoint(checkpoint) (LLaVATrainer "
        "restores the projector there)"
    )
    assert first == ["_load_from_checkpoint", "training_step"]
    state = json.loads(open(os.path.join(resumed.args.output_dir, "checkpoint-3", "trainer_state.json")).read())
    assert state["global_step"] == 3


def test_on_train_end_sees_the_best_checkpoint_after_pruning(tmp_path):
    """llava_trainer.LoadBestRun reads the best checkpoint at on_train_end: it must still be there, and named."""
    seen = {}

    class _Watch(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            seen["best"] = state.best_model_checkpoint
            seen["left"] = sorted(os.listdir(args.output_dir))

    trainer = _spy(tmp_path, max_steps=3, eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
                   metric_for_best_model="loss", greater_is_better=True, save_total_limit=1,
                   eval_dataset=_samples(4))  # fmt: skip
    trainer.add_callback(_Watch())
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and seen["best"] == best, "on_train_end no longer sees state.best_model_checkpoint"
    assert os.path.basename(best) in seen["left"] and os.path.isdir(best), (
        "the best checkpoint is gone by on_train_end (LLaVATrainer's --load_best_model_at_end reads it there)"
    )


def test_llava_trainer_checks_the_norm_transformers_logs(tmp_path):
    """The gradient norm StopOnNonFinite checks is the one transformers clips with and logs, step by step."""
    checked = []

    class _Recording(LLaVATrainer):
        def stop_if_not_finite(self):
            checked.append(float(self._step_grad_norm))
            super().stop_if_not_finite()

    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], max_steps=3,
                             save_strategy="no", logging_steps=1, learning_rate=0.1, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_grad_norm=0.5, disable_tqdm=True)  # fmt: skip
    trainer = _Recording(model=_Toy(), args=args, train_dataset=_samples())
    trainer.train()
    logged = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(checked) == 3 and checked == pytest.approx(logged, rel=1e-6)
    assert max(logged) > 0.5  # clipped steps among them: the norm is taken before clipping, as transformers logs it
