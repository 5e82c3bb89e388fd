"""Serving entry points (upstream's `llava/serve`): `cli` is an interactive chat about one image."""
