"""Tiny offline stand-ins for LLaVA-1.5's parts, built by our own code (no model hub), for tests and the demo.

Tests and the demo need a Llama-2-style tokenizer, a CLIP vision tower, a Vicuna-like language model, a LLaVA
checkpoint that joins them, a pretrained projector and a dataset in LLaVA's JSON format. Everything is built from a
seed: the same seed gives the same bytes, so a build can be cached and compared.

- :mod:`llava.testing.sizes`: the shapes;
- :mod:`llava.testing.models`: tokenizer, tower, LM, projector and LLaVA checkpoint;
- :mod:`llava.testing.data`: images and conversations;
- :mod:`llava.testing.build`: everything at once (:func:`build_all`);
- :mod:`llava.testing.cli`: the ``llava-tiny`` command (the build, and a hub cache on request);
- :mod:`llava.testing.hub`: the same models in a Hugging Face cache under the released repo ids;
- :mod:`llava.testing.families`: the Mistral family (a Mistral-Instruct-like LM, a LLaVA-1.6-Mistral release).
"""

from llava.testing.build import TinyPaths, build_all
from llava.testing.hub import build_hub_cache

__all__ = ["TinyPaths", "build_all", "build_hub_cache"]
