"""Tiny Llama + LoRA + `mm_projector` builders shared by the ZeRO-3 tests and the scripts they launch.

The test process and every launched worker build the model with these same functions and seed, so a
single-process build is the reference for what the ZeRO-3 gather must return.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model

SEED = 1234
HIDDEN = 32
VOCAB = 128
SEQ_LEN = 16
LORA_RANK = 4
# q_proj / v_proj carry a bias (attention_bias=True), gate_proj does not: "lora_only" must pick
# exactly the q/v biases, "all" also the k/o and projector biases.
LORA_TARGETS = ("q_proj", "v_proj", "gate_proj")
NUM_LAYERS = 2


def tiny_llama_config(hidden: int = HIDDEN) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2 * SEQ_LEN,
        attention_bias=True,
        tie_word_embeddings=False,
    )


def save_tiny_llama(path: str | Path, seed: int = SEED, hidden: int = HIDDEN) -> Path:
    """Write a randomly initialised tiny Llama checkpoint (safetensors) to `path`."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(tiny_llama_config(hidden))
    model.save_pretrained(path)
    return Path(path)


def lora_config(bias: str = "none") -> LoraConfig:
    # init_lora_weights=False: A and B both random, so a wrong gather cannot hide behind zeros.
    return LoraConfig(
        r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias=bias,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def add_lora_and_projector(model: transformers.PreTrainedModel, bias: str = "none", seed: int = SEED) -> PeftModel:
    """Wrap `model` with LoRA and attach a trainable 2-layer `mm_projector`, as LLaVA's LoRA run does.

    The projector is added after `get_peft_model` (as upstream adds vision modules after LoRA), so it
    stays trainable; a hook on the token embeddings runs it so that it receives gradients.
    """
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(bias))
    attach_projector(peft_model)
    return peft_model


def attach_projector(peft_model: PeftModel) -> None:
    """A trainable 2-layer `mm_projector` inside the wrapped model, run by a hook on the token embeddings so that it
    is part of the forward pass and receives gradients."""
    hidden = peft_model.get_base_model().config.hidden_size
    projector = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    inner = peft_model.get_base_model().model
    inner.mm_projector = projector
    inner.embed_tokens.register_forward_hook(lambda module, args, output: output + inner.mm_projector(output))


class RandomTokens(torch.utils.data.Dataset):
    """Fixed pseudo-random token sequences, the same in every process (a small `size` can be memorised)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        ids = torch.randint(0, VOCAB, (SEQ_LEN,), generator=generator)
        return {"input_ids": ids, "labels": ids.clone()}
