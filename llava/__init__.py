"""LLaVA-1.5 LoRA / QLoRA fine-tuning on current libraries, faithful to upstream haotian-liu/LLaVA."""

__all__ = ["LlavaLlamaForCausalLM"]


def __getattr__(name):
    # Upstream exposes `from llava import LlavaLlamaForCausalLM`; import lazily so that
    # `import llava.conversation` does not pay for torch + transformers.
    if name == "LlavaLlamaForCausalLM":
        from llava.model import LlavaLlamaForCausalLM

        return LlavaLlamaForCausalLM
    raise AttributeError(f"module 'llava' has no attribute {name!r}")
