"""VQA-style answer normalisation, TextVQA's soft accuracy and the ST-VQA and TextCaps scores, under upstream's names
(``EvalAIAnswerProcessor``, ``TextVQAAccuracyEvaluator``, ``STVQAAccuracyEvaluator``, ``STVQAANLSEvaluator``,
``TextCapsBleu4Evaluator``), which its TextVQA scorer and VQAv2/VizWiz submission converters use.

The normalisation is the official VQA evaluation's, as EvalAI and the m4c (MMF) evaluator apply it, including its
quirks, so that scores equal upstream's:

1. lower-case; drop ``,`` and ``?``; split off a possessive ``'s`` (``dog's`` -> ``dog 's``); tabs and newlines
   become spaces; strip;
2. each punctuation mark of :data:`PUNCTUATIONS` is deleted when it stands next to a space somewhere in the text,
   else replaced by a space (the "comma between digits" exception never fires: step 1 already dropped commas);
3. periods not followed by a digit are deleted (``3.5`` keeps its point), at most the first 32 of them: the
   reference implementation passes ``re.UNICODE`` (32) where ``re.sub`` takes its count;
4. per word: number words ``none``, ``zero``..``ten`` become digits, the articles ``a``, ``an``, ``the`` are dropped,
   and contractions written without an apostrophe get it back (``dont`` -> ``don't``; see :data:`CONTRACTIONS`).

TextVQA's accuracy of an answer against its 10 human answers is the mean, over the 10 ways of leaving one human out,
of ``min(1, matches among the other 9 / 3)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PUNCTUATIONS = tuple(';/[]"{}()=+\\_-><@`,?!')  # each mark on its own; the order does not matter
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
NUMBERS = {"none": "0", **{word: str(value) for value, word in enumerate(NUMBER_WORDS)}}
ARTICLES = frozenset({"a", "an", "the"})
PERIOD_LIMIT = 32  # see step 3 of the module docstring
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")

# The contractions the VQA evaluation restores. Each is looked up under every spelling with exactly one of its
# apostrophes left out ("couldn't've" under "couldnt've" and "couldn'tve"; "don't" under "dont"). Forms with a
# capital "I" are listed as the reference lists them, although lower-casing means they never match.
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've
needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll
what're what's what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't
would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
# The reference table's irregular entries: two that map a word to itself and one that runs backwards.
_IRREGULAR = {"let's": "let's", "she's": "she's", "somebody'd": "somebodyd"}


def _spellings_missing_one_apostrophe(word: str) -> Iterable[str]:
    positions = [index for index, character in enumerate(word) if character == "'"]
    for position in positions:
        yield word[:position] + word[position + 1 :]


CONTRACTIONS: dict[str, str] = {
    **{spelling: word for word in _CONTRACTED for spelling in _spellings_missing_one_apostrophe(word)},
    **_IRREGULAR,
}


class EvalAIAnswerProcessor:
    """Normalise one answer string as the VQA / EvalAI evaluation does (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        pass  # upstream's signature; nothing to configure

    def word_tokenize(self, word: str) -> str:
        return word.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()

    def process_punctuation(self, in_text: str) -> str:
        digits_with_commas = _COMMA_BETWEEN_DIGITS.search(in_text) is not None
        out_text = in_text
        for mark in PUNCTUATIONS:
            touches_space = (mark + " ") in in_text or (" " + mark) in in_text
            out_text = out_text.replace(mark, "" if touches_space or digits_with_commas else " ")
        return _PERIOD_NOT_BEFORE_DIGIT.sub("", out_text, count=PERIOD_LIMIT)

    def process_digit_article(self, in_text: str) -> str:
        words = (NUMBERS.get(word, word) for word in in_text.lower().split())
        return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)

    def __call__(self, item: str) -> str:
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        return self.process_digit_article(self.process_punctuation(item))


HUMAN_ANSWERS_PER_QUESTION = 10
MATCHES_FOR_FULL_CREDIT = 3


class TextVQAAccuracyEvaluator:
    """TextVQA / VQA soft accuracy of predictions against 10 human answers each."""

    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def _compute_answer_scores(self, raw_answers: list[str]) -> dict[str, float]:
        """The score each distinct (normalised) human answer would get as the prediction."""
        answers = [self.answer_processor(answer) for answer in raw_answers]
        if len(answers) != HUMAN_ANSWERS_PER_QUESTION:
            raise ValueError(
                f"expected {HUMAN_ANSWERS_PER_QUESTION} human answers per question, got {len(answers)}: {raw_answers}"
            )
        scores = {}
        for candidate in set(answers):
            credits = []
            for left_out in range(len(answers)):
                matches = sum(1 for index, answer in enumerate(answers) if index != left_out and answer == candidate)
                credits.append(min(1.0, matches / MATCHES_FOR_FULL_CREDIT))
            scores[candidate] = sum(credits) / len(credits)
        return scores

    def eval_pred_list(self, pred_list: list[dict]) -> float:
        """Mean accuracy over ``[{"pred_answer": str, "gt_answers": [10 str]}, ...]``."""
        if not pred_list:
            raise ValueError("no predictions to score")
        scores = [
            self._compute_answer_scores(entry["gt_answers"]).get(self.answer_processor(entry["pred_answer"]), 0.0)
            for entry in pred_list
        ]
        return sum(scores) / len(scores)


class STVQAAccuracyEvaluator:
    """ST-VQA accuracy: 1 when the normalised prediction equals one of the normalised ground-truth answers."""

    def __init__(self):
        self.answer_processor = EvalAIAnswerProcessor()

    def eval_pred_list(self, pred_list: list[dict]) -> float:
        """Mean accuracy over ``[{"pred_answer": str, "gt_answers": [str, ...]}, ...]``."""
        if not pred_list:
            raise ValueError("no predictions to score")
        scores = []
        for entry in pred_list:
            answers = {self.answer_processor(answer) for answer in entry["gt_answers"]}
            scores.append(1.0 if self.answer_processor(entry["pred_answer"]) in answers else 0.0)
        return sum(scores) / len(scores)


ANLS_THRESHOLD = 0.5


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance between two strings (what the ``editdistance`` package upstream imports computes)."""
    previous = list(range(len(second) + 1))
    for row, char in enumerate(first, start=1):
        current = [row]
        for column, other in enumerate(second, start=1):
            current.append(min(previous[column] + 1, current[column - 1] + 1, previous[column - 1] + (char != other)))
        previous = current
    return previous[-1]


class STVQAANLSEvaluator:
    """ST-VQA's average normalised Levenshtein similarity (ANLS): per question the best ``1 - distance / longer
    length`` over the ground-truth answers (lower-cased, stripped), 0 below 0.5."""

    def __init__(self):
        self.get_edit_distance = edit_distance

    def get_anls(self, s1: str, s2: str) -> float:
        s1, s2 = s1.lower().strip(), s2.lower().strip()
        longer = max(len(s1), len(s2))
        similarity = 1.0 - self.get_edit_distance(s1, s2) / longer if longer else 1.0
        return similarity if similarity >= ANLS_THRESHOLD else 0.0

    def eval_pred_list(self, pred_list: list[dict]) -> float:
        if not pred_list:
            raise ValueError("no predictions to score")
        scores = [
            max(self.get_anls(entry["pred_answer"], answer) for answer in entry["gt_answers"]) for entry in pred_list
        ]
        return sum(scores) / len(scores)


class TextCapsBleu4Evaluator:
    """TextCaps' BLEU-4 with the COCO caption tools, as upstream: it needs ``pycocoevalcap`` (and Java, for its PTB
    tokenizer), which this package does not install."""

    def __init__(self):
        try:
            from pycocoevalcap.bleu.bleu import Bleu
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "TextCapsBleu4Evaluator needs the COCO caption tools: pip install pycocoevalcap (its PTB tokenizer "
                "also needs Java 1.8 or newer on PATH)"
            ) from error
        self.tokenizer = PTBTokenizer()
        self.scorer = Bleu(4)

    def eval_pred_list(self, pred_list: list[dict]) -> float:
        references = {
            index: [{"caption": answer} for answer in entry["gt_answers"]] for index, entry in enumerate(pred_list)
        }
        hypotheses = {index: [{"caption": entry["pred_answer"]}] for index, entry in enumerate(pred_list)}
        score, _ = self.scorer.compute_score(self.tokenizer.tokenize(references), self.tokenizer.tokenize(hypotheses))
        return score[3]  # (BLEU-1, BLEU-2, BLEU-3, BLEU-4)
