"""A Jinja chat template that renders exactly what :meth:`llava.conversation.Conversation.get_prompt` renders.

Servers (vLLM, SGLang, TGI) and ``processor.apply_chat_template`` take OpenAI-style messages: ``{"role": "system" |
"user" | "assistant", "content": str | [{"type": "image"}, {"type": "text", "text": ...}]}``. The template maps
them onto one of upstream's templates (``conv_templates[name]``):

- ``user`` / ``assistant`` take the template's two roles; a leading ``system`` message replaces its system line.
- A message whose content holds image parts is written as our inference code writes it: ``<image>\\n`` (once per
  image) before its text, with the text's own ``<image>`` removed and stripped, as ``Conversation`` does for an
  image message. In an ``mmtag`` template the first message's image goes into the two preamble turns instead
  (``<Image><image></Image>`` / ``Received.``), as ``Conversation`` does. A string content is taken verbatim
  (``"<image>\\nWhat is this?"``, how ``llava.serve.cli`` and ``run_llava`` write it).
- An empty message is an open turn, as in ``Conversation``; ``add_generation_prompt`` opens the assistant's turn.
- The template's own example turns (``vicuna_v0``'s) come first, as ``conv_templates[name].copy()`` holds them.

Only JSON string literals and filters that Jinja2 and minijinja share are used: TGI renders with minijinja, and the
tests render every template with both.
"""

from __future__ import annotations

import json
from typing import Any

from llava.conversation import Conversation, SeparatorStyle

# The roles of OpenAI-style messages, in the order of a template's two roles.
USER_ROLE, ASSISTANT_ROLE, SYSTEM_ROLE = "user", "assistant", "system"
IMAGE_PART_TYPES = ("image", "image_url")
MMTAG_PREAMBLE = ("<Image><image></Image>", "Received.")


def _literal(value: Any) -> str:
    """A Jinja literal for a string, list or dict (JSON's syntax is Jinja's for these)."""
    return json.dumps(value, ensure_ascii=True)


def _styled(sep_style: SeparatorStyle, sep: str, sep2: str | None, first_role: str) -> tuple[str, str]:
    """(header, turn): the Jinja emitted once before the turns and once per turn (role ``r``, text ``t``, index
    ``ns.turn``) for one separator style."""
    s, s2 = _literal(sep), _literal(sep2 if sep2 is not None else "")
    second_sep = f"({s} if ns.turn % 2 == 0 else {s2})"
    if sep_style is SeparatorStyle.SINGLE:
        return (
            f"{{{{- ns.system ~ {s} -}}}}",
            f'{{%- if t -%}}{{{{- r ~ ": " ~ t ~ {s} -}}}}{{%- else -%}}{{{{- r ~ ":" -}}}}{{%- endif -%}}',
        )
    if sep_style is SeparatorStyle.TWO:
        return (
            f"{{{{- ns.system ~ {s} -}}}}",
            f'{{%- if t -%}}{{{{- r ~ ": " ~ t ~ {second_sep} -}}}}{{%- else -%}}{{{{- r ~ ":" -}}}}{{%- endif -%}}',
        )
    if sep_style is SeparatorStyle.MPT:
        return (
            f"{{{{- ns.system ~ {s} -}}}}",
            f"{{%- if t -%}}{{{{- r ~ t ~ {s} -}}}}{{%- else -%}}{{{{- r -}}}}{{%- endif -%}}",
        )
    if sep_style is SeparatorStyle.PLAIN:
        # Upstream's plain template has no separator after a reply (sep2 None): Conversation fails on one too.
        reply = (
            f"{{{{- t ~ {s2} -}}}}"
            if sep2 is not None
            else '{{- raise_exception("this template (plain) cannot render an assistant reply; it only prompts") -}}'
        )
        turn = f"{{%- if t -%}}{{%- if ns.turn % 2 == 0 -%}}{{{{- t ~ {s} -}}}}{{%- else -%}}{reply}{{%- endif -%}}{{%- endif -%}}"
        return "{{- ns.system -}}", turn
    if sep_style is SeparatorStyle.LLAMA_2:
        # Upstream joins "<sep>[INST] ..." turns and strips the leading sep off the first one (str.lstrip).
        turn = (
            f"{{%- if ns.turn == 0 and (not t or r != {_literal(first_role)}) -%}}"
            '{{- raise_exception("a llama_2 prompt starts with a non-empty message from the user") -}}'
            "{%- endif -%}"
            "{%- if t -%}"
            '{%- if ns.turn == 0 and ns.system -%}{%- set t = "<<SYS>>\\n" ~ ns.system ~ "\\n<</SYS>>\\n\\n" ~ t -%}'
            "{%- endif -%}"
            f'{{%- if ns.turn % 2 == 0 -%}}{{{{- ({s} if ns.turn > 0 else "") ~ "[INST] " ~ t ~ " [/INST]" -}}}}'
            f'{{%- else -%}}{{{{- " " ~ t ~ " " ~ {s2} -}}}}{{%- endif -%}}'
            "{%- endif -%}"
        )
        return "", turn
    raise ValueError(f"no chat template for separator style {sep_style}")


def chat_template(conv: Conversation, name: str) -> str:
    """The Jinja chat template of ``conv``, the template ``conv_templates[name]``."""
    first_role, second_role = conv.roles
    header, turn = _styled(conv.sep_style, conv.sep, conv.sep2, first_role)
    roles = _literal({USER_ROLE: first_role, ASSISTANT_ROLE: second_role})
    preset = [
        {"role": USER_ROLE if index % 2 == 0 else ASSISTANT_ROLE, "content": message}
        for index, (_, message) in enumerate(conv.messages)
    ]
    image_text = (
        '{%- set ns.prefix = "" -%}{%- for _ in range(images) -%}{%- set ns.prefix = ns.prefix ~ "<image>\\n" -%}'
        "{%- endfor -%}{%- set t = ns.prefix ~ t -%}"
    )
    if "mmtag" in conv.version:
        preamble_turns = "".join(
            f"{{%- set r = roles[{_literal(role)}] -%}}{{%- set t = {_literal(text)} -%}}{turn}"
            "{%- set ns.turn = ns.turn + 1 -%}"
            for role, text in zip((USER_ROLE, ASSISTANT_ROLE), MMTAG_PREAMBLE)
        )
        image_text = (
            f"{{%- if loop.first -%}}{{%- set text = t -%}}{preamble_turns}{{%- set r = roles[message.role] -%}}"
            f"{{%- set t = text -%}}{{%- else -%}}{image_text}{{%- endif -%}}"
        )
    return "".join(
        [
            f"{{#- LLaVA conversation template {name!r}, rendered as llava.conversation.Conversation renders it -#}}",
            f"{{%- set roles = {roles} -%}}",
            f"{{%- set ns = namespace(system={_literal(conv.system)}, turn=0, prefix='') -%}}",
            "{%- set conversation = messages -%}",
            f'{{%- if conversation and conversation[0].role == "{SYSTEM_ROLE}" -%}}',
            "{%- if conversation[0].content is string -%}{%- set ns.system = conversation[0].content -%}",
            '{%- else -%}{%- set ns.system = conversation[0].content | selectattr("type", "equalto", "text") '
            '| map(attribute="text") | join("") -%}{%- endif -%}',
            "{%- set conversation = conversation[1:] -%}",
            "{%- endif -%}",
            header,
            f"{{%- for message in {_literal(preset)} + conversation -%}}"
            if preset
            else "{%- for message in conversation -%}",
            "{%- if message.role not in roles -%}"
            '{{- raise_exception("roles are user and assistant (and one system message first), not " ~ message.role) -}}'
            "{%- endif -%}",
            "{%- set r = roles[message.role] -%}",
            "{%- if message.content is string -%}{%- set t = message.content -%}{%- set images = 0 -%}",
            "{%- else -%}",
            '{%- set t = message.content | selectattr("type", "equalto", "text") | map(attribute="text") | join("") -%}',
            "{%- set images = "
            + " + ".join(
                f'(message.content | selectattr("type", "equalto", {_literal(kind)}) | list | length)'
                for kind in IMAGE_PART_TYPES
            )
            + " -%}",
            "{%- endif -%}",
            f'{{%- if images > 0 -%}}{{%- set t = t | replace("<image>", "") | trim -%}}{image_text}{{%- endif -%}}',
            turn,
            "{%- set ns.turn = ns.turn + 1 -%}",
            "{%- endfor -%}",
            f"{{%- if add_generation_prompt -%}}{{%- set r = {_literal(second_role)} -%}}{{%- set t = none -%}}{turn}"
            "{%- endif -%}",
        ]
    )
