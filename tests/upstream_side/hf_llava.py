"""An export of ours (scripts/convert_to_hf.py) read by transformers 4.37.2's own Llava, as older readers read it.

Request: {"model_dir", "image": path of a square image, "prompt": str holding one "<image>", "logits_out": path,
"max_new_tokens": int}. 4.37 has no padding image processor (LlavaImageProcessor came later), so the pixels come
from its CLIPImageProcessor over the export's preprocessor_config.json; its LlavaForConditionalGeneration expands
the one <image> token itself.
Answer: {"versions", "model_class", "input_ids", "missing", "unexpected", "generated"}; the last-position logits go
to logits_out.
"""

from __future__ import annotations

from _common import main, versions


def handle(request: dict) -> dict:
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration

    model_dir = request["model_dir"]
    model, info = LlavaForConditionalGeneration.from_pretrained(
        model_dir, torch_dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    image_processor = CLIPImageProcessor.from_pretrained(model_dir)
    image = Image.open(request["image"]).convert("RGB")
    inputs = tokenizer(request["prompt"], return_tensors="pt")
    pixel_values = image_processor(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        logits = model(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=pixel_values
        ).logits
        generated = model.generate(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=pixel_values,
            max_new_tokens=request["max_new_tokens"], do_sample=False,
        )  # fmt: skip
    torch.save(logits[0, -1].float(), request["logits_out"])
    return dict(
        versions=versions(), model_class=type(model).__name__, input_ids=inputs.input_ids[0].tolist(),
        missing=list(info["missing_keys"]), unexpected=list(info["unexpected_keys"]),
        generated=generated[0, inputs.input_ids.shape[1]:].tolist(),
    )  # fmt: skip


if __name__ == "__main__":
    main(handle)
