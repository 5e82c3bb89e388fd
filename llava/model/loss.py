"""The training loss of a causal LM computed from its last hidden state and ``lm_head``, chunk by chunk.

transformers' causal-LM loss projects every position to the vocabulary first: the (tokens x vocab) logits, then an
fp32 copy of them, then their gradient of the same size. At LLaVA-1.5's 16 x 2048 tokens and a 32000-word vocabulary
that is over 8 GB that no LoRA weight needs, a large share of the out-of-memory reports on 24-48 GB cards (upstream
#569, #655, #1499). Here the tokens are scored in chunks: each chunk's logits are computed in the model's dtype,
upcast to fp32, turned into the chunk's loss and, in the same pass, into the gradients of the hidden states (and of
``lm_head``'s weight when it trains), and freed before the next chunk. The backward pass only scales those gradients.
Peak extra memory is one chunk's logits; the work is the same matrix products as the unchunked loss (no recompute).

The loss is transformers' ``ForCausalLMLoss`` exactly: labels shifted left by one within each row (padded with
``IGNORE_INDEX``), or ``shift_labels`` when given; the sum over supervised positions divided by
``num_items_in_batch`` when the trainer passes it (its count over the whole accumulated batch, so gradient
accumulation and packed rows are weighted per token as the unchunked loss weights them), else the mean over this
batch's supervised positions.

``--use_liger_kernel`` on a GPU with ``liger-kernel`` installed uses Liger's fused linear cross-entropy instead (same
loss, computed in Triton kernels); see :func:`liger_available`.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import nullcontext
from typing import Literal, Optional

import torch
from torch import nn

from llava.constants import IGNORE_INDEX

logger = logging.getLogger(__name__)

LossImplementation = Literal["chunked", "liger"]
CHUNK_TOKENS = 1024
"""Tokens scored at once: the chunk's fp32 logits take CHUNK_TOKENS x vocab x 4 bytes (131 MB at a 32000 vocab)."""


def shifted_targets(labels: torch.Tensor, shift_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The target of every position, flattened: the next label in its row (``IGNORE_INDEX`` after the last)."""
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    return shift_labels.reshape(-1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over supervised positions of cross-entropy(hidden @ weight.T, targets), computed chunk by chunk; the
    gradients are computed in the forward pass (each chunk's logits exist only there) and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            chunk = hidden[start : start + chunk_tokens]
            chunk_targets = targets[start : start + chunk_tokens]
            logits = (chunk @ weight.t()).float()  # the model's dtype (or autocast's), upcast per chunk
            supervised = chunk_targets != IGNORE_INDEX
            picked_targets = chunk_targets.clamp(min=0)
            log_normaliser = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, picked_targets[:, None]).squeeze(1)
            total += torch.where(supervised, log_normaliser - picked, 0.0).sum()
            if not (need_hidden or need_weight):
                continue
            # d(loss)/d(logits) = softmax - one_hot(target) on supervised rows, 0 elsewhere; built in place.
            grad_logits = logits.sub_(log_normaliser[:, None]).exp_()
            grad_logits[torch.arange(len(chunk_targets), device=logits.device), picked_targets] -= 1.0
            grad_logits.mul_(supervised[:, None])
            grad_logits = grad_logits.to(chunk.dtype)
            if need_hidden:
                grad_hidden[start : start + chunk_tokens] = grad_logits @ weight.to(grad_logits.dtype)
            if need_weight:
                grad_weight += (grad_logits.t() @ chunk).float()
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_total.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: Optional[torch.Tensor | int] = None,
    shift_labels: Optional[torch.Tensor] = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """transformers' causal-LM loss of ``hidden_states @ weight.T`` without the full logits (see the module doc).

    Args:
        hidden_states: (batch, length, hidden), the language model's last hidden state (after its final norm).
        weight: (vocab, hidden), ``lm_head.weight``.
        labels: (batch, length), ``IGNORE_INDEX`` where nothing is predicted.
        num_items_in_batch: the trainer's count of supervised positions over the accumulated batch; the sum is
            divided by it. Without it, the mean over this batch's supervised positions.
        shift_labels: the targets already shifted (transformers' name), instead of ``labels``.
    """
    targets = shifted_targets(labels, shift_labels).to(hidden_states.device)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    total = _ChunkedLinearCrossEntropy.apply(flat, weight, targets, chunk_tokens)
    if num_items_in_batch is None:
        return total / (targets != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def liger_available() -> bool:
    """Liger's fused linear cross-entropy runs here: the package is installed and a CUDA GPU is present."""
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def _liger_cross_entropy(hidden_states, weight, labels, num_items_in_batch=None, shift_labels=None) -> torch.Tensor:
    from liger_kernel.transformers.model.loss_utils import LigerForCausalLMLoss

    return LigerForCausalLMLoss(
        hidden_states=hidden_states,
        lm_head_weight=weight,
        labels=None if shift_labels is not None else labels,
        shift_labels=shift_labels,
        hidden_size=hidden_states.shape[-1],
        num_items_in_batch=num_items_in_batch,
        ignore_index=IGNORE_INDEX,
    )


def causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Linear,
    labels: torch.Tensor,
    implementation: LossImplementation = "chunked",
    num_items_in_batch: Optional[torch.Tensor | int] = None,
    shift_labels: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """The loss of ``lm_head(hidden_states)`` against ``labels`` without materialising the logits, or None when it
    has to be computed from the logits after all: an ``lm_head`` with a bias, or one that trains while ZeRO-3
    partitions it (its gradient must reach DeepSpeed through the module's own backward).

    A frozen ``lm_head`` partitioned by ZeRO-3 is whole here: inside the DeepSpeed engine's forward, ZeRO-3 gathers a
    parameter read outside its module (and registers it as the running module's); elsewhere it is gathered for the
    call (every rank runs the forward together).
    """
    weight = lm_head.weight
    if lm_head.bias is not None or (weight.requires_grad and hasattr(weight, "ds_id")):
        return None
    gathered = nullcontext()
    if hasattr(weight, "ds_id"):
        import deepspeed
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        if weight.ds_status == ZeroParamStatus.NOT_AVAILABLE:
            gathered = deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    with gathered:
        if implementation == "liger":
            return _liger_cross_entropy(hidden_states, weight, labels, num_items_in_batch, shift_labels)
        return chunked_cross_entropy(hidden_states, weight, labels, num_items_in_batch, shift_labels)
