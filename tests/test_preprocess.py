"""Templating and label masking: right labels, upstream's prompts, and the slow tokenizer's ids (issue 9, item 5).

Identity with upstream's own preprocess (its code, its slow tokenizer, its stack) is checked in
test_upstream_labels.py, through the reference environment; the cases here need nothing but our stack.
"""

from __future__ import annotations

import random

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, conv_templates, default_conversation
from llava.data.preprocess import (
    conversation_turns,
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
    render_segments,
)
from llava.mm_utils import tokenizer_image_token
from llava.train.arguments import DataArguments

TEMPLATES = [
    "v1", "vicuna_v1", "llava_v1", "v1_mmtag", "llama_2", "llava_llama_2", "mistral_instruct",
    "mpt", "chatml_direct", "plain", "llava_v0", "v0_mmtag", "v0",
]  # fmt: skip
# With a tokenizer that adds BOS, upstream's preprocess_mpt is one token short in the first round for every
# conversation, so it always reports a mismatch: nothing to compare with, the labels are checked for rightness.
ALWAYS_MISMATCH = {"mpt", "chatml_direct"}
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]

QA = [
    ("What color is the shape in the image?", "The square is red."),
    ("How many shapes are there?", "There is one shape, and it is 12 pixels wide."),
    ("Describe the image briefly.", "A red square on a gray background.\nNothing else."),
    ("Is the background dark or light?", "Neither: it is gray (50%)."),
    ("Tell me more, please.", "Sure! The shape's edges are sharp; its corners are square."),
]


def _load(path, **kwargs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    tokenizer.pad_token = tokenizer.unk_token  # as upstream's train() does for every template but v0
    return tokenizer


@pytest.fixture(scope="module")
def tok(tiny):
    """The tiny Vicuna tokenizer (legacy: false), shared by this module's tests: do not modify it."""
    return _load(tiny.llm)


@pytest.fixture(scope="module")
def variants(tiny):
    """Tokenizer variants that move upstream's token counting: legacy prefixes, no BOS, ChatML special tokens."""
    chatml = _load(tiny.llm)
    chatml.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
    return {
        "legacy": _load(tiny.llm, legacy=True),
        "no_bos": _load(tiny.llm, add_bos_token=False),
        "chatml": chatml,
    }


def conversation(rounds: int, *, image: bool, leading_gpt: bool = False) -> list[dict]:
    turns = [{"from": "gpt", "value": "Hello! Ask me about the image."}] if leading_gpt else []
    for index in range(rounds):
        question, answer = QA[index % len(QA)]
        if index == 0 and image:
            question = "<image>\n" + question
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def run(source, tokenizer, template, has_image):
    """Our ids and labels for one conversation, as lists."""
    result = preprocess([source], tokenizer, has_image=has_image, conv=conv_templates[template])
    return result["input_ids"][0].tolist(), result["labels"][0].tolist()


def supervised_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def expected_reply_texts(source, template) -> list[str]:
    """What each supervised run must decode to: the reply and its end separator (decode drops one leading space)."""
    conv = conv_templates[template]
    turns = conversation_turns(source)
    replies = [turn.value for turn in turns if not turn.from_human and turn.value]  # empty replies train nothing
    if conv.sep_style == SeparatorStyle.TWO:
        texts = [(f" {reply}" if reply else "") + conv.sep2 for reply in replies]
    elif conv.sep_style == SeparatorStyle.LLAMA_2:
        texts = [(f" {reply} " if reply else "") + conv.sep2 for reply in replies]
    else:
        texts = [reply + conv.sep for reply in replies]
    return [text.removeprefix(" ") for text in texts]


def assert_right_labels(source, tokenizer, template, has_image):
    """Exactly the replies and their end separators are supervised; the image is marked once, never a label."""
    ids, labels = run(source, tokenizer, template, has_image)
    runs = supervised_runs(labels)
    assert [tokenizer.decode(run) for run in runs] == expected_reply_texts(source, template)
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    assert ids.count(IMAGE_TOKEN_INDEX) == (1 if has_image else 0)
    assert IMAGE_TOKEN_INDEX not in labels


def template_markers(conv) -> list[str]:
    """Strings upstream splits the prompt at: a message containing one can fool its counting."""
    if conv.sep_style == SeparatorStyle.TWO:
        return [f"{role}:" for role in conv.roles] + [conv.sep2]
    if conv.sep_style == SeparatorStyle.LLAMA_2:
        return ["[INST]", "[/INST]", conv.sep2] + ([conv.sep] if conv.sep else [])
    if conv.sep_style == SeparatorStyle.MPT:
        return ["<|im_start|>", conv.sep]
    return []


def upstream_prompt(source: list[dict], template: str) -> str:
    """The prompt upstream's preprocess_v1 / llama_2 / mpt build: Conversation.get_prompt() (a leading gpt turn dropped)."""
    conv = conv_templates[template].copy()
    turns = conversation_turns(source)
    conv.messages = []
    for turn in turns:
        conv.append_message(conv.roles[0] if turn.from_human else conv.roles[1], turn.value)
    return conv.get_prompt()


# ----------------------------------------------------------------------------------------------------------------
# Right labels and upstream's prompt for every template


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
@pytest.mark.parametrize("template", [t for t in TEMPLATES if t not in ("plain", "llava_v0", "v0_mmtag", "v0")])
def test_every_template_supervises_the_replies_of_upstreams_prompt(tok, variants, template, has_image, rounds):
    # ChatML models have <|im_start|>/<|im_end|> as special tokens; without them a token can straddle a boundary.
    tokenizer = variants["chatml"] if template in ALWAYS_MISMATCH else tok
    source = conversation(rounds, image=has_image, leading_gpt=rounds == 2)
    assert_right_labels(source, tokenizer, template, has_image)
    segments = render_segments(conversation_turns(source), conv_templates[template])
    assert "".join(text for text, _ in segments) == upstream_prompt(source, template)


@pytest.mark.parametrize("variant", ["legacy", "no_bos", "chatml"])
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "mistral_instruct", "chatml_direct"])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
def test_tokenizer_variants_supervise_the_replies(variants, variant, template, has_image):
    if template == "chatml_direct" and variant != "chatml":
        pytest.skip("ChatML needs its special tokens")
    assert_right_labels(conversation(3, image=has_image), variants[variant], template, has_image)


# Words that exercise the tokenizer: punctuation, digits, byte-fallback unicode, newlines, role-like words.
WORDS = (
    "the a red square circle image shows is there one two gray background shape color "
    '12 3.5 50% (left) right, yes! no? well: okay; quote\'s "quoted" a-b x/y #tag @at '
    "é ü 日本 语 🙂 — … naïve USER ASSISTANT INST assistant user"
).split()


# Rare words that make upstream drop the sample: a role header or separator inside a message.
BREAKING_WORDS = ["ASSISTANT:", "USER:", "</s>", "[/INST]", "<|im_end|>"]


def random_text(rng: random.Random) -> str:
    words = [rng.choice(BREAKING_WORDS if rng.random() < 0.005 else WORDS) for _ in range(rng.randint(1, 14))]
    text = ""
    for word in words:
        text += (rng.choice(["\n", "\n\n", " "]) if rng.random() < 0.15 else " ") + word
    return text.lstrip(" ") if rng.random() < 0.8 else text


def random_conversation(rng: random.Random, template: str, has_image: bool) -> list[dict]:
    rounds = 1 if template == "plain" else rng.randint(1, 5)
    turns = []
    for _ in range(rounds):
        turns += [{"from": "human", "value": random_text(rng)}, {"from": "gpt", "value": random_text(rng)}]
    if has_image:
        first = turns[0]["value"]
        cut = rng.randint(0, len(first))
        turns[0]["value"] = first[:cut] + "<image>" + first[cut:]
    return turns


@pytest.mark.parametrize("seed", range(4))
def test_random_conversations_supervise_the_replies(tok, variants, seed):
    rng = random.Random(seed)
    for _ in range(100):
        template = rng.choice([t for t in TEMPLATES if t not in ("plain", "llava_v0", "v0_mmtag", "v0")])
        has_image = rng.random() < 0.6
        tokenizer = variants["chatml"] if template in ALWAYS_MISMATCH else tok
        source = random_conversation(rng, template, has_image)
        if has_image:
            args = DataArguments(is_multimodal=True)
            source = preprocess_multimodal([source], args, conv=conv_templates[template])[0]
        if any(marker in turn["value"] for turn in source for marker in template_markers(conv_templates[template])):
            continue  # a separator inside a message is supervised as text: decoding cannot tell them apart
        assert_right_labels(source, tokenizer, template, has_image)


# ----------------------------------------------------------------------------------------------------------------
# Cases upstream drops ("tokenization mismatch"): labels are right here


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if index % 2 == 0 else "gpt", "value": value} for index, value in enumerate(values)]


# Conversations upstream masks whole ("tokenization mismatch") with some templates, and the templates for which its
# counting still works (there: identical to upstream). ChatML (chatml_direct) is dropped by upstream in every case.
V1, LLAMA = "vicuna_v1", ("llava_llama_2", "mistral_instruct")
DROPPED = {
    "empty reply": (_turns("<image>\nWhat is it?", "", "And now?", "A square."), (V1, *LLAMA)),
    "empty last reply": (_turns("<image>\nWhat is it?", "A square.", "And now?", ""), ()),
    "ends on human": (_turns("<image>\nWhat is it?", "A square.", "Anything else?"), ()),
    "eos in reply": (_turns("<image>\nWhat is it?", "A square.</s> Really.", "Sure?", "Yes."), ()),
    "role in question": (_turns("<image>\nSay ASSISTANT: hi please.", "Hi."), LLAMA),
    "role in reply": (_turns("<image>\nWhat is it?", "Red. USER: and? ASSISTANT: a square.", "Ok.", "Ok."), LLAMA),
    "inst in question": (_turns("<image>\nType [/INST] then go.", "Done.", "Ok.", "Ok."), (V1,)),
    "inst in reply": (_turns("<image>\nWhat is it?", "Type [/INST] then go.", "Ok.", "Ok."), (V1,)),
}


@pytest.mark.parametrize("case", sorted(DROPPED))
@pytest.mark.parametrize("template", [V1, *LLAMA, "chatml_direct"])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
def test_cases_upstream_drops_are_masked_right(tok, variants, template, case, has_image):
    """Upstream trains on nothing for these (test_upstream_labels.py shows which); here the replies are supervised."""
    source, _ = DROPPED[case]
    if not has_image:
        source = [{**turn, "value": turn["value"].replace("<image>\n", "")} for turn in source]
    tokenizer = variants["chatml"] if template == "chatml_direct" else tok
    ids, labels = run(source, tokenizer, template, has_image)
    if any(marker in turn["value"] for turn in source for marker in template_markers(conv_templates[template])):
        # A separator inside a message is supervised as the text it is: the runs are the replies, markers included.
        texts = ["".join(tokenizer.decode(run).split()) for run in supervised_runs(labels)]
        assert "".join(texts) == "".join("".join(text.split()) for text in expected_reply_texts(source, template))
    else:
        assert_right_labels(source, tokenizer, template, has_image)


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "chatml_direct"])
def test_empty_reply_trains_nothing(tok, variants, template):
    tokenizer = variants["chatml"] if template == "chatml_direct" else tok
    source = _turns("What is it?", "", "And now?", "A square.")
    ids, labels = run(source, tokenizer, template, has_image=False)
    texts = [tokenizer.decode(run) for run in supervised_runs(labels)]
    assert texts == expected_reply_texts(source, template) and len(texts) == 1


# ----------------------------------------------------------------------------------------------------------------
# Upstream's generic '###' path, quirks included


def test_hash_format_keeps_upstreams_quirks(tok):
    source = _turns("What is it?", "A square.")
    ids, labels = run(source, tok, "llava_v0", has_image=False)
    # Upstream leaves the first two tokens of the human turn supervised; each turn is counted with its own BOS, so
    # the cursor drifts one token per turn: the assistant's "###" is masked, "Assistant: " and the final "### " are
    # supervised.
    runs = [tok.decode(run) for run in supervised_runs(labels)]
    assert runs == ["### Human", "Assistant: A square.\n### "]


# ----------------------------------------------------------------------------------------------------------------
# Dispatch, return types, truncation, errors


def test_default_template_is_default_conversation(tok):
    source = conversation(2, image=False)
    ours = preprocess([source], tok)
    explicit = preprocess([source], tok, conv=default_conversation)
    assert torch.equal(ours["input_ids"], explicit["input_ids"])
    assert torch.equal(ours["labels"], explicit["labels"])
    assert default_conversation.version == "v1"


@pytest.mark.parametrize(
    "function, template",
    [(preprocess_v1, "vicuna_v1"), (preprocess_llama_2, "llava_llama_2"), (preprocess_mpt, "mpt")],
)
def test_style_functions_are_the_dispatch_targets(tok, function, template):
    source = conversation(2, image=True)
    direct = function([source], tok, True, conv=conv_templates[template])
    via_dispatch = preprocess([source], tok, True, conv=conv_templates[template])
    assert torch.equal(direct["input_ids"], via_dispatch["input_ids"])
    assert torch.equal(direct["labels"], via_dispatch["labels"])
    with pytest.raises(ValueError, match="separator style"):
        function([source], tok, True, conv=conv_templates["plain"])


def test_return_types_match_upstream(tok):
    two = conversation(2, image=True)
    batched = preprocess([two, two], tok, has_image=True, conv=conv_templates["vicuna_v1"])
    width = len(tokenizer_image_token(upstream_prompt(two, "vicuna_v1"), tok))
    assert batched["input_ids"].shape == batched["labels"].shape == (2, width)
    sources = [conversation(1, image=False), conversation(3, image=False)]
    text = preprocess(sources, tok, conv=conv_templates["vicuna_v1"])
    short = len(tok(upstream_prompt(conversation(1, image=False), "vicuna_v1")).input_ids)
    assert text["input_ids"].dtype == torch.long and text["input_ids"].ndim == 2
    assert text["input_ids"][0, short:].eq(tok.pad_token_id).all()
    assert text["labels"][0, short:].eq(IGNORE_INDEX).all()
    plain = preprocess_plain([conversation(1, image=True)], tok)
    assert isinstance(plain["input_ids"], list) and plain["input_ids"][0].ndim == 1
    hashed = preprocess([conversation(1, image=False)], tok, conv=conv_templates["llava_v0"])
    assert isinstance(hashed["labels"], list) and hashed["labels"][0].ndim == 1


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "llava_v0"])
def test_text_prompts_are_truncated_like_upstream(tiny, template):
    tokenizer = _load(tiny.llm, model_max_length=40)
    source = conversation(3, image=False)
    ids, labels = run(source, tokenizer, template, has_image=False)
    assert len(ids) == len(labels) == 40
    full_ids, full_labels = run(source, _load(tiny.llm), template, has_image=False)
    assert (ids, labels) == (full_ids[:40], full_labels[:40])


def test_plain_masks_the_image_and_supervises_caption_and_newline(tok):
    source = [{"from": "human", "value": "Look: <image>"}, {"from": "gpt", "value": "A red square."}]
    result = preprocess([source], tok, has_image=True, conv=conv_templates["plain"])
    ids, labels = result["input_ids"][0].tolist(), result["labels"][0].tolist()
    assert ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
    assert labels[2:] == ids[2:]
    assert tok.decode(labels[2:]) == "A red square.\n"


@pytest.mark.parametrize(
    "source, message",
    [
        ([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}], "turn 1 has 'from': 'bot'"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q2"}], "turn 1 is from 'human' but 'gpt'"),
        ([{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}], "turn 1 is from 'gpt' but 'human'"),
        ([{"from": "human", "value": None}], "turn 0 has 'value' of type NoneType"),
        ([], "non-empty list"),
    ],
)
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "mpt", "llava_v0"])
def test_bad_roles_raise_value_error(tok, source, message, template):
    with pytest.raises(ValueError, match=message):
        preprocess([source], tok, conv=conv_templates[template])


@pytest.mark.parametrize(
    "source",
    [
        [{"from": "human", "value": "no image"}, {"from": "gpt", "value": "caption"}],
        [{"from": "human", "value": "<image>"}],
        [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}],
    ],
)
def test_plain_rejects_anything_but_image_and_caption(tok, source):
    with pytest.raises(ValueError, match="'plain' template"):
        preprocess([source], tok, has_image=True, conv=conv_templates["plain"])


# ----------------------------------------------------------------------------------------------------------------
# preprocess_multimodal


@pytest.mark.parametrize(
    "value, template, start_end, expected",
    [
        ("What is it?\n<image>", "vicuna_v1", False, "<image>\nWhat is it?"),
        ("  <image> What is it?  ", "vicuna_v1", False, "<image>\nWhat is it?"),
        ("<image>", "vicuna_v1", False, "<image>"),
        ("What <image> is it?", "vicuna_v1", True, "<im_start><image><im_end>\nWhat  is it?"),
        ("<image>\nWhat is it?", "v1_mmtag", False, "<Image><image></Image>\nWhat is it?"),
        ("<image>\nWhat is it?", "v1_mmtag", True, "<Image><im_start><image><im_end></Image>\nWhat is it?"),
        ("No image here.", "vicuna_v1", True, "No image here."),
    ],
)
def test_preprocess_multimodal_moves_and_wraps_the_image(value, template, start_end, expected):
    turns = [{"from": "human", "value": value}, {"from": "gpt", "value": "Answer <image>?"}]
    original = [dict(turn) for turn in turns]
    args = DataArguments(is_multimodal=True)
    out = preprocess_multimodal([turns], args, mm_use_im_start_end=start_end, conv=conv_templates[template])
    assert out[0][0]["value"] == expected
    assert turns == original  # input untouched: no deep copy needed by callers


def test_preprocess_multimodal_is_a_no_op_for_text_only_runs():
    sources = [[{"from": "human", "value": "What is it?\n<image>"}]]
    assert preprocess_multimodal(sources, DataArguments(is_multimodal=False)) is sources


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer facts the offset labelling relies on


def test_tokenizer_offsets_behave_as_relied_on(tok):
    text = "ASSISTANT: Hi é</s>USER:"
    encoded = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(encoded["input_ids"])
    assert list(zip(pieces, encoded["offset_mapping"])) == [
        ("<s>", (0, 0)),  # BOS covers no character
        ("▁ASSISTANT", (0, 9)),  # the dummy prefix "▁" points at the first character
        (":", (9, 10)),
        ("▁H", (10, 12)),  # the space before a word starts that word's token
        ("i", (12, 13)),
        ("▁", (13, 14)),
        ("<0xC3>", (14, 15)),  # byte-fallback tokens share their character's span
        ("<0xA9>", (14, 15)),
        ("</s>", (15, 19)),  # a special token inside text is one token over its characters
        ("USER", (19, 23)),  # no "▁" after a special token (legacy: false)
        (":", (23, 24)),
    ]
    alone = tok("\nX", return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(alone["input_ids"])[1] == "▁" and alone["offset_mapping"][1] == (0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Upstream's slow tokenizer's ids (issue 9, item 5), exact; test_upstream_labels.py checks the same cases against
# upstream's own preprocess. legacy false: every input gets a "▁" prefix, so text starting with a space gets an
# extra "▁"; legacy true: every piece between special tokens gets one (" it" after "</s>" is "▁", "▁it").

SLOW_IDS = [
    # (legacy, prompt, ids of transformers 4.37's LlamaTokenizer(use_fast=False) through tokenizer_image_token)
    (False, "<image> A red square.\n", [1, -200, 950, 291, 575, 482, 977, 13]),
    (True, "<image> A red square.\n", [1, -200, 950, 291, 575, 482, 977, 13]),
    (False, "<image> \n", [1, -200, 950, 950, 13]),
    (True, "<image> \n", [1, -200, 950, 950, 13]),
    (False, "USER: Look at <image> this. ASSISTANT:", [1, 950, 317, 976, 879, 358, 714, 950, -200, 950, 582, 977, 320, 976]),
    (True, "USER: Look at <image> this. ASSISTANT:", [1, 950, 317, 976, 879, 358, 714, 950, -200, 950, 582, 977, 320, 976]),
    (False, "A square.</s> it is red.</s>", [1, 291, 482, 977, 2, 385, 450, 575, 977, 2]),
    (True, "A square.</s> it is red.</s>", [1, 291, 482, 977, 2, 950, 385, 450, 575, 977, 2]),
    (False, "USER: Hi ASSISTANT: Red.</s> it.</s>USER: Ok",
     [1, 950, 317, 976, 451, 957, 320, 976, 881, 343, 977, 2, 385, 977, 2, 317, 976, 641, 975]),
    (True, "USER: Hi ASSISTANT: Red.</s> it.</s>USER: Ok",
     [1, 950, 317, 976, 451, 957, 320, 976, 881, 343, 977, 2, 950, 385, 977, 2, 950, 317, 976, 641, 975]),
]  # fmt: skip


@pytest.mark.parametrize(
    "legacy, prompt, expected", SLOW_IDS, ids=[f"legacy={flag}-{text!r}" for flag, text, _ in SLOW_IDS]
)
def test_tokenizer_image_token_gives_the_slow_tokenizers_ids(tiny, legacy, prompt, expected):
    tokenizer = _load(tiny.llm, legacy=legacy)
    assert tokenizer_image_token(prompt, tokenizer) == expected


@pytest.mark.parametrize("legacy", [False, True])
def test_plain_caption_starting_with_a_space_keeps_the_slow_tokenizers_extra_piece(tiny, legacy):
    tokenizer = _load(tiny.llm, legacy=legacy)
    for caption, ids in ((" A red square.", [1, -200, 950, 291, 575, 482, 977, 13]), (" ", [1, -200, 950, 950, 13])):
        source = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": caption}]
        result = preprocess([source], tokenizer, has_image=True, conv=conv_templates["plain"])
        assert result["input_ids"][0].tolist() == ids
        # As upstream: only BOS and the image are masked; the extra "▁" belongs to the caption.
        assert result["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, *ids[2:]]


@pytest.mark.parametrize("legacy", [False, True])
def test_eos_then_space_inside_a_reply_is_tokenised_as_the_slow_tokenizer(tiny, legacy):
    tokenizer = _load(tiny.llm, legacy=legacy)
    source = _turns("Hi", "Red.</s> it.", "Ok", "Ok.")
    ids, labels = run(source, tokenizer, "vicuna_v1", has_image=False)
    eos = tokenizer.eos_token_id
    first = ids.index(eos)
    after = [950, 385, 977, eos] if legacy else [385, 977, eos]  # "▁", "▁it", ".", "</s>" / "▁it", ".", "</s>"
    assert ids[first + 1 : first + 1 + len(after)] == after
    assert labels[first + 1 : first + 1 + len(after)] == after  # all inside the reply: supervised
    # The next turn's "USER" follows "</s>": legacy true prefixes it with "▁" (950), legacy false does not.
    assert ids[first + 1 + len(after)] == (950 if legacy else 317)
