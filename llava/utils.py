"""Small helpers shared across the package, and upstream's serving helpers under its names (`build_logger`,
`StreamToLogger`, `server_error_msg`, `moderation_msg`, `violates_moderation`, `pretty_print_semaphore`,
`disable_torch_init`)."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import platform
import re
import sys
import threading
from collections.abc import Iterator

from llava.constants import LOGDIR

server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."

_LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
_LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_MODERATION_URL = "https://api.openai.com/v1/moderations"
_MODERATION_TIMEOUT_S = 5


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning output inside the block (e.g. load reports listing weights that are
    expected to be missing or unused, which this package checks itself)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block's torch ops on one intra-op thread, as in a DataLoader worker (where PyTorch sets one already).

    For per-sample data work (one image, one batch of a few MB): such ops gain little from threads, and when the
    cores are busy (training in the same process, other jobs) each parallel region waits for a descheduled thread.
    Measured on 2 busy cores: the image transform took 9.5 ms on 2 threads against 1.0 ms on one, and the
    dataset + collator 9.2 ms against 4.4 ms per sample. Training reads data in the thread that then runs the step,
    so the setting is back before the step uses torch.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _MessageFilter(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def ignore_log_messages(logger_name: str, pattern: str) -> None:
    """Drop, for the rest of the process, the records of logger ``logger_name`` whose message matches ``pattern`` (one
    known, expected message; everything else that logger says still shows)."""
    logging.getLogger(logger_name).addFilter(_MessageFilter(pattern))


def cpu_description() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (from /proc/cpuinfo; the platform's name and no flags elsewhere).

    Benchmarks and test logs print them: DeepSpeed's and bitsandbytes' CPU kernels depend on AVX2 / AVX-512 / AMX.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, frozenset(fields.get("flags", "").split())


class StreamToLogger:
    """A file-like object whose complete lines go to ``logger`` at ``log_level`` (upstream's redirect of a server's
    stdout/stderr into its log file); anything else is read from the terminal stream it replaced."""

    def __init__(self, logger: logging.Logger, log_level: int = logging.INFO) -> None:
        self.terminal = sys.stdout
        self.logger = logger
        self.log_level = log_level
        self.linebuf = ""

    def __getattr__(self, attr: str):
        return getattr(self.terminal, attr)

    def write(self, buf: str) -> int:
        pending = self.linebuf + buf
        self.linebuf = ""
        for line in pending.splitlines(True):
            if line.endswith("\n"):
                self.logger.log(self.log_level, line.rstrip())
            else:
                self.linebuf += line
        return len(buf)

    def flush(self) -> None:
        if self.linebuf:
            self.logger.log(self.log_level, self.linebuf.rstrip())
        self.linebuf = ""


_file_handlers: dict[str, logging.Handler] = {}
_logger_lock = threading.Lock()


def build_logger(logger_name: str, logger_filename: str, redirect_std: bool = True) -> logging.Logger:
    """Upstream's server logger: INFO records formatted ``time | level | name | message`` on the console and in a
    daily-rotated ``LOGDIR/logger_filename``; with ``redirect_std`` (upstream always does) the process's
    stdout/stderr lines go to the loggers "stdout" and "stderr" as well.

    Servers call it from ``main()``, not at import (importing a module changes no global stream here).
    """
    formatter = logging.Formatter(fmt=_LOG_FORMAT, datefmt=_LOG_DATE_FORMAT)
    root = logging.getLogger()
    with _logger_lock:
        if not root.handlers:
            logging.basicConfig(level=logging.INFO)
        root.handlers[0].setFormatter(formatter)
        if redirect_std and not isinstance(sys.stdout, StreamToLogger):
            stdout_logger = logging.getLogger("stdout")
            stdout_logger.setLevel(logging.INFO)
            stderr_logger = logging.getLogger("stderr")
            stderr_logger.setLevel(logging.ERROR)
            sys.stdout = StreamToLogger(stdout_logger, logging.INFO)
            sys.stderr = StreamToLogger(stderr_logger, logging.ERROR)
        filename = os.path.join(LOGDIR, logger_filename)
        if filename not in _file_handlers:
            os.makedirs(LOGDIR, exist_ok=True)
            handler = logging.handlers.TimedRotatingFileHandler(filename, when="D", utc=True, encoding="UTF-8")
            handler.setFormatter(formatter)
            root.addHandler(handler)  # every logger propagates to the root: one file gets them all
            _file_handlers[filename] = handler
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    return logger


def disable_torch_init() -> None:
    """Skip torch's default init of Linear and LayerNorm weights (upstream's speed-up before loading a checkpoint
    that overwrites them all)."""
    import torch

    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.LayerNorm.reset_parameters = lambda self: None


_moderation_notice = threading.Event()


def violates_moderation(text: str) -> bool:
    """Whether OpenAI's moderation endpoint flags ``text``. It needs ``OPENAI_API_KEY`` and a network: without a key
    it logs once that moderation is off and lets every text through; a network or reply error lets it through too
    (as upstream does)."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        if not _moderation_notice.is_set():
            _moderation_notice.set()
            logging.getLogger(__name__).warning("OPENAI_API_KEY is not set: content moderation is off.")
        return False
    import requests

    try:
        reply = requests.post(
            _MODERATION_URL,
            headers={"Authorization": f"Bearer {key}"},
            json={"input": text.replace("\n", "")},
            timeout=_MODERATION_TIMEOUT_S,
        )
        return bool(reply.json()["results"][0]["flagged"])
    except (requests.exceptions.RequestException, ValueError, KeyError, IndexError, TypeError):
        return False


def pretty_print_semaphore(semaphore) -> str:
    """``Semaphore(value=N, locked=B)`` for an asyncio semaphore, "None" for none (the worker's status log)."""
    if semaphore is None:
        return "None"
    return f"Semaphore(value={semaphore._value}, locked={semaphore.locked()})"
