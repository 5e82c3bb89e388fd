"""Our package called the way upstream's own code and forks of it call theirs.

Each test is written as such a caller writes it: ``data_args`` carrying the image processor and
``mm_use_im_start_end`` (what upstream's ``train()`` sets on it), ``preprocess_*`` without a template (reading
``conversation_lib.default_conversation``, which upstream's ``train()`` sets), ``rank0_print`` and ``local_rank`` from
``llava.train.train``, ``Conversation.copy()`` in a chat loop. The results are compared with the explicit API
(``vision=VisionSetup(...)``, ``conv=``), which the other tests prove equal to upstream's own output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from train_helpers import flags

from llava import conversation as conversation_lib
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.data.vision import VisionSetup
from llava.train.train import (
    DataArguments,
    LazySupervisedDataset,
    make_supervised_data_module,
    preprocess,
    preprocess_llama_2,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
)

SOURCE = [
    {"from": "human", "value": "What is in the image?\n<image>"},
    {"from": "gpt", "value": "A red square."},
    {"from": "human", "value": "And its size?"},
    {"from": "gpt", "value": "Small."},
]


@pytest.fixture
def tokenizer(tiny_tokenizer):
    tiny_tokenizer.pad_token = tiny_tokenizer.unk_token  # what upstream's train() does for the v1 templates
    return tiny_tokenizer


def _upstream_data_args(tiny, processor, **fields) -> DataArguments:
    """`data_args` as upstream's train() leaves it after building the vision tower."""
    data_args = DataArguments(data_path=str(tiny.data), image_folder=str(tiny.image_folder), image_aspect_ratio="pad")
    data_args.image_processor = processor
    data_args.is_multimodal = True
    data_args.mm_use_im_start_end = fields.pop("mm_use_im_start_end", False)
    for name, value in fields.items():
        setattr(data_args, name, value)
    return data_args


def _same_items(first, second, indices) -> None:
    for index in indices:
        a, b = first[index], second[index]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], (index, key)


@pytest.mark.parametrize("start_end", [False, True])
def test_dataset_from_data_args_as_upstream_builds_it(tiny, tokenizer, tiny_image_processor, start_end):
    data_args = _upstream_data_args(tiny, tiny_image_processor, mm_use_im_start_end=start_end)
    theirs = LazySupervisedDataset(data_path=data_args.data_path, tokenizer=tokenizer, data_args=data_args)
    vision = VisionSetup(tiny_image_processor, mm_use_im_start_end=start_end, image_aspect_ratio="pad")
    plain_args = DataArguments(data_path=str(tiny.data), image_folder=str(tiny.image_folder))
    ours = LazySupervisedDataset(str(tiny.data), tokenizer, plain_args, vision=vision)
    assert theirs.vision == vision and theirs.is_multimodal
    _same_items(theirs, ours, range(6))  # images, a text-only sample (index 5) with its placeholder image
    if start_end:
        # <im_start>/<im_end> are plain text to this tokenizer (no tokens were added); they reach the prompt.
        decoded = tokenizer.decode([token for token in theirs[0]["input_ids"].tolist() if token >= 0])
        assert DEFAULT_IM_START_TOKEN in decoded and DEFAULT_IM_END_TOKEN in decoded


def test_make_supervised_data_module_with_upstreams_two_arguments(tiny, tokenizer, tiny_image_processor):
    data_args = _upstream_data_args(tiny, tiny_image_processor)
    module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
    assert set(module) == {"train_dataset", "eval_dataset", "data_collator"} and module["eval_dataset"] is None
    batch = module["data_collator"]([module["train_dataset"][index] for index in range(4)])
    assert batch["images"].shape == (4, 3, 32, 32)


def test_preprocess_multimodal_reads_data_args(tiny, tiny_image_processor):
    sources = [copy.deepcopy(SOURCE)]
    wrapped = preprocess_multimodal(sources, _upstream_data_args(tiny, tiny_image_processor, mm_use_im_start_end=True))
    image = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    assert wrapped[0][0]["value"] == f"{image}\nWhat is in the image?"
    moved = preprocess_multimodal(sources, _upstream_data_args(tiny, tiny_image_processor))
    assert moved[0][0]["value"] == f"{DEFAULT_IMAGE_TOKEN}\nWhat is in the image?"
    assert preprocess_multimodal(sources, DataArguments(is_multimodal=False)) is sources
    assert sources == [SOURCE]  # (upstream edits the turns in place; here they come back as new dicts)


def test_preprocess_functions_render_default_conversation(tokenizer, monkeypatch):
    custom = conversation_lib.conv_templates["vicuna_v1"].copy()
    custom.system = "You are a terse assistant."
    monkeypatch.setattr(conversation_lib, "default_conversation", custom)
    sources = preprocess_multimodal([copy.deepcopy(SOURCE)], DataArguments(is_multimodal=True))
    for function in (preprocess, preprocess_v1):
        result = function(sources, tokenizer, has_image=True)
        explicit = preprocess(sources, tokenizer, has_image=True, conv=custom)
        assert torch.equal(result["input_ids"], explicit["input_ids"]), function.__name__
        assert torch.equal(result["labels"], explicit["labels"]), function.__name__
        text = tokenizer.decode([token for token in result["input_ids"][0].tolist() if token >= 0])
        assert "You are a terse assistant." in text and "A chat between" not in text

    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["llava_llama_2"])
    llama_2 = preprocess_llama_2(sources, tokenizer, has_image=True)
    explicit = preprocess(sources, tokenizer, has_image=True, conv=conversation_lib.conv_templates["llava_llama_2"])
    assert torch.equal(llama_2["input_ids"], explicit["input_ids"])
    assert torch.equal(preprocess(sources, tokenizer, has_image=True)["labels"], explicit["labels"])
    with pytest.raises(ValueError, match="preprocess_v1 needs a template with separator style TWO"):
        preprocess_v1(sources, tokenizer, has_image=True)  # upstream asserts the style too

    caption = [[{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "A square."}]]
    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["plain"])
    newline = preprocess_plain(caption, tokenizer)["input_ids"][0]
    monkeypatch.setattr(conversation_lib, "default_conversation", conversation_lib.conv_templates["vicuna_v1"])
    space = preprocess_plain(caption, tokenizer)["input_ids"][0]  # upstream: default_conversation's separator
    # (after BOS and the image placeholder)
    assert tokenizer.decode(newline[2:]).endswith("square.\n") and tokenizer.decode(space[2:]).endswith("square. ")


def test_train_sets_default_conversation_and_local_rank_and_rank0_print_prints(tiny, tmp_path, capsys, monkeypatch):
    from llava.train import train as train_module

    monkeypatch.setattr(train_module, "local_rank", None)  # a fresh process (earlier tests trained in this one)
    train_module.rank0_print("before training")  # upstream's printed nothing until train() set local_rank
    assert capsys.readouterr().out == "before training\n"
    text_only = tmp_path / "text.json"
    text_only.write_text(
        '[{"id": "1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]'
    )
    argv = flags(
        model_name_or_path=tiny.llm, version="llava_llama_2", data_path=text_only, output_dir=tmp_path / "out",
        max_steps=1, save_strategy="no", report_to="none", per_device_train_batch_size=1,
    )  # fmt: skip
    train_module.train(argv=argv)
    assert conversation_lib.default_conversation is conversation_lib.conv_templates["llava_llama_2"]
    assert train_module.local_rank == -1  # transformers' value for a single process, as upstream records it


def test_conversation_copy_resets_skip_next_as_upstream():
    conv = conversation_lib.conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "Hi")
    conv.skip_next = True  # upstream's gradio server sets it after a moderation hit, and copies to start over
    fresh = conv.copy()
    assert fresh.skip_next is False and fresh.messages == conv.messages and fresh.messages is not conv.messages
