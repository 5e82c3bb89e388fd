"""llava.utils' serving helpers under upstream's names (issue 16)."""

import asyncio
import logging
import sys

import pytest

from llava import utils


def test_moderation_without_key_logs_once_and_lets_text_through(monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(utils, "_moderation_notice", type(utils._moderation_notice)())
    with caplog.at_level(logging.WARNING, logger="llava.utils"):
        assert [utils.violates_moderation(t) for t in ("a picture of a cat", "anything\nelse")] == [False, False]
    assert [r.getMessage() for r in caplog.records] == ["OPENAI_API_KEY is not set: content moderation is off."]


def test_stream_to_logger_sends_whole_lines(caplog):
    stream = utils.StreamToLogger(logging.getLogger("t_stream"), logging.INFO)
    with caplog.at_level(logging.INFO, logger="t_stream"):
        stream.write("one\ntw")
        stream.write("o\nthree")
        assert [r.getMessage() for r in caplog.records] == ["one", "two"]
        stream.flush()
    assert [r.getMessage() for r in caplog.records] == ["one", "two", "three"]


def test_build_logger_writes_its_file(monkeypatch, tmp_path):
    monkeypatch.setattr(utils, "LOGDIR", str(tmp_path))
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    logger = utils.build_logger("t_build", "t_build.log", redirect_std=False)
    logger.info("hello %d", 7)
    handler = utils._file_handlers.pop(str(tmp_path / "t_build.log"))
    logging.getLogger().removeHandler(handler)
    handler.close()
    (line,) = (tmp_path / "t_build.log").read_text().splitlines()
    assert line.endswith(" | INFO | t_build | hello 7")


@pytest.mark.parametrize(("value", "expected"), [(None, "None"), (2, "Semaphore(value=2, locked=False)")])
def test_pretty_print_semaphore(value, expected):
    assert utils.pretty_print_semaphore(None if value is None else asyncio.Semaphore(value)) == expected


def test_serving_messages_are_upstreams():
    assert utils.server_error_msg == "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
    assert utils.moderation_msg == "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."
