"""Padding-free packing (`--packing`): the collator's rows, the splice's position ids, the loss, the attention
boundaries, and a run of the trainer that logs the packing efficiency."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.dataset import DataCollatorForSupervisedDataset, LazySupervisedDataset
from llava.data.packing import PACKING_STATS_KEY, PackingConfig
from llava.model import LlavaLlamaForCausalLM
from llava.model.llava_arch import image_feature_length
from llava.train.arguments import DataArguments

# Rows of 256 tokens hold two to four tiny samples (each 60-130 tokens with its 16 image features).
ROW_CAPACITY = 256


@pytest.fixture(scope="module")
def models(tiny):
    """The tiny LLaVA checkpoint in fp32, once per attention implementation that reads packed position ids."""
    loaded = {}
    for attention in ("sdpa", "eager"):
        model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32, attn_implementation=attention)
        model.get_vision_tower().load_model()
        model.config.tokenizer_model_max_length = ROW_CAPACITY
        loaded[attention] = model.eval()
    return loaded


@pytest.fixture(scope="module")
def samples(tiny):
    """Dataset items of both kinds: image samples (pad) and text-only ones with their placeholder image."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from llava.conversation import get_conv_template

    tokenizer = AutoTokenizer.from_pretrained(tiny.llm, model_max_length=ROW_CAPACITY)
    tokenizer.pad_token = tokenizer.unk_token
    args = DataArguments(
        data_path=str(tiny.data), image_folder=str(tiny.image_folder), is_multimodal=True, image_aspect_ratio="pad"
    )
    processor = CLIPImageProcessorPil.from_pretrained(tiny.vision_tower)
    dataset = LazySupervisedDataset(
        args.data_path, tokenizer, args, image_processor=processor, conv=get_conv_template("v1")
    )
    items = [dataset[i] for i in range(12)]  # samples 5 and 11 are text-only
    assert sum(IMAGE_TOKEN_INDEX not in item["input_ids"] for item in items) == 2
    return tokenizer, items


def _collators(tokenizer, model):
    unpacked = DataCollatorForSupervisedDataset(tokenizer)
    packed = DataCollatorForSupervisedDataset(
        tokenizer, PackingConfig(image_feature_length=image_feature_length(model))
    )
    return unpacked, packed


def _model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != PACKING_STATS_KEY}


def _segments(model, batch):
    """(position_ids, segment ids) of the packed rows after the splice: a segment starts where positions restart."""
    inputs = _model_inputs(batch)
    _, positions, mask, _, _, _ = model.prepare_inputs_labels_for_multimodal(
        inputs["input_ids"], inputs["position_ids"], None, None, inputs["labels"], inputs["images"]
    )
    assert mask is None
    return positions, torch.cumsum(positions == 0, dim=1) - 1


def test_collator_packs_rows_by_spliced_length(samples, models):
    tokenizer, items = samples
    model = models["sdpa"]
    _, collator = _collators(tokenizer, model)
    batch = collator(items)
    features = image_feature_length(model)
    assert features == 16
    ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert set(batch) == {"input_ids", "labels", "position_ids", "images", PACKING_STATS_KEY}
    assert ids.shape == labels.shape == positions.shape and ids.shape[0] < len(items)
    starts = positions == 0
    assert int(starts.sum()) == len(items)  # every sample starts once
    assert (labels[starts] == IGNORE_INDEX).all()  # and its first token is never a prediction target
    spliced = []
    for row_ids, row_positions in zip(ids, positions):
        real = row_positions >= 0
        assert (row_positions[real] == 0).any() and not (row_positions[~real] >= 0).any()  # padding only at the end
        spliced.append(int(real.sum()) + int((row_ids == IMAGE_TOKEN_INDEX).sum()) * (features - 1))
    assert max(spliced) <= ROW_CAPACITY and max(len(row) for row in collator_rows(positions)) >= 2
    # The images of image tokens first, in row order, then the text-only samples' placeholders.
    image_samples = sum(IMAGE_TOKEN_INDEX in item["input_ids"] for item in items)
    assert batch["images"].shape == (len(items), 3, 32, 32)
    assert batch["images"][image_samples:].abs().sum() == 0
    real_tokens, row_positions, text_tokens, unsupervised = batch[PACKING_STATS_KEY].tolist()
    assert real_tokens == sum(spliced) and row_positions == ids.shape[0] * max(spliced)
    assert text_tokens == sum(len(item["input_ids"]) for item in items) and unsupervised == 0


def collator_rows(positions):
    """Per row, the lengths of the samples it holds."""
    rows = []
    for row in positions:
        starts = (row == 0).nonzero().flatten().tolist()
        ends = starts[1:] + [int((row >= 0).sum())]
        rows.append([end - start for start, end in zip(starts, ends)])
    return rows


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(samples, models, attention):
    tokenizer, items = samples
    model = models[attention]
    unpacked, packed = _collators(tokenizer, model)
    plain, rows = unpacked(items), packed(items)
    assert rows["input_ids"].shape[0] < plain["input_ids"].shape[0]
    with torch.no_grad():
        loss = model(**plain).loss
        packed_loss = model(**_model_inputs(rows)).loss
        # Token-weighted over several batches as the Trainer does it: the sum over supervised tokens / their count.
        count = plain["labels"][:, 1:].ne(IGNORE_INDEX).sum()
        assert count == rows["labels"][:, 1:].ne(IGNORE_INDEX).sum()
        summed = model(**plain, num_items_in_batch=count).loss
        packed_summed = model(**_model_inputs(rows), num_items_in_batch=count).loss
    assert abs(packed_loss.item() - loss.item()) < 1e-5, (packed_loss.item(), loss.item())
    assert abs(packed_summed.item() - summed.item()) < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_no_attention_crosses_a_packed_boundary(samples, models, attention):
    tokenizer, items = samples
    model = models[attention]
    _, packed = _collators(tokenizer, model)
    batch = packed(items)
    positions, segments = _segments(model, batch)
    with torch.no_grad():
        logits = model(**_model_inputs(batch)).logits

    # Change the text of one sample that shares its row with others; nothing outside that sample may move.
    row = next(r for r, lengths in enumerate(collator_rows(batch["position_ids"])) if len(lengths) >= 2)
    first = int((batch["position_ids"][row] == 0).nonzero()[0])
    changed = {key: value.clone() for key, value in _model_inputs(batch).items()}
    sample_ids = changed["input_ids"][row, first + 1 : first + 12]
    changed["input_ids"][row, first + 1 : first + 12] = torch.where(
        sample_ids > 2, (sample_ids + 7) % 900 + 3, sample_ids
    )
    with torch.no_grad():
        changed_logits = model(**changed).logits
    difference = (changed_logits - logits).abs().amax(dim=-1)
    inside = segments == segments[row, int((positions[row] == 0).nonzero()[0])]
    inside[torch.arange(inside.shape[0]) != row] = False
    assert difference[inside].max() > 1e-3  # the changed sample did change
    assert difference[~inside].max() < 1e-6, difference[~inside].max()

    # And each packed sample's logits are those of the sample run on its own.
    for r, lengths in enumerate(collator_rows(batch["position_ids"])):
        for segment in range(len(lengths)):
            where = (segments[r] == segment).nonzero().flatten()
            alone = packed([_sample_at(items, batch, r, segment)])
            with torch.no_grad():
                own = model(**_model_inputs(alone)).logits[0]
            assert own.shape[0] == where.numel()
            assert (own - logits[r, where]).abs().max() < 1e-5


def _packed_samples(batch):
    """(row, segment, token ids) of every packed sample, in row order."""
    for r, row in enumerate(batch["position_ids"]):
        starts = (row == 0).nonzero().flatten().tolist()
        ends = starts[1:] + [int((row >= 0).sum())]
        for k, (begin, end) in enumerate(zip(starts, ends)):
            yield r, k, batch["input_ids"][r, begin:end]


def _sample_at(items, batch, row, segment):
    """The item that the collator put as `segment`-th sample of `row`: found by its token ids and, as several tiny
    samples share their text, by its image (the images of image samples come first, in row order)."""
    image_index = 0
    for r, k, tokens in _packed_samples(batch):
        if (r, k) == (row, segment):
            matches = [item for item in items if torch.equal(item["input_ids"], tokens)]
            if IMAGE_TOKEN_INDEX in tokens:
                matches = [item for item in matches if torch.equal(item["image"], batch["images"][image_index])]
            assert matches
            return matches[0]
        image_index += int(IMAGE_TOKEN_INDEX in tokens)
    raise AssertionError(f"no sample {segment} in row {row}")


def test_packed_text_only_rows_without_a_vision_tower(tiny, samples):
    """A language-model-only run: the rows go to the model as they are, padding as a segment of its own."""
    tokenizer, items = samples
    text_items = [{"input_ids": item["input_ids"], "labels": item["labels"]} for item in items]
    text_items = [item for item in text_items if IMAGE_TOKEN_INDEX not in item["input_ids"]]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny.llm, dtype=torch.float32, attn_implementation="sdpa").eval()
    llava = LlavaLlamaForCausalLM(model.config)
    llava.load_state_dict(model.state_dict(), strict=False)
    llava.eval()
    packed = DataCollatorForSupervisedDataset(tokenizer, PackingConfig())(text_items)
    unpacked = DataCollatorForSupervisedDataset(tokenizer)(text_items)
    with torch.no_grad():
        assert abs(llava(**_model_inputs(packed)).loss.item() - llava(**unpacked).loss.item()) < 1e-5


def test_packing_rejects_anyres_and_needs_feature_length(samples):
    tokenizer, items = samples
    with pytest.raises(ValueError, match="image_feature_length"):
        DataCollatorForSupervisedDataset(tokenizer, PackingConfig())(items[:2])
    anyres = [{**item, "image_size": (32, 32)} for item in items[:2]]
    with pytest.raises(ValueError, match="anyres"):
        DataCollatorForSupervisedDataset(tokenizer, PackingConfig(image_feature_length=16))(anyres)


@pytest.mark.slow
def test_packed_training_run_matches_the_unpacked_run_and_logs_efficiency(tiny, tmp_path):
    """Same seed, same batches (modality-grouped), packed or not: the same losses, step after step; the packed run
    logs its packing efficiency and writes the usual files."""
    from train_helpers import LORA_FILES, files_in, logged_losses, multimodal_flags

    from llava.train.train import train

    # No dropout: its random masks would be drawn over differently shaped tensors.
    common = dict(lora_dropout=0.0, per_device_train_batch_size=4, max_steps=3, save_steps=3)
    runs = {}
    for packing in (False, True):
        output_dir = tmp_path / f"packing-{packing}"
        trainer = train(argv=multimodal_flags(tiny, output_dir, packing=packing, **common))
        runs[packing] = (output_dir, trainer.state.log_history)
    unpacked, packed = logged_losses(runs[False][1]), logged_losses(runs[True][1])
    assert sorted(packed) == [1, 2, 3]
    for step in packed:
        assert abs(packed[step] - unpacked[step]) < 1e-4, (step, packed[step], unpacked[step])
    efficiency = [entry["packing_efficiency"] for entry in runs[True][1] if "packing_efficiency" in entry]
    assert efficiency and all(0.5 < value <= 1.0 for value in efficiency), efficiency
    assert not any("packing_efficiency" in entry for entry in runs[False][1])
    assert files_in(runs[True][0]) == files_in(runs[False][0]) == LORA_FILES | {"trainer_state.json"}


@pytest.mark.parametrize(
    ("lengths", "attention_cost", "rows"),
    [
        # Without a width cost: the fewest positions (3 balanced rows of 1400, not 2 rows: 2100 would overflow).
        ([1200, 700, 700, 700, 700], 0.0, [[0], [1, 3], [2, 4]]),
        # Equal samples and a dense mask at a narrow width: longer rows would cost attention and save no padding.
        ([735] * 4, 1 / (6 * 512), [[0], [1], [2], [3]]),
        # One long tail sample: the others share rows of its width.
        ([2048, 700, 700, 650, 600], 1 / (6 * 512), [[0], [1, 3], [2, 4]]),
        # A sample longer than a row goes alone (the splice truncates it).
        ([3000, 10], 0.0, [[0], [1]]),
    ],
)
def test_pack_rows_minimises_the_estimated_cost(lengths, attention_cost, rows):
    from llava.data.packing import pack_rows

    packed = pack_rows(lengths, 2048, attention_cost)
    assert sorted(packed) == sorted(rows)
    width = max(sum(lengths[i] for i in row) for row in packed)
    padded_width = min(max(lengths), 2048)
    cost = len(packed) * width * (1 + attention_cost * width)
    assert cost <= len(lengths) * padded_width * (1 + attention_cost * padded_width) or max(lengths) > 2048


@pytest.mark.slow
def test_packed_qlora_run(tiny, tmp_path):
    """--packing through 4-bit QLoRA (bitsandbytes on CPU): the usual files, finite losses, efficiency logged."""
    from train_helpers import LORA_FILES, files_in, logged_losses, multimodal_flags

    from llava.train.train import train

    output_dir = tmp_path / "qlora"
    trainer = train(argv=multimodal_flags(tiny, output_dir, packing=True, bits=4, max_steps=2, save_steps=2))
    losses = logged_losses(trainer.state.log_history)
    assert sorted(losses) == [1, 2] and all(0 < loss < 20 for loss in losses.values())
    assert any("packing_efficiency" in entry for entry in trainer.state.log_history)
    assert files_in(output_dir) == LORA_FILES | {"trainer_state.json"}
