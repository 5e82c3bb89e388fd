"""Batched generation with a LLaVA model: tokenised prompts left-padded together, images batched (a zero frame
for text-only rows), greedy answers identical to one prompt at a time. Used by ``llava.eval``'s entry points and by
training's evaluation (``--eval_generation_samples``).
"""

from __future__ import annotations

from typing import Any

import torch


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills finished rows and left padding: the tokenizer's pad token, else its EOS (LLaVA's Llama
    tokenizers have none of their own)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")


def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id sequences right-aligned: ``(input_ids, attention_mask)``, both (batch, longest)."""
    longest = max(sequence.shape[0] for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, longest - sequence.shape[0] :] = sequence
        attention_mask[row, longest - sequence.shape[0] :] = 1
    return input_ids, attention_mask


def batch_images(
    image_tensors: list[torch.Tensor | None], image_sizes: list[tuple[int, int] | None]
) -> tuple[torch.Tensor | list[torch.Tensor] | None, list[tuple[int, int]] | None]:
    """One batch of preprocessed images for ``generate``: a tensor when all have one shape, else a list.

    A row without an image (a text-only question) gets a single zero frame: the splice lets a sample without image
    tokens consume one image without using it, as training's collator does for text-only samples. Without any image
    in the batch the result is ``(None, None)``, as for a single text-only question.
    """
    present = [tensor for tensor in image_tensors if tensor is not None]
    if not present:
        return None, None
    frame = present[0].shape[-3:]
    filled = [tensor if tensor is not None else present[0].new_zeros(frame) for tensor in image_tensors]
    sizes = [size if size is not None else (frame[-1], frame[-2]) for size in image_sizes]
    if all(tensor.shape == filled[0].shape for tensor in filled):
        return torch.stack(filled), sizes
    return filled, sizes


def end_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's (an int or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    return ids


def generate_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[torch.Tensor],
    image_tensors: list[torch.Tensor | None],
    image_sizes: list[tuple[int, int] | None],
    options: dict[str, Any],
) -> list[list[int]]:
    """Generate for a batch of tokenised prompts (1-D ids with ``IMAGE_TOKEN_INDEX``), left-padded together.

    Returns each row's new token ids up to and including its first end token (what the same prompt alone
    generates; greedy decoding gives the same ids as one prompt at a time).
    """
    pad_id = pad_token_id(tokenizer)
    input_ids, attention_mask = left_pad(prompts, pad_id)
    images, sizes = batch_images(image_tensors, image_sizes)
    if isinstance(images, list):
        images = [image.to(model.device, dtype=model.dtype) for image in images]
    elif images is not None:
        images = images.to(model.device, dtype=model.dtype)
    # no_grad, not inference_mode: during training (--eval_generation_samples) ZeRO-3 gathers parameters here, and
    # inference tensors could not be used for backward afterwards.
    with torch.no_grad():
        output_ids = model.generate(
            input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            images=images,
            image_sizes=sizes,
            pad_token_id=pad_id,
            **options,
        )
    ends = end_token_ids(model, tokenizer)
    rows = []
    for row in output_ids.tolist():
        stop = next((index for index, token in enumerate(row) if token in ends), None)
        rows.append(row if stop is None else row[: stop + 1])
    return rows
