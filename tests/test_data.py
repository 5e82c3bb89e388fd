"""LazySupervisedDataset, DataCollatorForSupervisedDataset and make_supervised_data_module on the tiny data."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset, make_supervised_data_module
from llava.data.preprocess import preprocess, preprocess_multimodal
from llava.data.validation import DataValidationError
from llava.mm_utils import expand2square, select_best_resolution
from llava.testing.sizes import CLIP_IMAGE_SIZE, IMAGE_GRID_PINPOINTS
from llava.train.arguments import DataArguments


@pytest.fixture
def tokenizer(tiny_tokenizer):
    tiny_tokenizer.pad_token = tiny_tokenizer.unk_token  # as upstream's train() for the v1 templates
    return tiny_tokenizer


@pytest.fixture
def records(tiny):
    return json.loads(tiny.data.read_text())


def make_args(tiny, aspect="pad", **overrides) -> DataArguments:
    fields = dict(data_path=str(tiny.data), image_folder=str(tiny.image_folder), is_multimodal=True)
    fields.update(overrides)
    return DataArguments(image_aspect_ratio=aspect, **fields)


def make_dataset(tiny, tokenizer, processor, aspect="pad", data_path=None, **kwargs) -> LazySupervisedDataset:
    args = make_args(tiny, aspect)
    if aspect == "anyres":
        kwargs.setdefault("image_grid_pinpoints", IMAGE_GRID_PINPOINTS)
    return LazySupervisedDataset(data_path or args.data_path, tokenizer, args, image_processor=processor, **kwargs)


def write_records(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Dataset


def test_every_tiny_sample_loads(tiny, tokenizer, tiny_image_processor, records):
    dataset = make_dataset(tiny, tokenizer, tiny_image_processor)
    assert len(dataset) == len(records) == 48
    for index, record in enumerate(records):
        item = dataset[index]
        assert set(item) == {"input_ids", "labels", "image"}
        assert item["input_ids"].dtype == item["labels"].dtype == torch.long
        assert item["input_ids"].shape == item["labels"].shape and item["input_ids"].ndim == 1
        assert item["image"].shape == (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
        has_image = "image" in record
        assert item["input_ids"].eq(IMAGE_TOKEN_INDEX).sum().item() == int(has_image)
        assert item["labels"].ne(IGNORE_INDEX).any()
        if not has_image:
            assert not item["image"].any()  # upstream's zero image for text-only samples


def test_items_equal_preprocess_of_the_record(tiny, tokenizer, tiny_image_processor, records):
    conv = conv_templates["llava_llama_2"]
    dataset = make_dataset(tiny, tokenizer, tiny_image_processor, conv=conv, mm_use_im_start_end=True)
    for index in (0, 1, 5):
        record = records[index]
        sources = [record["conversations"]]
        if "image" in record:
            sources = preprocess_multimodal(sources, make_args(tiny), mm_use_im_start_end=True, conv=conv)
        expected = preprocess(sources, tokenizer, has_image="image" in record, conv=conv)
        item = dataset[index]
        assert torch.equal(item["input_ids"], expected["input_ids"][0])
        assert torch.equal(item["labels"], expected["labels"][0])
    assert "<im_start>" in tokenizer.decode([t for t in dataset[0]["input_ids"].tolist() if t >= 0])
    assert records == json.loads(tiny.data.read_text())  # the records were not modified


def test_image_modes_are_converted_to_rgb(tiny, tokenizer, tiny_image_processor, records):
    modes = {}
    for index, record in enumerate(records):
        if "image" in record:
            with Image.open(tiny.image_folder / record["image"]) as image:
                modes.setdefault(image.mode, index)
    assert set(modes) == {"RGB", "L", "RGBA", "P"}
    dataset = make_dataset(tiny, tokenizer, tiny_image_processor, aspect="square")
    for mode, index in modes.items():
        with Image.open(tiny.image_folder / records[index]["image"]) as image:
            expected = tiny_image_processor.preprocess(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert_same_pixels(dataset[index]["image"], expected, tiny_image_processor, what=f"a {mode} image")


def assert_same_pixels(ours, theirs, processor, what: str = "the image") -> None:
    """The processor's pixels within one 8-bit level (llava.mm_utils' fast transform; see its notes)."""
    level = 1 / 255 / min(processor.image_std)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=level * 1.001, msg=lambda text: f"{what}: {text}")


def _wide_sample(records, folder) -> int:
    for index, record in enumerate(records):
        if "image" in record:
            with Image.open(folder / record["image"]) as image:
                if image.width > image.height:
                    return index
    raise AssertionError("no wide image in the tiny data")


@pytest.mark.parametrize("aspect", ["square", "pad", "anyres"])
def test_square_pad_and_anyres_images(tiny, tokenizer, tiny_image_processor, records, aspect):
    index = _wide_sample(records, tiny.image_folder)
    with Image.open(tiny.image_folder / records[index]["image"]) as image:
        image = image.convert("RGB")
    item = make_dataset(tiny, tokenizer, tiny_image_processor, aspect=aspect)[index]
    if aspect == "square":
        expected = tiny_image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        assert_same_pixels(item["image"], expected, tiny_image_processor)
        assert "image_size" not in item
    elif aspect == "pad":
        background = tuple(int(x * 255) for x in tiny_image_processor.image_mean)
        padded = expand2square(image, background)
        assert padded.size == (image.width, image.width)
        expected = tiny_image_processor.preprocess(padded, return_tensors="pt")["pixel_values"][0]
        assert_same_pixels(item["image"], expected, tiny_image_processor)
        assert "image_size" not in item
    else:
        width, height = select_best_resolution(image.size, IMAGE_GRID_PINPOINTS)
        patches = (width // CLIP_IMAGE_SIZE) * (height // CLIP_IMAGE_SIZE)
        assert item["image"].shape == (1 + patches, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
        assert item["image_size"] == image.size


def test_anyres_text_only_sample_gets_zero_image_and_size(tiny, tokenizer, tiny_image_processor, records):
    index = next(i for i, record in enumerate(records) if "image" not in record)
    item = make_dataset(tiny, tokenizer, tiny_image_processor, aspect="anyres")[index]
    assert item["image"].shape == (3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE) and not item["image"].any()
    assert item["image_size"] == (CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)


def test_text_only_run_has_no_images(tiny, tokenizer, tmp_path, records):
    text_records = [record for record in records if "image" not in record]
    path = write_records(tmp_path / "text.json", text_records)
    args = DataArguments(data_path=path, is_multimodal=False)
    dataset = LazySupervisedDataset(path, tokenizer, args)
    assert len(dataset) == 8
    assert set(dataset[0]) == {"input_ids", "labels"}


def test_jsonl_gives_the_same_samples(tiny, tokenizer, tiny_image_processor, tmp_path, records):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + "\n")
    from_json = make_dataset(tiny, tokenizer, tiny_image_processor)
    from_jsonl = make_dataset(tiny, tokenizer, tiny_image_processor, data_path=str(path))
    assert len(from_jsonl) == len(from_json)
    assert from_jsonl.lengths == from_json.lengths
    for index in (0, 5, 47):
        for key in ("input_ids", "labels", "image"):
            assert torch.equal(from_jsonl[index][key], from_json[index][key])


def test_lengths_and_modality_lengths(tiny, tokenizer, tiny_image_processor, tmp_path):
    records = [
        {"id": "img", "image": "synthetic/tiny-00000.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square."}]},
        {"id": "txt", "conversations": [
            {"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "empty-words", "conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": ""}]},
    ]  # fmt: skip
    # checked=True: the last sample would fail the data checks (no reply), its lengths are still computed.
    path = write_records(tmp_path / "d.json", records)
    dataset = make_dataset(tiny, tokenizer, tiny_image_processor, data_path=path, checked=True)
    # "<image>\nWhat is it?" is 4 words, "A red square." 3; images add 128; text-only lengths are negative.
    assert dataset.lengths == [4 + 3 + 128, 3, 0]
    assert dataset.modality_lengths == [7, -3, 0]


def test_samples_without_a_reply_are_refused(tiny, tokenizer, tiny_image_processor, tmp_path):
    """One rule, one severity: the dataset refuses what the data checker reports as an error."""
    records = [
        {"id": "no-reply", "conversations": [{"from": "human", "value": "Hi"}]},
        {"id": "empty-reply", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]},
        {"id": "fine", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    path = write_records(tmp_path / "d.json", records)
    with pytest.raises(DataValidationError) as error:
        make_dataset(tiny, tokenizer, tiny_image_processor, data_path=path)
    message = str(error.value)
    assert message.startswith(f"{path}: 2 invalid sample(s); fix or remove them:")
    for ident, record in (("no-reply", 0), ("empty-reply", 1)):
        assert (
            f"sample {ident!r} (record {record}): no assistant turn after the first human turn has any text" in message
        )
    assert "'fine'" not in message and "fully_masked: the sample has no assistant reply" in message


def test_missing_image_error_names_sample_file_and_path(tiny, tokenizer, tiny_image_processor, tmp_path, records):
    broken = dict(records[0], id="broken-1", image="coco/train2017/does-not-exist.jpg")
    path = write_records(tmp_path / "d.json", [broken])
    dataset = make_dataset(tiny, tokenizer, tiny_image_processor, data_path=path)
    with pytest.raises(FileNotFoundError) as error:
        dataset[0]
    message = str(error.value)
    assert "'broken-1'" in message and path in message and "--image_folder" in message
    assert str(tiny.image_folder / "coco/train2017/does-not-exist.jpg") in message


def test_unreadable_image_error(tiny, tokenizer, tiny_image_processor, tmp_path, records):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not an image")
    path = write_records(tmp_path / "d.json", [dict(records[0], id="bad-1", image="bad.png")])
    args = make_args(tiny, image_folder=str(folder))
    dataset = LazySupervisedDataset(path, tokenizer, args, image_processor=tiny_image_processor)
    with pytest.raises(OSError, match=r"sample 'bad-1' in .*d\.json: image '.*bad\.png' cannot be read"):
        dataset[0]


@pytest.mark.parametrize(
    "record, multimodal, message",
    [
        ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]}, True,
         "sample 'x' (record 0): turn 1 is from 'gpt' but 'human' was expected"),
        ({"id": "x", "conversations": [{"from": "user", "value": "a"}]}, True, "turn 0 has 'from': 'user'"),
        ({"id": "x", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "b"},
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "c"}]}, True,
         "2 turns contain '<image>'"),
        ({"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "q"}]}, True,
         "0 turns contain '<image>'"),
        ({"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "<image>"}]}, False,
         "the run is text-only"),
        ({"id": "x", "image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>"}]}, True,
         "'image' must be one file path"),
        ({"id": "x"}, True, "'conversations' must be a non-empty list"),
    ],
)  # fmt: skip
def test_invalid_samples_are_reported_before_training(
    tiny, tokenizer, tiny_image_processor, tmp_path, record, multimodal, message
):
    path = write_records(tmp_path / "d.json", [record])
    args = make_args(tiny, is_multimodal=multimodal)
    processor = tiny_image_processor if multimodal else None
    with pytest.raises(ValueError, match="1 invalid sample") as error:
        LazySupervisedDataset(path, tokenizer, args, image_processor=processor)
    assert message in str(error.value) and path in str(error.value)


def test_all_problems_are_collected_into_one_error(tiny, tokenizer, tiny_image_processor, tmp_path):
    bad = [{"id": f"bad-{i}", "conversations": [{"from": "robot", "value": "a"}]} for i in range(12)]
    path = write_records(tmp_path / "d.json", bad)
    with pytest.raises(ValueError) as error:
        make_dataset(tiny, tokenizer, tiny_image_processor, data_path=path)
    message = str(error.value)
    assert "12 invalid sample(s)" in message and "'bad-9'" in message and "'bad-10'" not in message
    assert "... and 2 more" in message


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, FileNotFoundError, "not found; check --data_path"),
        ('[{"id": 1,}]', ValueError, "not valid JSON"),
        ('{"id": 1}\n{bad\n', ValueError, "line 2: not valid JSON Lines"),
        ("[1, 2]", ValueError, "every record must be an object"),
    ],
)
def test_unreadable_data_files(tiny, tokenizer, tiny_image_processor, tmp_path, content, error, message):
    path = tmp_path / "d.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        make_dataset(tiny, tokenizer, tiny_image_processor, data_path=str(path))


def test_settings_are_checked(tiny, tokenizer, tiny_image_processor):
    with pytest.raises(ValueError, match="needs the vision tower's image processor"):
        LazySupervisedDataset(str(tiny.data), tokenizer, make_args(tiny))
    with pytest.raises(ValueError, match="anyres needs --image_grid_pinpoints"):
        args = make_args(tiny, "anyres")
        LazySupervisedDataset(str(tiny.data), tokenizer, args, image_processor=tiny_image_processor)


# ----------------------------------------------------------------------------------------------------------------
# Collator


def _instance(ids, labels, image=None, size=None):
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if image is not None:
        item["image"] = image
    if size is not None:
        item["image_size"] = size
    return item


def test_collator_pads_truncates_and_masks(tokenizer):
    tokenizer.model_max_length = 5
    pad = tokenizer.pad_token_id
    batch = DataCollatorForSupervisedDataset(tokenizer)(
        [
            _instance([1, 5, pad], [IGNORE_INDEX, 5, pad]),  # a real <unk> (= pad id) inside the text
            _instance([1, 6, 7, 8, 9, 10, 11], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9, 10, 11]),
        ]
    )
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[1, 5, pad, pad, pad], [1, 6, 7, 8, 9]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 5, pad, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9],
    ]
    # From the lengths: the real <unk> stays visible (upstream's `input_ids != pad` would hide it).
    assert batch["attention_mask"].tolist() == [[True, True, True, False, False], [True] * 5]


def test_collator_stacks_images_of_one_shape_and_lists_others(tokenizer):
    collate = DataCollatorForSupervisedDataset(tokenizer)
    a, b = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    stacked = collate([_instance([1], [1], a), _instance([1, 2], [1, 2], b)])
    assert stacked["images"].shape == (2, 3, 4, 4) and torch.equal(stacked["images"][0], a)
    patches = torch.ones(3, 3, 4, 4)
    mixed = collate([_instance([1], [1], patches, (8, 4)), _instance([1], [1], b, (4, 4))])
    assert isinstance(mixed["images"], list) and mixed["images"][0] is patches and mixed["images"][1] is b
    assert mixed["image_sizes"] == [(8, 4), (4, 4)]


def test_collator_needs_a_pad_token(tiny_tokenizer):
    with pytest.raises(ValueError, match="no pad token"):
        DataCollatorForSupervisedDataset(tiny_tokenizer)([_instance([1], [1])])


def test_data_module_batches_the_tiny_data(tiny, tokenizer, tiny_image_processor):
    args = make_args(tiny, "anyres")
    module = make_supervised_data_module(
        tokenizer, args, image_processor=tiny_image_processor, image_grid_pinpoints=IMAGE_GRID_PINPOINTS
    )
    assert set(module) == {"train_dataset", "eval_dataset", "data_collator"} and module["eval_dataset"] is None
    dataset = module["train_dataset"]
    assert isinstance(dataset, LazySupervisedDataset) and dataset.data_path == str(tiny.data)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=module["data_collator"])
    batch = next(iter(loader))
    width = max(len(dataset[i]["input_ids"]) for i in range(4))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    assert len(batch["image_sizes"]) == 4
    assert batch["attention_mask"].sum(1).tolist() == [len(dataset[i]["input_ids"]) for i in range(4)]
