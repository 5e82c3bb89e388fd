"""Serving entry points (upstream's `llava/serve`): `cli` chats about one image in a terminal; `controller`,
`model_worker` (one model, or several LoRA runs of one base) and `gradio_web_server` are upstream's three serving
processes, with `register_worker` and `test_message` as their tools."""
