"""Shared fixtures: tiny models built offline by `llava.tiny`."""
