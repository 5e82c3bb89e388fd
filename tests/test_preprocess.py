"""Templating and label masking, checked against a re-implementation of upstream's algorithm (upstream_oracle)."""

from __future__ import annotations

import random

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, conv_templates, default_conversation
from llava.train.arguments import DataArguments
from llava.data.preprocess import (
    preprocess,
    preprocess_llama_2,
    preprocess_mpt,
    preprocess_multimodal,
    preprocess_plain,
    preprocess_v1,
    render_segments,
    conversation_turns,
)

from upstream_oracle import oracle, upstream_prompt

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


def check_against_upstream(source, tokenizer, template, has_image) -> bool:
    """Identical to upstream where it keeps the sample, right labels where it drops it. Returns 'compared'.

    A message that contains a role header or separator can also land upstream's count on the right total with
    the wrong tokens supervised (a question ending in "ASSISTANT:" makes it supervise the real "ASSISTANT:" header):
    for those only rightness is checked.
    """
    conv = conv_templates[template]
    reference = oracle(source, tokenizer, conv, has_image)
    ids, labels = run(source, tokenizer, template, has_image)
    assert ids == reference.input_ids
    if reference.mismatch or any(marker in turn["value"] for turn in source for marker in template_markers(conv)):
        assert_right_labels(source, tokenizer, template, has_image)
        return False
    assert labels == reference.labels
    return True


# ----------------------------------------------------------------------------------------------------------------
# Identical to upstream on well-formed conversations


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_matches_upstream_for_every_template(tok, variants, template, has_image, rounds):
    if template == "plain" and (rounds > 1 or not has_image):
        pytest.skip("plain is one image + one caption")
    # ChatML models have <|im_start|>/<|im_end|> as special tokens; without them a token can straddle a boundary.
    tokenizer = variants["chatml"] if template in ALWAYS_MISMATCH else tok
    source = conversation(rounds, image=has_image)
    compared = check_against_upstream(source, tokenizer, template, has_image)
    assert compared == (template not in ALWAYS_MISMATCH)
    if template not in ("plain", "llava_v0", "v0_mmtag", "v0"):
        segments = render_segments(conversation_turns(source), conv_templates[template])
        assert "".join(text for text, _ in segments) == upstream_prompt(source, conv_templates[template])


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "mistral_instruct", "llava_v0"])
def test_leading_gpt_turn_is_handled_as_upstream(tok, template):
    source = conversation(2, image=True, leading_gpt=True)
    assert check_against_upstream(source, tok, template, has_image=True)


@pytest.mark.parametrize("variant", ["legacy", "no_bos", "chatml"])
@pytest.mark.parametrize("template", ["vicuna_v1", "llava_llama_2", "mistral_instruct", "llava_v0", "plain"])
@pytest.mark.parametrize("has_image", [True, False], ids=["image", "text"])
def test_matches_upstream_with_tokenizer_variants(variants, variant, template, has_image):
    if template == "plain" and not has_image:
        pytest.skip("plain needs an image")
    tokenizer = variants[variant]
    rounds = 1 if template == "plain" else 1 if variant == "no_bos" else 3  # without BOS upstream counts 1 round right
    assert check_against_upstream(conversation(rounds, image=has_image), tokenizer, template, has_image)


def test_chatml_with_special_tokens_supervises_reply_and_im_end(variants):
    tokenizer = variants["chatml"]
    for template in ("mpt", "chatml_direct"):
        for has_image in (True, False):
            source = conversation(3, image=has_image)
            assert oracle(source, tokenizer, conv_templates[template], has_image).mismatch
            assert_right_labels(source, tokenizer, template, has_image)


# Words that exercise the tokenizer: punctuation, digits, byte-fallback unicode, newlines, role-like words.
WORDS = (
    "the a red square circle image shows is there one two gray background shape color "
    "12 3.5 50% (left) right, yes! no? well: okay; quote's \"quoted\" a-b x/y #tag @at "
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


@pytest.mark.parametrize("seed", range(8))
def test_random_conversations_match_upstream(tok, variants, seed):
    rng = random.Random(seed)
    compared = total = 0
    for _ in range(100):
        template = rng.choice(TEMPLATES)
        has_image = template == "plain" or rng.random() < 0.6
        tokenizer = variants["chatml"] if template in ALWAYS_MISMATCH else tok
        source = random_conversation(rng, template, has_image)
        conv = conv_templates[template]
        if has_image:
            args = DataArguments(is_multimodal=True)
            source = preprocess_multimodal([source], args, mm_use_im_start_end=rng.random() < 0.3, conv=conv)[0]
        compared += check_against_upstream(source, tokenizer, template, has_image)
        total += template not in ALWAYS_MISMATCH
    # The comparison must really happen: upstream keeps most random conversations.
    assert compared >= 0.8 * total


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
    source, kept_by = DROPPED[case]
    if template == "chatml_direct" and case == "empty last reply":
        pytest.skip("upstream keeps this one with labels shifted by a token: see test_mpt_upstream_shift_is_not_copied")
    if not has_image:
        source = [{**turn, "value": turn["value"].replace("<image>\n", "")} for turn in source]
    tokenizer = variants["chatml"] if template == "chatml_direct" else tok
    reference = oracle(source, tokenizer, conv_templates[template], has_image)
    assert reference.mismatch == (template not in kept_by)
    if reference.mismatch:
        # Upstream trains on nothing for this sample; here the replies are supervised.
        assert set(reference.labels) == {IGNORE_INDEX}
        assert_right_labels(source, tokenizer, template, has_image)
    else:
        assert check_against_upstream(source, tokenizer, template, has_image)
    # The prompt is upstream's in every case: only the labels differ.
    assert run(source, tokenizer, template, has_image)[0] == reference.input_ids


def test_mpt_upstream_shift_is_not_copied(variants):
    """The one deliberate difference from upstream on a sample it keeps.

    Upstream's preprocess_mpt counts one token too few in the first round when the tokenizer adds BOS. That is a
    "mismatch" for every conversation ending with a reply, but when the last reply is empty the final round has one
    token too many and the two cancel: upstream keeps the sample with every label shifted one token left, so it
    trains the newline of "<|im_start|>assistant\n" and never "<|im_end|>". Here the reply and "<|im_end|>" are
    supervised, as for every other conversation.
    """
    tokenizer = variants["chatml"]
    source, _ = DROPPED["empty last reply"]
    reference = oracle(source, tokenizer, conv_templates["chatml_direct"], True)
    assert not reference.mismatch
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer.convert_tokens_to_ids("<0x0A>")
    upstream_runs = supervised_runs(reference.labels)
    assert [run[0] for run in upstream_runs] == [newline, newline] and im_end not in reference.labels
    assert_right_labels(source, tokenizer, "chatml_direct", has_image=True)
    ids, labels = run(source, tokenizer, "chatml_direct", has_image=True)
    assert ids == reference.input_ids
    assert [tokenizer.decode(run) for run in supervised_runs(labels)] == ["A square.<|im_end|>"]


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
    reference = oracle(source, tok, conv_templates["llava_v0"], False)
    assert (ids, labels) == (reference.input_ids, reference.labels)
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
    width = len(oracle(two, tok, default_conversation, True).input_ids)
    assert batched["input_ids"].shape == batched["labels"].shape == (2, width)
    sources = [conversation(1, image=False), conversation(3, image=False)]
    text = preprocess(sources, tok, conv=conv_templates["vicuna_v1"])
    short = len(oracle(conversation(1, image=False), tok, default_conversation).input_ids)
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
    reference = oracle(source, tokenizer, conv_templates[template], False)
    assert not reference.mismatch
    assert (ids, labels) == (reference.input_ids, reference.labels)


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
