"""The web UI as a person uses it: upstream's three processes on 127.0.0.1 (controller, one model worker serving two
tiny LoRA runs of one base, gradio web server) and the page in headless Debian chromium driven by Playwright.

`make browser` installs chromium (`make test` runs it first); Playwright's own browser download is never used.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image
from serve_helpers import (
    HOST,
    RUN_NAMES,
    STARTUP_TIMEOUT_S,
    Server,
    start_controller,
    start_worker,
    train_runs,
    wait_for,
)
from serve_helpers import servers as running

from llava.launch import REPO_ROOT, free_port
from llava.serve import web_chat

pytestmark = pytest.mark.dist

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "serve"
EXAMPLE_IMAGE = REPO_ROOT / "llava" / "serve" / "examples" / "red_square.png"
QUESTION = "What color is the shape in the image?"
MAX_OUTPUT_TOKENS = 64  # a step of the page's slider
TOP_P = 0.7  # the page's default
ANSWER_TIMEOUT_S = 180


@dataclass
class Serving:
    controller: str
    worker: str
    web: str
    cwd: Path


@pytest.fixture(scope="module")
def serving(tiny, tmp_path_factory):
    """The two runs (names with "llava" and "v1": the page prompts them with llava_v1) in one worker."""
    root = tmp_path_factory.mktemp("web_ui")
    runs = train_runs(tiny, root / "runs")
    cwd = root / "servers"
    cwd.mkdir()
    started = [start_controller(cwd)]
    try:
        controller = started[0][1]
        started.append(start_worker(cwd, controller, runs, tiny.llm))
        wait_for(
            lambda: requests.post(controller + "/list_models", timeout=5).json()["models"] == list(RUN_NAMES),
            STARTUP_TIMEOUT_S,
            "both runs listed by the controller",
        )
        port = free_port()
        web = f"http://{HOST}:{port}"
        args = ["--host", HOST, "--port", port, "--controller", controller, "--model-list-mode", "reload"]
        # The web server's own upload folder, and no usage report from gradio.
        env = {"GRADIO_TEMP_DIR": str(root / "uploads"), "GRADIO_ANALYTICS_ENABLED": "False"}
        server = Server("gradio_web_server", args, cwd, "gradio_web_server-out", env=env)
        started.append((server, web))
        wait_for(lambda: requests.get(web, timeout=5).status_code == 200, STARTUP_TIMEOUT_S, "web server start", server)
    except BaseException:
        for server, _ in reversed(started):
            server.stop()
        raise
    with running(*started) as (controller, worker, web):
        yield Serving(controller, worker, web, cwd)


def _worker_answer(serving: Serving, model_name: str) -> str:
    """What the worker streams for the page's request, asked directly (same image, question and sampling), as the
    chat holds it: gradio's Chatbot stores each text message through ``inspect.cleandoc`` (tabs expanded, common
    indentation and blank edge lines removed), and the tiny runs' answers hold tabs."""
    image = Image.open(EXAMPLE_IMAGE).convert("RGB")
    state = web_chat.add_text(web_chat.new_conversation(), QUESTION, image, web_chat.DEFAULT_PREPROCESS_MODE)
    state = web_chat.for_model(state, model_name)
    request = web_chat.worker_request(state, model_name, 0.0, TOP_P, MAX_OUTPUT_TOKENS)
    chunks = list(web_chat.stream_answer(serving.worker, request))
    assert chunks and all(chunk.error_code == 0 for chunk in chunks), chunks[-1:]
    return inspect.cleandoc(chunks[-1].text)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (Debian's chromium; `make test` runs it first)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def _open_page(browser, serving: Serving):
    """The page, its model list loaded (the first run selected), set to greedy decoding and short answers."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(serving.web)
    page.locator("#model_selector input").wait_for(timeout=60_000)
    page.wait_for_function("name => document.querySelector('#model_selector input').value === name", arg=RUN_NAMES[0])
    page.get_by_text("Parameters").click()
    for label, value in (("Temperature", "0"), ("Max output tokens", str(MAX_OUTPUT_TOKENS))):
        number = page.get_by_label(f"number input for {label}")
        number.fill(value)
        number.press("Tab")
    return page


def _button(page, label: str):
    """One of the buttons under the chat (the chat has its own clear icon)."""
    return page.locator("#buttons button", has_text=label)


BOT_LABEL = "bot's message: "


@dataclass
class Answer:
    shown: str  # the text on the page, rendered as markdown (whitespace runs collapse)
    text: str  # the message's accessible label: the answer's own text, exactly
    seen: set[str]  # the texts shown while it streamed


def _read_answer(page) -> Answer:
    """The last answer once its stream has ended (the buttons come back then)."""
    answer = page.locator("#chatbot [data-testid=bot]").last
    answer.wait_for(timeout=ANSWER_TIMEOUT_S * 1000)
    seen = set()
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    regenerate = _button(page, "Regenerate")
    while not regenerate.is_enabled():
        seen.add(answer.inner_text().strip())
        assert time.monotonic() < deadline, f"no finished answer after {ANSWER_TIMEOUT_S} s: {seen}"
        time.sleep(0.05)
    label = answer.get_attribute("aria-label")
    assert label.startswith(BOT_LABEL), label
    return Answer(answer.inner_text().strip(), label.removeprefix(BOT_LABEL), seen)


def _ask_about_the_image(page) -> Answer:
    page.locator("#imagebox input[type=file]").set_input_files(str(EXAMPLE_IMAGE))
    page.locator("#imagebox img").wait_for(timeout=30_000)  # the upload is shown
    textbox = page.get_by_placeholder("Enter text and press ENTER")
    textbox.fill(QUESTION)
    textbox.press("Enter")
    return _read_answer(page)


def test_a_person_asks_about_an_image_and_reads_the_answer(serving, browser):
    page = _open_page(browser, serving)
    page.locator("#model_selector input").click()
    options = page.get_by_role("option")
    options.first.wait_for(timeout=30_000)
    names = [text.split("\n")[-1].strip() for text in options.all_inner_texts()]  # after the selected one's check mark
    assert names == list(RUN_NAMES)  # each run its own model
    page.keyboard.press("Escape")

    answer = _ask_about_the_image(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_ui.png"), full_page=True)
    user_turn = page.locator("#chatbot [data-testid=user]").last
    assert QUESTION in user_turn.inner_text() and user_turn.locator("img").count() == 1
    expected = _worker_answer(serving, RUN_NAMES[0])
    assert answer.shown and not answer.shown.endswith(web_chat.CURSOR) and answer.text == expected
    assert any(text.endswith(web_chat.CURSOR) for text in answer.seen), answer.seen  # shown while generated

    page.locator("#model_selector input").click()  # the other run, a new chat
    options.filter(has_text=RUN_NAMES[1]).click()
    _button(page, "Clear").click()
    page.locator("#chatbot [data-testid=user]").wait_for(state="detached", timeout=30_000)
    other = _ask_about_the_image(page).text
    assert other == _worker_answer(serving, RUN_NAMES[1]) and other != expected


def _log_records(serving: Serving, record_type: str) -> list[dict]:
    log = Path(serving.cwd) / Path(web_chat.conv_log_path()).name
    lines = log.read_text().splitlines() if log.exists() else []
    return [record for record in map(json.loads, lines) if record["type"] == record_type]


def test_example_send_regenerate_vote_and_clear(serving, browser):
    from playwright.sync_api import expect

    page = _open_page(browser, serving)
    page.get_by_text(QUESTION).first.click()  # the red square's example fills the image box and the question
    page.locator("#imagebox img").wait_for(timeout=30_000)
    assert page.get_by_placeholder("Enter text and press ENTER").input_value() == QUESTION
    page.get_by_role("button", name="Send").click()
    first = _read_answer(page).text
    assert first == _worker_answer(serving, RUN_NAMES[0])  # the example is the same image as the file uploaded

    regenerate = _button(page, "Regenerate")
    regenerate.click()
    expect(regenerate).to_be_disabled()  # asked again
    again = _read_answer(page).text
    assert again == first and page.locator("#chatbot [data-testid=bot]").count() == 1  # greedy: the same answer

    upvotes = len(_log_records(serving, "upvote"))
    _button(page, "Upvote").click()
    deadline = time.monotonic() + 30
    while len(_log_records(serving, "upvote")) == upvotes and time.monotonic() < deadline:
        time.sleep(0.2)
    vote = _log_records(serving, "upvote")[-1]
    role, logged = vote["state"]["messages"][-1]  # the worker's own text (the page's is cleandoc'd)
    assert vote["model"] == RUN_NAMES[0] and role == "ASSISTANT" and inspect.cleandoc(logged) == first
    expect(_button(page, "Upvote")).to_be_disabled()
    assert _log_records(serving, "chat")[-1]["model"] == RUN_NAMES[0]

    _button(page, "Clear").click()
    page.locator("#chatbot [data-testid=user]").wait_for(state="detached", timeout=30_000)
    assert page.locator("#chatbot [data-testid=bot]").count() == 0


def test_a_worker_error_shows_in_the_chat_and_the_next_question_is_answered(serving, browser):
    from playwright.sync_api import expect

    page = _open_page(browser, serving)
    textbox = page.get_by_placeholder("Enter text and press ENTER")
    textbox.fill("word " * 300)  # within the page's 1536 characters, over the tiny model's 256 tokens
    textbox.press("Enter")
    error = _read_answer(page).text
    assert "over the 256 this model takes" in error and error.endswith("(error_code: 1)")
    expect(_button(page, "Upvote")).to_be_disabled()  # only Regenerate and Clear come back
    _button(page, "Clear").click()
    page.locator("#chatbot [data-testid=user]").wait_for(state="detached", timeout=30_000)
    assert _ask_about_the_image(page).text == _worker_answer(serving, RUN_NAMES[0])


def test_the_page_serves_no_file_outside_its_upload_and_example_folders(serving):
    def status(path) -> int:
        return requests.get(f"{serving.web}/gradio_api/file={path}", timeout=10).status_code

    uploaded = requests.post(
        f"{serving.web}/gradio_api/upload", files={"files": ("mine.png", EXAMPLE_IMAGE.read_bytes(), "image/png")}
    ).json()
    assert len(uploaded) == 1 and status(uploaded[0]) == 200
    assert status(EXAMPLE_IMAGE) == 200
    (serving.cwd / "secret.txt").write_text("not for the page")
    refused = [
        serving.cwd / "secret.txt",  # the server's working directory
        serving.cwd / "gradio_web_server.log",
        REPO_ROOT / "llava" / "serve" / "web_chat.py",  # beside the examples folder
        EXAMPLE_IMAGE.parent / ".." / "web_chat.py",
        "/etc/passwd",
    ]
    assert {str(path): status(path) for path in refused} == {str(path): 403 for path in refused}
