"""Export to transformers' own Llava / LlavaNext layout (llava-hf), which vLLM, SGLang, TGI and transformers load.

- :mod:`llava.export.convert`: the steps and the command line of ``scripts/convert_to_hf.py``;
- :mod:`llava.export.target`: which class a run exports to, what is refused, and ``config.json``;
- :mod:`llava.export.keys`: our parameter names -> llava-hf's;
- :mod:`llava.export.tokenizer`: ``<image>`` / ``<pad>``, with our ids;
- :mod:`llava.export.chat_template`: a Jinja template rendering our ``Conversation`` prompts;
- :mod:`llava.export.processor`: the image processor and processor configs;
- :mod:`llava.export.shards`: safetensors shards written one tensor at a time;
- :mod:`llava.export.vllm_check`: does vLLM serving an export answer as we do (``scripts/check_vllm_export.py``).
"""
