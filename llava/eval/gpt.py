"""The chat API upstream's GPT-based scorers call, on today's ``openai`` client (``pip install -e '.[eval]'``).

Upstream's scripts call ``openai.ChatCompletion.create``, which the ``openai`` package removed in 1.0, and retry
every error forever. Here they share one client that takes its key from ``OPENAI_API_KEY`` and its endpoint from
``--api-base`` (default: ``OPENAI_BASE_URL``, or the older ``OPENAI_API_BASE``), so the same scripts score against
any OpenAI-compatible server (a local vLLM: ``--api-base http://localhost:8000/v1 --model <served name>``).
Rate limits, timeouts, lost connections and server errors are retried a few times; any other error stops the run
with the server's message (docs/upstream_differences.md #24).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
API_BASE_ENVS = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
RETRIES = 5
REVIEWER_SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."


class MissingAPIKeyError(RuntimeError):
    """No API key in the environment."""


def add_api_arguments(parser: argparse.ArgumentParser, model: str) -> None:
    """``--api-base`` and ``--model`` (upstream's model as the default)."""
    parser.add_argument(
        "--api-base", type=str, default=None,
        help=f"OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: ${API_BASE_ENVS[0]}, then "
        f"${API_BASE_ENVS[1]}, then OpenAI's); the key comes from ${API_KEY_ENV}",
    )  # fmt: skip
    parser.add_argument("--model", type=str, default=model, help=f"model to ask (upstream: {model})")


def make_client(api_base: str | None = None):
    """An ``openai.OpenAI`` client for ``api_base`` (or the environment's endpoint) with the environment's key.

    Raises:
        MissingAPIKeyError: ``OPENAI_API_KEY`` is not set.
        ModuleNotFoundError: the ``openai`` package is not installed.
    """
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise MissingAPIKeyError(
            f"set {API_KEY_ENV} to your API key (for a local OpenAI-compatible server that checks none, any value, "
            f"e.g. {API_KEY_ENV}=none) and --api-base to the server's URL"
        )
    try:
        from openai import OpenAI
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the GPT-based scorers need the openai package: pip install -e '.[eval]'") from error
    base = api_base or next((os.environ[name] for name in API_BASE_ENVS if os.environ.get(name)), None)
    # Retries are ours (bounded, paced by --request-interval), not the client's own backoff on top.
    return OpenAI(api_key=key, base_url=base, max_retries=0)


def chat(
    client, model: str, messages: list[dict[str, str]], *, retry_seconds: float, retries: int = RETRIES, **options: Any
) -> str:
    """The first choice's text for ``messages``; transient failures are retried ``retries`` times,
    ``retry_seconds`` apart."""
    import openai

    transient = (openai.RateLimitError, openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError)
    for attempt in range(retries + 1):
        try:
            response = client.chat.completions.create(model=model, messages=messages, **options)
            return response.choices[0].message.content
        except transient as error:
            if attempt == retries:
                raise
            logger.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt + 1, retries + 1, retry_seconds)
            time.sleep(retry_seconds)
    raise AssertionError("unreachable")


def review(client, model: str, content: str, max_tokens: int, retry_seconds: float) -> str:
    """The reviewer's verdict on ``content`` (upstream's ``get_eval``: its system prompt, temperature 0.2)."""
    messages = [{"role": "system", "content": REVIEWER_SYSTEM_PROMPT}, {"role": "user", "content": content}]
    return chat(client, model, messages, retry_seconds=retry_seconds, temperature=0.2, max_tokens=max_tokens)
