"""The web UI: ``python -m llava.serve.gradio_web_server --controller http://localhost:10000 --model-list-mode reload``.

Upstream's flags, layout and behaviour on gradio 6: a model dropdown filled from the controller's ``/list_models``
(on every page load with ``--model-list-mode reload``), an image box, the chat with the answer streamed from the
model worker as it is generated, regenerate / clear, the sampling sliders, upvote / downvote / flag written to the
conversation log, and example images. What a message does to the conversation and what is sent to the worker is
``llava.serve.web_chat``; this module is the page and its event wiring. The differences gradio 6 forces (messages
chat format, theme and css given at launch, URL parameters read from the request) are
docs/upstream_differences.md #31.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import gradio as gr
import requests

from llava.constants import LOGDIR
from llava.serve import web_chat
from llava.utils import build_logger, moderation_msg, server_error_msg, violates_moderation

LOGGER_NAME = "gradio_web_server"  # upstream's, in every log line
logger = logging.getLogger(LOGGER_NAME)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Our own example images (coloured shapes like the demo's training data), with a question each.
EXAMPLES = (
    ("red_square.png", "What color is the shape in the image?"),
    ("blue_circle.png", "What shape is in the image?"),
)

headers = web_chat.HEADERS
priority = web_chat.PRIORITY

# Returned from a handler, a component is an update of the listed properties only.
no_change_btn = gr.Button()
enable_btn = gr.Button(interactive=True)
disable_btn = gr.Button(interactive=False)
BUTTON_COUNT = 5  # upvote, downvote, flag, regenerate, clear

title_markdown = """
# 🌋 LLaVA: Large Language and Vision Assistant
[[Project Page](https://llava-vl.github.io)] [[Code](https://github.com/haotian-liu/LLaVA)] | 📚 [[LLaVA](https://arxiv.org/abs/2304.08485)] [[LLaVA-v1.5](https://arxiv.org/abs/2310.03744)]
"""

tos_markdown = """
### Terms of use
This demo serves research models that may write wrong or offensive text; do not use it for anything illegal or
harmful. Conversations, votes and flags are logged on the server. Please press "Flag" on an inappropriate answer.
"""

learn_more_markdown = """
### License
The models served here carry the licenses of their base models and training data.
"""

block_css = """
#buttons button {
    min-width: min(120px,100%);
}
"""


def get_conv_log_filename() -> str:
    return web_chat.conv_log_path(LOGDIR)


def get_model_list(controller_url: str) -> list[str]:
    """The controller's models after it refreshed its workers, in upstream's order."""
    response = requests.post(controller_url + "/refresh_all_workers", timeout=web_chat.STREAM_TIMEOUT_S)
    if response.status_code != 200:
        raise RuntimeError(
            f"the controller at {controller_url} answered {response.status_code} to /refresh_all_workers"
        )
    response = requests.post(controller_url + "/list_models", timeout=web_chat.STREAM_TIMEOUT_S)
    models = web_chat.sort_models(response.json()["models"])
    logger.info("Models: %s", models)
    return models


def get_worker_address(controller_url: str, model_name: str) -> str:
    """The address of a worker serving ``model_name``, "" when none does."""
    response = requests.post(
        controller_url + "/get_worker_address", json={"model": model_name}, timeout=web_chat.STREAM_TIMEOUT_S
    )
    return response.json()["address"]


def _client(request: gr.Request) -> str:
    return request.client.host if request is not None and request.client is not None else ""


def _outputs(state, text: str, buttons) -> tuple:
    """(state, chatbot, textbox, imagebox) followed by the five buttons."""
    return (state, web_chat.chatbot_messages(state), text, None) + (buttons,) * BUTTON_COUNT


def vote_last_response(state, vote_type: str, model_selector: str, request: gr.Request) -> None:
    web_chat.append_log(web_chat.vote_record(vote_type, state, model_selector, _client(request)), LOGDIR)


def upvote_last_response(state, model_selector: str, request: gr.Request):
    logger.info("upvote. ip: %s", _client(request))
    vote_last_response(state, "upvote", model_selector, request)
    return ("",) + (disable_btn,) * 3


def downvote_last_response(state, model_selector: str, request: gr.Request):
    logger.info("downvote. ip: %s", _client(request))
    vote_last_response(state, "downvote", model_selector, request)
    return ("",) + (disable_btn,) * 3


def flag_last_response(state, model_selector: str, request: gr.Request):
    logger.info("flag. ip: %s", _client(request))
    vote_last_response(state, "flag", model_selector, request)
    return ("",) + (disable_btn,) * 3


def regenerate(state, image_process_mode: str, request: gr.Request):
    logger.info("regenerate. ip: %s", _client(request))
    return _outputs(web_chat.regenerate(state, image_process_mode), "", disable_btn)


def clear_history(request: gr.Request):
    logger.info("clear_history. ip: %s", _client(request))
    return _outputs(web_chat.new_conversation(), "", disable_btn)


class WebUI:
    """The handlers that need the server's settings (upstream's read its command line's global ``args``)."""

    def __init__(self, controller_url: str, models: list[str], moderate: bool = False):
        self.controller_url = controller_url
        self.models = models
        self.moderate = moderate

    def load_demo(self, request: gr.Request):
        """``--model-list-mode once``: the list fetched at start; ``?model=NAME`` in the page's URL selects one."""
        params = dict(request.query_params) if request is not None else {}
        logger.info("load_demo. ip: %s. params: %s", _client(request), params)
        dropdown = gr.Dropdown(visible=True)
        if params.get("model") in self.models:
            dropdown = gr.Dropdown(choices=self.models, value=params["model"], visible=True)
        return web_chat.new_conversation(), dropdown

    def load_demo_refresh_model_list(self, request: gr.Request):
        """``--model-list-mode reload``: the controller asked again on every page load."""
        logger.info("load_demo. ip: %s", _client(request))
        models = get_model_list(self.controller_url)
        dropdown = gr.Dropdown(choices=models, value=models[0] if models else None)
        return web_chat.new_conversation(), dropdown

    def add_text(self, state, text: str, image, image_process_mode: str, request: gr.Request):
        logger.info("add_text. ip: %s. len: %d", _client(request), len(text))
        if state is None:
            state = web_chat.new_conversation()
        if not text and image is None:
            state.skip_next = True
            return _outputs(state, "", no_change_btn)
        if self.moderate and violates_moderation(text):
            state.skip_next = True
            return _outputs(state, moderation_msg, no_change_btn)
        return _outputs(web_chat.add_text(state, text, image, image_process_mode), "", disable_btn)

    def http_bot(self, state, model_selector: str, temperature, top_p, max_new_tokens, request: gr.Request):
        """Ask the model's worker and stream its answer into the chat (a generator: gradio redraws each yield)."""
        logger.info("http_bot. ip: %s", _client(request))
        started = time.time()
        if state is None or state.skip_next:
            yield (state, web_chat.chatbot_messages(state) if state else []) + (no_change_btn,) * BUTTON_COUNT
            return
        failed = (disable_btn,) * 3 + (enable_btn,) * 2  # regenerate and clear stay usable

        def show(text: str, buttons: tuple) -> tuple:
            state.messages[-1][-1] = text
            return (state, web_chat.chatbot_messages(state)) + buttons

        try:
            state = web_chat.for_model(state, model_selector)
        except ValueError as error:
            yield show(str(error), failed)
            return
        try:
            worker_address = get_worker_address(self.controller_url, model_selector)
        except requests.exceptions.RequestException as error:
            logger.warning("the controller at %s failed: %s", self.controller_url, error)
            worker_address = ""
        logger.info("model_name: %s, worker_addr: %s", model_selector, worker_address)
        if worker_address == "":
            yield show(server_error_msg, failed)
            return

        worker_request = web_chat.worker_request(state, model_selector, temperature, top_p, max_new_tokens)
        web_chat.save_images(state, worker_request.image_hashes, LOGDIR)
        logged = dict(worker_request.payload, images=f"List of {len(worker_request.image_hashes)} images")
        logger.info("==== request ====\n%s", logged)

        yield show(web_chat.CURSOR, (disable_btn,) * BUTTON_COUNT)
        answer = ""
        try:
            for chunk in web_chat.stream_answer(worker_address, worker_request):
                if chunk.error_code != 0:
                    yield show(f"{chunk.text} (error_code: {chunk.error_code})", failed)
                    return
                answer = chunk.text
                yield show(answer + web_chat.CURSOR, (disable_btn,) * BUTTON_COUNT)
                time.sleep(web_chat.CHUNK_PAUSE_S)
        except requests.exceptions.RequestException as error:
            logger.warning("the worker at %s failed: %s", worker_address, error)
            yield show(server_error_msg, failed)
            return
        yield show(answer, (enable_btn,) * BUTTON_COUNT)

        finished = time.time()
        logger.info("%s", answer)
        record = {
            "tstamp": round(finished, 4),
            "type": "chat",
            "model": model_selector,
            "start": round(started, 4),
            "finish": round(finished, 4),
            "state": state.dict(),
            "images": worker_request.image_hashes,
            "ip": _client(request),
        }
        web_chat.append_log(record, LOGDIR)


def build_demo(
    embed_mode: bool,
    cur_dir: str | None = None,
    concurrency_count: int = 10,
    *,
    controller_url: str = "http://localhost:21001",
    model_list_mode: str = "once",
    moderate: bool = False,
    models: list[str] | None = None,
) -> gr.Blocks:
    """Upstream's page. ``models`` is the list for ``once`` mode (asked from the controller when not given)."""
    if model_list_mode not in ("once", "reload"):
        raise ValueError(f"Unknown model list mode: {model_list_mode} (once or reload)")
    if models is None:
        models = get_model_list(controller_url)
    ui = WebUI(controller_url, models, moderate)
    examples_dir = Path(cur_dir) / "examples" if cur_dir is not None else EXAMPLES_DIR

    textbox = gr.Textbox(show_label=False, placeholder="Enter text and press ENTER", container=False)
    with gr.Blocks(title="LLaVA") as demo:
        state = gr.State()
        if not embed_mode:
            gr.Markdown(title_markdown)

        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row(elem_id="model_selector_row"):
                    model_selector = gr.Dropdown(
                        choices=models,
                        value=models[0] if models else None,
                        interactive=True,
                        show_label=False,
                        container=False,
                        elem_id="model_selector",
                    )
                imagebox = gr.Image(type="pil", elem_id="imagebox")
                image_process_mode = gr.Radio(
                    list(web_chat.PREPROCESS_MODES),
                    value=web_chat.DEFAULT_PREPROCESS_MODE,
                    label="Preprocess for non-square image",
                    visible=False,
                )
                gr.Examples(
                    examples=[[str(examples_dir / name), question] for name, question in EXAMPLES],
                    inputs=[imagebox, textbox],
                )
                with gr.Accordion("Parameters", open=False):
                    temperature = gr.Slider(
                        minimum=0.0, maximum=1.0, value=0.2, step=0.1, interactive=True, label="Temperature"
                    )
                    top_p = gr.Slider(minimum=0.0, maximum=1.0, value=0.7, step=0.1, interactive=True, label="Top P")
                    max_output_tokens = gr.Slider(
                        minimum=0, maximum=1024, value=512, step=64, interactive=True, label="Max output tokens"
                    )

            with gr.Column(scale=8):
                chatbot = gr.Chatbot(elem_id="chatbot", label="LLaVA Chatbot", height=650, layout="panel")
                with gr.Row():
                    with gr.Column(scale=8):
                        textbox.render()
                    with gr.Column(scale=1, min_width=50):
                        submit_btn = gr.Button(value="Send", variant="primary")
                with gr.Row(elem_id="buttons"):
                    upvote_btn = gr.Button(value="👍  Upvote", interactive=False)
                    downvote_btn = gr.Button(value="👎  Downvote", interactive=False)
                    flag_btn = gr.Button(value="⚠️  Flag", interactive=False)
                    regenerate_btn = gr.Button(value="🔄  Regenerate", interactive=False)
                    clear_btn = gr.Button(value="🗑️  Clear", interactive=False)

        if not embed_mode:
            gr.Markdown(tos_markdown)
            gr.Markdown(learn_more_markdown)

        buttons = [upvote_btn, downvote_btn, flag_btn, regenerate_btn, clear_btn]
        vote_outputs = [textbox, upvote_btn, downvote_btn, flag_btn]
        chat_outputs = [state, chatbot, textbox, imagebox] + buttons
        bot_inputs = [state, model_selector, temperature, top_p, max_output_tokens]
        bot_outputs = [state, chatbot] + buttons
        message_inputs = [state, textbox, imagebox, image_process_mode]

        upvote_btn.click(upvote_last_response, [state, model_selector], vote_outputs)
        downvote_btn.click(downvote_last_response, [state, model_selector], vote_outputs)
        flag_btn.click(flag_last_response, [state, model_selector], vote_outputs)
        regenerate_btn.click(regenerate, [state, image_process_mode], chat_outputs).then(
            ui.http_bot, bot_inputs, bot_outputs, concurrency_limit=concurrency_count
        )
        clear_btn.click(clear_history, None, chat_outputs, queue=False)
        textbox.submit(ui.add_text, message_inputs, chat_outputs, queue=False).then(
            ui.http_bot, bot_inputs, bot_outputs, concurrency_limit=concurrency_count
        )
        submit_btn.click(ui.add_text, message_inputs, chat_outputs).then(
            ui.http_bot, bot_inputs, bot_outputs, concurrency_limit=concurrency_count
        )
        if model_list_mode == "once":
            demo.load(ui.load_demo, None, [state, model_selector])
        else:
            demo.load(ui.load_demo_refresh_model_list, None, [state, model_selector], queue=False)
    return demo


def launch_kwargs(args: argparse.Namespace) -> dict:
    """gradio 6 takes the theme and css at launch; files are served from the examples folder and gradio's upload
    and cache folders only (its file route refuses any other path)."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": args.share,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "theme": gr.themes.Default(),
        "css": block_css,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=str, default="0.0.0.0")
    parser.add_argument("--port", type=int)
    parser.add_argument("--controller-url", type=str, default="http://localhost:21001")
    parser.add_argument("--concurrency-count", type=int, default=16)
    parser.add_argument("--model-list-mode", type=str, default="once", choices=["once", "reload"])
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--moderate", action="store_true")
    parser.add_argument("--embed", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    build_logger(LOGGER_NAME, f"{LOGGER_NAME}.log")
    logger.info("args: %s", args)
    demo = build_demo(
        args.embed,
        concurrency_count=args.concurrency_count,
        controller_url=args.controller_url,
        model_list_mode=args.model_list_mode,
        moderate=args.moderate,
    )
    demo.queue(api_open=False).launch(**launch_kwargs(args))


if __name__ == "__main__":
    main()
