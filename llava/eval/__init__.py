"""Evaluation entry points (upstream's `llava/eval`): `run_llava` answers one question about images."""
