"""Export a LLaVA run or checkpoint to transformers' own Llava layout (llava-hf), which vLLM, SGLang and TGI serve.

    python scripts/convert_to_hf.py --model-path ./checkpoints/llava-v1.5-13b-lora \
        --model-base lmsys/vicuna-13b-v1.5 --save-model-path ./llava-v1.5-13b-lora-hf

The flags of scripts/merge_lora_weights.py (``--model-path``, ``--model-base``, ``--save-model-path``, ``--dtype``),
plus ``--conv-mode`` (the chat template), ``--max-shard-size`` and ``--overwrite``. See llava/export/convert.py.
"""

from __future__ import annotations

from llava.export.convert import main

if __name__ == "__main__":
    main()
