"""`llava.train.llava_trainer`: grouping functions, sampler, optimizer groups; `find_all_linear_names`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llava.train.llava_trainer import (
    LengthGroupedSampler,
    get_length_grouped_indices,
    get_modality_length_grouped_indices,
    split_to_even_chunks,
)
from llava.train.lora import find_all_linear_names


@pytest.mark.parametrize(
    "indices, lengths, num_chunks, expected",
    [
        # greedy: each index goes to the lightest chunk that is not full yet
        ([0, 1, 2, 3], [9, 8, 2, 1], 2, [[0, 3], [1, 2]]),
        ([0, 1, 2, 3, 4, 5], [10, 10, 1, 1, 1, 1], 2, [[0, 2, 4], [1, 3, 5]]),
        ([4, 2, 0, 1, 3, 5], [1, 1, 5, 1, 9, 1], 3, [[4, 5], [2, 3], [0, 1]]),
        # counts that do not divide evenly: round-robin
        ([0, 1, 2, 3, 4], [5, 4, 3, 2, 1], 2, [[0, 2, 4], [1, 3]]),
        ([7, 8, 9], [0] * 10, 2, [[7, 9], [8]]),
    ],
)
def test_split_to_even_chunks(indices, lengths, num_chunks, expected):
    assert split_to_even_chunks(indices, lengths, num_chunks) == expected


def test_length_grouped_single_megabatch_is_sorted_and_balanced():
    # 8 samples, megabatch 2 x 4 = 8: the whole list is one megabatch, sorted longest first, so the random
    # permutation does not matter.
    lengths = [3, 10, 4, 1, 5, 9, 2, 6]
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        # sorted: 1(10) 5(9) 7(6) 4(5) 2(4) 0(3) 6(2) 3(1); greedy into 2 chunks of 4
        assert get_length_grouped_indices(lengths, batch_size=4, world_size=2, generator=generator) == [
            1, 4, 2, 3, 5, 7, 0, 6,
        ]  # fmt: skip


def test_length_grouped_megabatches_follow_the_permutation():
    lengths = [5, 1, 7, 3, 8, 2]
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0)).tolist()
    result = get_length_grouped_indices(lengths, batch_size=2, world_size=1, generator=generator)
    expected = []
    for start in (0, 2, 4):
        expected += sorted(order[start : start + 2], key=lambda i: lengths[i], reverse=True)
    assert result == expected


def test_modality_grouping_small_modalities_go_to_the_leftover_batch():
    # each modality fits in one megabatch (4), so both become the final, sorted, leftover megabatch
    lengths = [5, -3, 7, -2, 4]
    generator = torch.Generator().manual_seed(1)
    assert get_modality_length_grouped_indices(lengths, batch_size=2, world_size=2, generator=generator) == [
        0, 1, 2, 3, 4,
    ]  # fmt: skip


def test_modality_grouping_keeps_megabatches_single_modality():
    lengths = [i + 1 for i in range(10)] + [-(i + 1) for i in range(7)]  # 10 image samples, 7 text-only
    batch_size, world_size = 2, 1
    result = get_modality_length_grouped_indices(lengths, batch_size, world_size, torch.Generator().manual_seed(3))
    assert sorted(result) == list(range(17))
    # 4 + 3 full single-modality megabatches, then the last megabatch of each modality together (2 + 1), sorted
    megabatches = [result[i : i + 2] for i in range(0, 14, 2)]
    for megabatch in megabatches:
        assert len({lengths[i] > 0 for i in megabatch}) == 1
    assert sum(lengths[megabatch[0]] > 0 for megabatch in megabatches) == 4
    leftovers = result[14:]
    assert leftovers == sorted(leftovers) and [lengths[i] > 0 for i in leftovers] == [True, True, False]


def test_modality_grouping_is_a_function_of_the_generator_only():
    lengths = [3, -4, 5, 6, -1, 2, -7, 8, 9, -2, 4, 1] * 3
    runs = []
    for _ in range(2):
        torch.manual_seed(1234 + len(runs))  # the global RNG must not matter (upstream used it)
        runs.append(get_modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(7)))
    assert runs[0] == runs[1]
    other = get_modality_length_grouped_indices(lengths, 2, 2, torch.Generator().manual_seed(8))
    assert other != runs[0] and sorted(other) == sorted(runs[0])


def test_modality_grouping_rejects_zero_lengths():
    with pytest.raises(ValueError, match=r"samples \[1\] have length 0"):
        get_modality_length_grouped_indices([3, 0, -2], 1, 1)


def test_sampler_order_depends_on_seed_and_epoch():
    lengths = [3, -4, 5, 6, -1, 2, -7, 8, 9, -2, 4, 1] * 2
    sampler = LengthGroupedSampler(2, world_size=2, lengths=lengths, group_by_modality=True, seed=42)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order, whatever the global RNG did
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    again = LengthGroupedSampler(2, world_size=2, lengths=lengths, group_by_modality=True, seed=42)
    again.set_epoch(1)
    assert list(again) == second
    assert len(sampler) == len(lengths)


def test_sampler_needs_lengths():
    with pytest.raises(ValueError, match="needs the samples' lengths"):
        LengthGroupedSampler(2, world_size=1)


# ----------------------------------------------------------------------------------------------------------------
# LoRA targets and optimizer groups, on a tiny Llama with LLaVA-named multimodal modules attached


@pytest.fixture
def llama_with_mm_modules(tiny):
    """The tiny Vicuna plus an `mm_projector` (mlp2x_gelu) and a `vision_tower` holding CLIP-like linears."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny.llm)
    hidden = model.config.hidden_size
    model.model.mm_projector = nn.Sequential(nn.Linear(32, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    model.model.vision_tower = nn.ModuleDict({"q_proj": nn.Linear(32, 32), "fc1": nn.Linear(32, 32)})
    model.model.vision_tower.requires_grad_(False)
    return model


def test_find_all_linear_names_covers_the_language_model_only(llama_with_mm_modules):
    assert find_all_linear_names(llama_with_mm_modules) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj",
    ]  # fmt: skip


def test_lora_never_touches_multimodal_modules(llama_with_mm_modules):
    from llava.train.lora import add_lora

    flags = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none", bits=16, bf16=False)
    model = add_lora(llama_with_mm_modules, flags)
    adapted = {name for name, _ in model.named_parameters() if "lora_A" in name}
    assert len(adapted) == 2 * 7  # 2 layers x 7 linears
    assert not any(keyword in name for name in adapted for keyword in ("vision_tower", "mm_projector", "lm_head"))


def _trainer(model, tmp_path, **flags):
    from llava.train.arguments import TrainingArguments
    from llava.train.llava_trainer import LLaVATrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **flags)
    return LLaVATrainer(model=model, args=args)


def _groups_by_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (sorted(names[id(p)] for p in group["params"]), group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
    ]


def test_optimizer_gives_the_projector_its_learning_rate(llama_with_mm_modules, tmp_path):
    model = llama_with_mm_modules
    model.lm_head.requires_grad_(False)
    trainer = _trainer(model, tmp_path, learning_rate=1e-3, mm_projector_lr=2e-5, weight_decay=0.1)
    groups = _groups_by_names(model, trainer.create_optimizer())
    assert [(lr, wd) for _, lr, wd in groups] == [(1e-3, 0.1), (1e-3, 0.0), (2e-5, 0.1), (2e-5, 0.0)]
    rest_decay, rest_no_decay, proj_decay, proj_no_decay = (names for names, _, _ in groups)
    assert proj_decay == ["model.mm_projector.0.weight", "model.mm_projector.2.weight"]
    assert proj_no_decay == ["model.mm_projector.0.bias", "model.mm_projector.2.bias"]
    # norms and biases get no weight decay; frozen parameters are in no group
    assert "model.norm.weight" in rest_no_decay and "model.layers.0.input_layernorm.weight" in rest_no_decay
    assert "model.layers.1.mlp.down_proj.weight" in rest_decay
    assert not any("vision_tower" in n or "lm_head" in n for names, _, _ in groups for n in names)


def test_optimizer_without_projector_lr_is_transformers_default(llama_with_mm_modules, tmp_path):
    model = llama_with_mm_modules
    trainer = _trainer(model, tmp_path, learning_rate=1e-3, weight_decay=0.1)
    groups = _groups_by_names(model, trainer.create_optimizer())
    assert [(lr, wd) for _, lr, wd in groups] == [(1e-3, 0.1), (1e-3, 0.0)]
    assert "model.mm_projector.0.weight" in groups[0][0] and "model.mm_projector.0.bias" in groups[1][0]


def test_optimizer_leaves_out_empty_groups(llama_with_mm_modules, tmp_path):
    model = llama_with_mm_modules
    model.requires_grad_(False)
    model.model.mm_projector.requires_grad_(True)
    trainer = _trainer(model, tmp_path, learning_rate=1e-3, mm_projector_lr=5e-4, weight_decay=0.0)
    groups = _groups_by_names(model, trainer.create_optimizer())
    assert [(lr, len(names)) for names, lr, _ in groups] == [(5e-4, 2), (5e-4, 2)]


def test_optimizer_groups_of_loraplus_projector_and_vision_tower(llama_with_mm_modules, tmp_path):
    """LoRA+ (as peft's create_loraplus_optimizer): B matrices and DoRA magnitudes at ratio x lr; the projector and
    the trained tower at their own rates (--mm_projector_lr, --mm_vision_tower_lr); each split by weight decay."""
    from llava.train.lora import add_lora

    flags = SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_bias="none", bits=16, bf16=False,
                            use_dora=True)  # fmt: skip
    model = add_lora(llama_with_mm_modules, flags)
    inner = model.get_base_model().model
    inner.mm_projector.requires_grad_(True)
    inner.vision_tower.requires_grad_(True)  # --unfreeze_mm_vision_tower
    trainer = _trainer(model, tmp_path, learning_rate=1e-4, mm_projector_lr=2e-5, mm_vision_tower_lr=2e-6,
                       loraplus_lr_ratio=16, weight_decay=0.1)  # fmt: skip
    groups = _groups_by_names(model, trainer.create_optimizer())
    assert [(lr, wd) for _, lr, wd in groups] == [
        (1e-4, 0.1), (1.6e-3, 0.1), (2e-5, 0.1), (2e-5, 0.0), (2e-6, 0.1), (2e-6, 0.0),
    ]  # fmt: skip
    lora_a, lora_b, proj_decay, proj_no_decay, tower_decay, tower_no_decay = (names for names, _, _ in groups)
    assert len(lora_a) == 14 and all(".lora_A." in name for name in lora_a)
    assert len(lora_b) == 28 and {name.split(".")[-3] for name in lora_b} == {"lora_B", "lora_magnitude_vector"}
    assert proj_decay == [
        "base_model.model.model.mm_projector.0.weight",
        "base_model.model.model.mm_projector.2.weight",
    ]
    assert len(proj_no_decay) == 2
    assert tower_decay == [
        "base_model.model.model.vision_tower.fc1.weight",
        "base_model.model.model.vision_tower.q_proj.weight",
    ]
    assert tower_no_decay == [
        "base_model.model.model.vision_tower.fc1.bias",
        "base_model.model.model.vision_tower.q_proj.bias",
    ]
