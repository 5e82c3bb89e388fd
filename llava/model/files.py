"""The names of the files LLaVA runs and checkpoints consist of: the one place that defines them, for the code that
writes them (training) and the code that reads them (the loader, resuming)."""

from __future__ import annotations

CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# We and upstream write the adapter as a pickle; PEFT's default is safetensors. Both are read.
ADAPTER_WEIGHTS_FILE = "adapter_model.bin"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", ADAPTER_WEIGHTS_FILE)
NON_LORA_TRAINABLES_FILE = "non_lora_trainables.bin"
PROJECTOR_FILE = "mm_projector.bin"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_JSON_FILE = "tokenizer.json"
# The sentencepiece model: what a slow LlamaTokenizer (upstream's use_fast=False) reads.
SENTENCEPIECE_FILE = "tokenizer.model"
TRAINING_ARGS_FILE = "training_args.bin"
MODEL_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# transformers' Trainer names its checkpoints `checkpoint-<global step>`.
CHECKPOINT_DIR_PREFIX = "checkpoint-"
CHECKPOINT_GLOB = CHECKPOINT_DIR_PREFIX + "*"
