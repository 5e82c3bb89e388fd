"""The chunked causal-LM loss (`llava.model.loss`): equal to transformers' loss and gradients in fp32, weighted the
same across packed rows and gradient accumulation, never materialising the full logits or their gradient; and our
model's forward using it in training while evaluation keeps its logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.loss.loss_utils import ForCausalLMLoss

from llava.constants import IGNORE_INDEX
from llava.model.loss import chunked_cross_entropy, liger_available

RELATIVE = 1e-6
VOCAB, HIDDEN = 500, 24


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def _problem(batch=3, length=41, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, HIDDEN, generator=generator)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator) * 0.3
    labels = torch.randint(0, VOCAB, (batch, length), generator=generator)
    labels[:, :5] = IGNORE_INDEX  # a masked prompt
    labels[1, 30:] = IGNORE_INDEX  # padding
    labels[2, ::3] = IGNORE_INDEX
    return hidden, weight, labels


def _both(hidden, weight, labels, **kwargs):
    """(chunked, unchunked) loss and gradients of the hidden states and of the weight."""
    results = []
    for chunked in (True, False):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if chunked:
            loss = chunked_cross_entropy(h, w, labels, chunk_tokens=16, **kwargs)
        else:
            loss = ForCausalLMLoss(h @ w.t(), labels, VOCAB, **kwargs)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    return results


@pytest.mark.parametrize("num_items_in_batch", [None, 57, torch.tensor(90)])
def test_loss_and_gradients_equal_the_unchunked_ones(num_items_in_batch):
    hidden, weight, labels = _problem()
    (loss, grad_h, grad_w), (ref_loss, ref_h, ref_w) = _both(
        hidden, weight, labels, num_items_in_batch=num_items_in_batch
    )
    assert abs(loss.item() - ref_loss.item()) <= RELATIVE * abs(ref_loss.item())
    assert _relative(grad_h, ref_h) <= RELATIVE and _relative(grad_w, ref_w) <= RELATIVE


def test_shift_labels_are_taken_as_given():
    hidden, weight, labels = _problem()
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].contiguous()
    (loss, _, _), (ref_loss, _, _) = _both(hidden, weight, labels, shift_labels=shifted)
    assert abs(loss.item() - ref_loss.item()) <= RELATIVE * abs(ref_loss.item())


def test_gradient_accumulation_weights_every_token_alike():
    """Two micro-batches scaled by the accumulated count (the trainer's num_items_in_batch) sum to the loss and
    gradients of the whole batch: a token weighs the same whatever micro-batch it falls in."""
    hidden, weight, labels = _problem(batch=4, seed=1)
    labels[3, 10:] = IGNORE_INDEX  # the second micro-batch has fewer supervised tokens
    count = labels[:, 1:].ne(IGNORE_INDEX).sum()
    w = weight.clone().requires_grad_()
    accumulated = sum(chunked_cross_entropy(hidden[i : i + 2], w, labels[i : i + 2], count) for i in (0, 2))
    accumulated.backward()
    whole_w = weight.clone().requires_grad_()
    whole = ForCausalLMLoss(hidden @ whole_w.t(), labels, VOCAB)
    whole.backward()
    assert abs(accumulated.item() - whole.item()) <= RELATIVE * whole.item()
    assert _relative(w.grad, whole_w.grad) <= RELATIVE


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_the_full_logits_and_their_gradient_never_exist():
    hidden, weight, labels = _problem(batch=4, length=64)
    tokens = hidden.shape[0] * hidden.shape[1]
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with _LargestTensor() as chunked:
        chunked_cross_entropy(h, w, labels, chunk_tokens=32).backward()
    with _LargestTensor() as unchunked:
        ForCausalLMLoss(h @ w.t(), labels, VOCAB).backward()
    assert unchunked.largest == tokens * VOCAB
    assert chunked.largest == 32 * VOCAB  # one chunk's logits, 1/8 of the batch's


# ----------------------------------------------------------------------------------------------------------------
# Through our model: training takes the chunked loss, on padded and on packed batches, with LoRA


@pytest.fixture(scope="module")
def lora_model(tiny):
    from peft import LoraConfig, get_peft_model

    from llava.model import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32)
    model.get_vision_tower().load_model()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=r"model\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.down_proj)",
        lora_dropout=0.0,
        init_lora_weights=False,
    )  # B random too: every LoRA weight gets a gradient
    return get_peft_model(model, config)


@pytest.fixture(scope="module")
def batches(tiny, lora_model):
    from test_packing import ROW_CAPACITY, _collators
    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from llava.conversation import get_conv_template
    from llava.data.dataset import LazySupervisedDataset
    from llava.train.arguments import DataArguments

    tokenizer = AutoTokenizer.from_pretrained(tiny.llm, model_max_length=ROW_CAPACITY)
    tokenizer.pad_token = tokenizer.unk_token
    args = DataArguments(
        data_path=str(tiny.data), image_folder=str(tiny.image_folder), is_multimodal=True, image_aspect_ratio="pad"
    )
    dataset = LazySupervisedDataset(
        args.data_path, tokenizer, args, image_processor=CLIPImageProcessorPil.from_pretrained(tiny.vision_tower),
        conv=get_conv_template("v1"),
    )  # fmt: skip
    items = [dataset[i] for i in range(6)]
    unpacked, packed = _collators(tokenizer, lora_model.get_base_model())
    lora_model.get_base_model().config.tokenizer_model_max_length = ROW_CAPACITY
    rows = {key: value for key, value in packed(items).items() if key != "packing_stats"}
    return {"padded": unpacked(items), "packed": rows}


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_training_forward_uses_the_chunked_loss_with_the_same_gradients(lora_model, batches, layout):
    batch = batches[layout]
    count = batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()
    lora_model.train()
    results = {}
    for skip_logits in (None, False):  # None: training's default, the chunked loss; False: logits and the usual loss
        lora_model.zero_grad(set_to_none=True)
        output = lora_model(**batch, num_items_in_batch=count, skip_logits=skip_logits)
        output.loss.backward()
        grads = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.grad is not None}
        results[skip_logits] = (output.loss.detach(), output.logits, grads)
    (loss, logits, grads), (ref_loss, ref_logits, ref_grads) = results[None], results[False]
    assert logits is None and ref_logits is not None
    assert abs(loss.item() - ref_loss.item()) <= RELATIVE * ref_loss.item()
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 3 * 2
    for name in grads:
        assert _relative(grads[name], ref_grads[name]) <= 1e-5, name


def test_evaluation_keeps_its_logits(lora_model, batches):
    lora_model.eval()
    with torch.no_grad():
        output = lora_model(**batches["padded"])
        loss_only = lora_model(**batches["padded"], skip_logits=True)  # transformers' loss-only evaluation
    assert output.logits is not None and loss_only.logits is None
    assert abs(output.loss.item() - loss_only.loss.item()) <= RELATIVE * output.loss.item()


@pytest.mark.skipif(not liger_available(), reason="Liger's kernels need a CUDA GPU and the liger-kernel package")
def test_liger_is_applied_to_our_model_and_gives_the_same_loss(tiny):
    """--use_liger_kernel on a GPU: Liger's kernels patch our LLaVA model (transformers alone would skip its model
    type) and its fused linear cross-entropy gives the chunked loss."""
    from llava.model import LlavaLlamaForCausalLM
    from llava.train.liger import use_liger_kernels

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llava, dtype=torch.float32).cuda().train()
    ids = torch.randint(3, 1000, (2, 64), device="cuda")
    chunked = model(input_ids=ids, labels=ids).loss
    use_liger_kernels(model)
    assert model.loss_implementation == "liger"
    liger = model(input_ids=ids, labels=ids).loss
    assert abs(liger.item() - chunked.item()) <= 1e-4 * chunked.item()
