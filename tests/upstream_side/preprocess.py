"""Upstream's preprocess_multimodal + preprocess, with upstream's slow tokenizer, over a list of cases.

Request: {"tokenizers": {name: {"path", "legacy", "additional_special_tokens"?, "add_bos_token"?}}, "cases": [{"tokenizer",
"model_max_length", "template", "source", "has_image", "multimodal": null | {"mm_use_im_start_end"}}]}.
Answer: {"versions", "results": [{"input_ids", "labels", "mismatch", "source", "error"}]}, in case order.
"""

from __future__ import annotations

import contextlib
import copy
import io
from types import SimpleNamespace

from _common import main, upstream_llava, versions


def handle(request: dict) -> dict:
    upstream_llava()
    import transformers

    from llava import conversation as conversation_lib
    from llava.train import train as upstream_train

    loaded = {}

    def tokenizer_for(name: str, max_length):
        key = (name, max_length)
        if key not in loaded:
            spec = request["tokenizers"][name]
            kwargs = dict(use_fast=False, padding_side="right", legacy=spec["legacy"])
            if "add_bos_token" in spec:
                kwargs["add_bos_token"] = spec["add_bos_token"]
            if max_length is not None:
                kwargs["model_max_length"] = max_length
            tokenizer = transformers.AutoTokenizer.from_pretrained(spec["path"], **kwargs)
            if spec.get("additional_special_tokens"):
                tokenizer.add_special_tokens({"additional_special_tokens": spec["additional_special_tokens"]})
            tokenizer.pad_token = tokenizer.unk_token  # as upstream's train() for every template but v0
            loaded[key] = tokenizer
        return loaded[key]

    results = []
    for case in request["cases"]:
        tokenizer = tokenizer_for(case["tokenizer"], case.get("model_max_length"))
        conversation_lib.default_conversation = conversation_lib.conv_templates[case["template"]]
        sources = [copy.deepcopy(case["source"])]
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                if case.get("multimodal") is not None:
                    data_args = SimpleNamespace(is_multimodal=True, **case["multimodal"])
                    sources = upstream_train.preprocess_multimodal(sources, data_args)
                rewritten = copy.deepcopy(sources[0])  # preprocess rewrites turns in place for plain and '###'
                output = upstream_train.preprocess(sources, tokenizer, has_image=case["has_image"])
        except Exception as error:  # upstream asserts on some inputs: report it for the test to judge
            results.append(dict(error=f"{type(error).__name__}: {error}"))
            continue
        results.append(
            dict(
                input_ids=[int(token) for token in output["input_ids"][0].tolist()],
                labels=[int(token) for token in output["labels"][0].tolist()],
                mismatch="tokenization mismatch" in printed.getvalue(),
                source=rewritten,
                error=None,
            )
        )
    return dict(versions=versions(), results=results)


if __name__ == "__main__":
    main(handle)
