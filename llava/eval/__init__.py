"""Evaluation entry points (upstream's `llava/eval`): `run_llava` answers one question about images; `model_vqa`,
`model_vqa_loader`, `model_vqa_science` and `model_vqa_mmbench` answer benchmark question files (shared pieces in
`common`, the answers file in `answers`); `eval_pope`, `eval_textvqa` and `eval_science_qa` score answers files."""
