"""The web server's flags and page layout (built, not launched; the browser test in test_web_ui.py launches it)."""

from __future__ import annotations

import gradio as gr
import pytest

from llava.serve import gradio_web_server as web


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"host": "0.0.0.0", "port": None, "controller_url": "http://localhost:21001", "concurrency_count": 16,
              "model_list_mode": "once", "share": False, "moderate": False, "embed": False}),
        (["--controller", "http://localhost:10000", "--model-list-mode", "reload", "--port", "7860", "--embed"],
         {"controller_url": "http://localhost:10000", "model_list_mode": "reload", "port": 7860, "embed": True}),
        (["--controller-url", "http://c:1", "--concurrency-count", "2", "--share", "--moderate"],
         {"controller_url": "http://c:1", "concurrency_count": 2, "share": True, "moderate": True}),
    ],
)  # fmt: skip
def test_upstreams_flags(argv, expected):
    args = vars(web.parse_args(argv))
    assert {name: args[name] for name in expected} == expected


def test_unknown_model_list_mode_is_refused():
    with pytest.raises(SystemExit):
        web.parse_args(["--model-list-mode", "sometimes"])
    with pytest.raises(ValueError, match="Unknown model list mode: sometimes"):
        web.build_demo(False, model_list_mode="sometimes", models=[])


def _components(demo) -> list:
    return list(demo.blocks.values())


def test_the_page_has_upstreams_controls():
    demo = web.build_demo(False, models=["llava-v1.5-a", "llava-v1.5-b"])
    components = _components(demo)
    [dropdown] = [c for c in components if isinstance(c, gr.Dropdown)]
    assert [choice[0] for choice in dropdown.choices] == ["llava-v1.5-a", "llava-v1.5-b"]
    assert dropdown.value == "llava-v1.5-a"
    [radio] = [c for c in components if isinstance(c, gr.Radio)]
    assert [choice[0] for choice in radio.choices] == ["Crop", "Resize", "Pad", "Default"] and radio.value == "Default"
    sliders = {c.label: (c.minimum, c.maximum, c.value, c.step) for c in components if isinstance(c, gr.Slider)}
    assert sliders == {
        "Temperature": (0.0, 1.0, 0.2, 0.1),
        "Top P": (0.0, 1.0, 0.7, 0.1),
        "Max output tokens": (0, 1024, 512, 64),
    }
    buttons = [c.value.split()[-1] for c in components if isinstance(c, gr.Button)]
    assert sorted(buttons) == ["Clear", "Downvote", "Flag", "Regenerate", "Send", "Upvote"]
    [image] = [c for c in components if isinstance(c, gr.Image)]
    assert image.type == "pil"
    [examples] = [c for c in components if isinstance(c, gr.Dataset)]
    assert len(examples.samples) == len(web.EXAMPLES)
    for name, _ in web.EXAMPLES:
        assert (web.EXAMPLES_DIR / name).is_file()
    assert sum(isinstance(c, gr.Markdown) for c in components) == 3  # title, terms of use, license
    embedded = _components(web.build_demo(True, models=[]))
    assert not any(isinstance(c, gr.Markdown) for c in embedded)


def test_files_are_served_from_the_examples_folder_only():
    kwargs = web.launch_kwargs(web.parse_args(["--host", "127.0.0.1", "--port", "7861"]))
    assert kwargs["allowed_paths"] == [str(web.EXAMPLES_DIR)]
    assert (kwargs["server_name"], kwargs["server_port"], kwargs["share"]) == ("127.0.0.1", 7861, False)


@pytest.mark.parametrize(
    ("query", "selected"), [({"model": "llava-v1.5-b"}, "llava-v1.5-b"), ({"model": "other"}, None), ({}, None)]
)
def test_once_mode_selects_the_model_named_in_the_address(query, selected):
    from types import SimpleNamespace

    ui = web.WebUI("http://controller.invalid", ["llava-v1.5-a", "llava-v1.5-b"])
    state, dropdown = ui.load_demo(SimpleNamespace(query_params=query, client=None))
    assert state.messages == [] and state.roles == ("USER", "ASSISTANT")
    expected = {"choices": ui.models, "value": selected, "visible": True} if selected else {"visible": True}
    assert dropdown.constructor_args == expected  # what the update sets
