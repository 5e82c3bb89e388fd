"""ScienceQA problems as prompt and answer text in the formats of the ScienceQA paper's code, which
``convert_sqa_to_llava.py`` turns into LLaVA training data (upstream's module of the same name and functions).

A format is ``<input>-<output>``: the input names its parts in order (``Q`` question, ``C`` context, ``M`` options,
``L`` lecture, ``E`` explanation/solution; the L/E parts go after ``BECAUSE:``), e.g. ``QCM``, ``CQM``, ``QCMLE``;
the output is ``A`` (the answer), with the lecture/solution before it (``LA``, ``EA``, ``LEA``, ``ELA``) or after it
(``AL``, ``AE``, ``ALE``, ``AEL``; as upstream, ``AL`` appends the solution and ``AE`` the lecture), or ``LEPA``
(``LECTURE:`` / ``SOLUTION:`` / ``###`` / ``ANSWER:`` lines, chatbot form only). A test example's output is
``Answer:``.
"""

from __future__ import annotations

DEFAULT_OPTIONS = ["A", "B", "C", "D", "E"]
INPUT_FORMATS = {
    "CQM": "Context: {context}\nQuestion: {question}\nOptions: {choice}\n",
    "QCM": "Question: {question}\nContext: {context}\nOptions: {choice}\n",
    "QCML": "Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {lecture}\n",
    "QCME": "Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {solution}\n",
    "QCMLE": "Question: {question}\nContext: {context}\nOptions: {choice}\nBECAUSE: {lecture} {solution}\n",
    "QCLM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture}\nOptions: {choice}\n",
    "QCEM": "Question: {question}\nContext: {context}\nBECAUSE: {solution}\nOptions: {choice}\n",
    "QCLEM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture} {solution}\nOptions: {choice}\n",
}
OUTPUT_FORMATS = {
    "A": "Answer: The answer is {answer}.",
    "AL": "Answer: The answer is {answer}. BECAUSE: {solution}",
    "AE": "Answer: The answer is {answer}. BECAUSE: {lecture}",
    "ALE": "Answer: The answer is {answer}. BECAUSE: {lecture} {solution}",
    "AEL": "Answer: The answer is {answer}. BECAUSE: {solution} {lecture}",
    "LA": "Answer: {lecture} The answer is {answer}.",
    "EA": "Answer: {solution} The answer is {answer}.",
    "LEA": "Answer: {lecture} {solution} The answer is {answer}.",
    "ELA": "Answer: {solution} {lecture} The answer is {answer}.",
}
TEST_OUTPUT = "Answer:"
BECAUSE = "BECAUSE:"


def get_question_text(problem: dict) -> str:
    return problem["question"]


def get_context_text(problem: dict, use_caption: bool) -> str:
    context = " ".join([problem["hint"], problem["caption"] if use_caption else ""]).strip()
    return context or "N/A"


def get_choice_text(problem: dict, options: list[str]) -> str:
    return " ".join(f"({options[index]}) {choice}" for index, choice in enumerate(problem["choices"]))


def get_answer(problem: dict, options: list[str]) -> str:
    return options[problem["answer"]]


def get_lecture_text(problem: dict) -> str:
    return problem["lecture"].replace("\n", "\\n")  # one line, as the paper's GPT-3 prompts had it


def get_solution_text(problem: dict) -> str:
    return problem["solution"].replace("\n", "\\n")


def _parts(prompt_format: str, fields: dict[str, str], test_example: bool, lepa: bool = False) -> tuple[str, str]:
    input_format, _, output_format = prompt_format.partition("-")
    if input_format not in INPUT_FORMATS or (
        output_format not in OUTPUT_FORMATS and not (lepa and output_format == "LEPA")
    ):
        raise ValueError(
            f"unknown prompt format {prompt_format!r}: <input>-<output> with input one of {', '.join(INPUT_FORMATS)} "
            f"and output one of {', '.join(OUTPUT_FORMATS)}{' or LEPA' if lepa else ''}"
        )
    text_in = INPUT_FORMATS[input_format].format(**fields)
    if test_example:
        return text_in, TEST_OUTPUT
    if output_format == "LEPA":
        lines = [f"LECTURE: {fields['lecture']}"] if fields["lecture"].strip() else []
        lines += [f"SOLUTION: {fields['solution']}"] if fields["solution"].strip() else []
        return text_in, "\n".join([*lines, "###", f"ANSWER: {fields['answer']}."])
    return text_in, OUTPUT_FORMATS[output_format].format(**fields)


def _tidy(text: str) -> str:
    return text.replace("  ", " ").strip()


def _drop_empty_because(text: str) -> str:
    return text.replace(BECAUSE, "").strip() if text.endswith(BECAUSE) else text


def create_one_example_chatbot(format, question, context, choice, answer, lecture, solution, test_example=True):
    """``(input, output)`` of one problem for a chat model."""
    fields = dict(question=question, context=context, choice=choice, answer=answer, lecture=lecture, solution=solution)
    text_in, text_out = _parts(format, fields, test_example, lepa=True)
    return _drop_empty_because(_tidy(text_in)), _drop_empty_because(_tidy(text_out))


def create_one_example(format, question, context, choice, answer, lecture, solution, test_example=True):
    """One problem as a single few-shot text block."""
    fields = dict(question=question, context=context, choice=choice, answer=answer, lecture=lecture, solution=solution)
    return _drop_empty_because(_tidy("".join(_parts(format, fields, test_example))))


def create_one_example_gpt4(format, question, context, choice, answer, lecture, solution, test_example=True):
    """``(user message, assistant message)`` of one problem for a chat API."""
    fields = dict(question=question, context=context, choice=choice, answer=answer, lecture=lecture, solution=solution)
    text_in, text_out = _parts(format, fields, test_example)
    return (
        {"role": "user", "content": f"Can you explain {_tidy(text_in)}?"},
        {"role": "assistant", "content": _drop_empty_because(_tidy(text_out))},
    )


def _fields(problem: dict, use_caption: bool, options: list[str], unescape: bool) -> dict[str, str]:
    lecture, solution = get_lecture_text(problem), get_solution_text(problem)
    if unescape:
        lecture, solution = lecture.replace("\\n", "\n"), solution.replace("\\n", "\n")
    return dict(
        question=get_question_text(problem), context=get_context_text(problem, use_caption),
        choice=get_choice_text(problem, options), answer=get_answer(problem, options), lecture=lecture,
        solution=solution,
    )  # fmt: skip


def build_prompt_chatbot(problems, shot_qids, prompt_format, use_caption=False, options=DEFAULT_OPTIONS, is_test=False):
    """``{problem id: (input, output)}`` for the chat-model formats (newlines kept in lectures and solutions)."""
    return {
        qid: create_one_example_chatbot(
            prompt_format, **_fields(problems[qid], use_caption, options, unescape=True), test_example=is_test
        )
        for qid in shot_qids
    }


def build_prompt(problems, shot_qids, test_qid, args):
    """A few-shot prompt: the ``shot_qids`` examples answered, then ``test_qid``'s, blank lines between."""
    examples = [
        create_one_example(
            args.prompt_format, **_fields(problems[qid], args.use_caption, args.options, False), test_example=False
        )
        for qid in shot_qids
    ]
    fields = _fields(problems[test_qid], args.use_caption, args.options, False)
    examples.append(create_one_example(args.prompt_format, **fields, test_example=True))
    return "\n\n".join(examples)


def build_prompt_gpt4(problems, shot_qids, test_qid, args):
    """The same few-shot prompt as chat messages (a system message, then user/assistant pairs)."""
    messages = [{"role": "system", "content": "You are a helpful assistant."}]
    for qid, test in [*((qid, False) for qid in shot_qids), (test_qid, True)]:
        fields = _fields(problems[qid], args.use_caption, args.options, False)
        messages.extend(create_one_example_gpt4(args.prompt_format, **fields, test_example=test))
    return messages
