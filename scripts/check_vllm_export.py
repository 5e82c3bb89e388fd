"""GPU check: vLLM serving an export of ours gives our greedy answer (see llava/export/vllm_check.py).

    python scripts/check_vllm_export.py              # the tiny offline model, exported and served by vLLM
    python scripts/check_vllm_export.py --dry-run    # CPU, no vLLM: transformers answers in vLLM's place
    python scripts/check_vllm_export.py --model-path ./checkpoints/run --model-base lmsys/vicuna-7b-v1.5 \
        --conv-mode vicuna_v1 --image-file view.jpg
"""

from __future__ import annotations

import sys

from llava.export.vllm_check import main

if __name__ == "__main__":
    sys.exit(main())
