"""The reinforce stage's rewards on hand-written completions, the hacks included: each reward is a small function,
read by the same parser the evaluate stage uses (medqlora.evaluation.scoring), so what RL rewards is what the
report scores."""
import pytest

from medqlora.config.rl import RLConfig
from medqlora.evaluation.scoring import closed_answer
from medqlora.reinforce import rewards as R

MCQ = {"kind": "choice", "answer": "B",
       "options": {"A": "Aspirin", "B": "Naloxone", "C": "Atropine", "D": "Flumazenil"}}
YESNO = {"kind": "yesno", "answer": "yes", "options": None}

# (completion, correctness, format) for the reasoning template, the prompt ending with '<think>' (R1 distills)
REASONING_OPENED = [
    ("Opioid toxidrome: pinpoint pupils.\n</think>\n\nB. Naloxone", 1.0, 1.0),
    ("Pinpoint pupils.\n</think>\nThe answer is B.", 1.0, 1.0),
    ("Looks anticholinergic.\n</think>\nA. Aspirin", 0.0, 1.0),  # wrong, but well formed
    ("Hmm.\n</think>\nThe answer is A. The answer is B.", 0.0, 0.5),  # two answers: the right one among them
    ("Hmm.\n</think>\nB. Naloxone. Final answer: A", 0.0, 0.5),  # a letter, then another stated
    ("The answer is B.\n</think>\n", 0.0, 0.5),  # the answer only inside the thought
    ("The answer is B. Naloxone reverses opioids.", 0.0, 0.0),  # the thought never closed: no answer at all
    ("Hmm.\n</think>\nThe answer is F.", 0.0, 0.5),  # a letter that is not an option
    ("", 0.0, 0.0),  # empty
    ("Hmm.\n</think>", 0.0, 0.5),  # a closed thought and an empty answer
    ("a</think>b<think>c</think>\nB", 1.0, 0.5),  # two thoughts: read after the last, as evaluate reads it
]


@pytest.mark.parametrize("text,correct,fmt", REASONING_OPENED, ids=range(len(REASONING_OPENED)))
def test_reasoning_completions_after_an_opened_thought(text, correct, fmt):
    assert R.correctness(MCQ, text, opened=True) == correct
    assert R.format_score(MCQ, text, opened=True, reasoning=True) == fmt


def test_correctness_is_the_evaluate_parsers_reading_plus_the_two_answer_rule():
    for text, correct, _ in REASONING_OPENED:
        read_by_evaluate = closed_answer(MCQ, text, True) == MCQ["answer"]
        several = R.read(MCQ, text, opened=True).several
        assert correct == float(read_by_evaluate and not several), text


@pytest.mark.parametrize("text,correct,fmt", [
    ("<think>Pinpoint pupils.</think>\nB. Naloxone", 1.0, 1.0),  # the model opens its own thought
    ("B. Naloxone", 1.0, 0.5),  # no thought: scored as the evaluate stage scores it, but half the format
    ("<think>Pinpoint pupils. The answer is B.", 0.0, 0.0),  # opened, never closed
    ("  <think>x</think>\n<think>y</think> B", 1.0, 0.5),  # two thoughts
])
def test_reasoning_completions_when_the_prompt_leaves_the_thought_to_the_model(text, correct, fmt):
    assert R.correctness(MCQ, text, opened=False) == correct
    assert R.format_score(MCQ, text, opened=False, reasoning=True) == fmt


@pytest.mark.parametrize("text,correct,fmt", [
    ("B. Naloxone", 1.0, 1.0),
    ("B", 1.0, 1.0),
    ("**(B)**", 1.0, 1.0),  # markdown read through
    ("Naloxone", 1.0, 1.0),  # the option's text names it
    ("B or C", 0.0, 0.0),  # a hedge names no one option
    ("Not A.", 0.0, 0.0),  # ruling an option out is no answer
    ("E. Glucagon", 0.0, 0.0),  # not an option
    ("The answer is C. Actually the answer is B.", 0.0, 0.0),
    ("<think>B", 0.0, 0.0),  # an unclosed thought in a chat answer
    ("A recent course of naloxone: B", 1.0, 1.0),  # 'A recent' is a word, not option A
])
def test_chat_template_completions(text, correct, fmt):
    assert R.correctness(MCQ, text, opened=False) == correct
    assert R.format_score(MCQ, text, opened=False, reasoning=False) == fmt


@pytest.mark.parametrize("text,correct,several", [
    ("Yes. Smoking raises the risk.", 1.0, False),
    ("yes", 1.0, False),
    ("Maybe, the data are mixed.", 0.0, False),
    ("Yes. On balance the answer is no.", 0.0, True),
    ("The answer is yes.", 1.0, False),
    ("", 0.0, False),
])
def test_yes_no_items(text, correct, several):
    assert R.correctness(YESNO, text, opened=False) == correct
    assert R.read(YESNO, text, opened=False).several is several


def test_length_shaping_is_trls_soft_overlong_punishment():
    # L_max 10, cache 4: free up to 6 tokens, then a linear slope to -1 at 10, and -1 past it (DAPO eq. 13)
    assert [R.length_penalty(n, 10, 4) for n in (3, 6, 8, 10, 11)] == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_reward_functions_take_their_weights_from_the_params_and_report_the_answers():
    rl = RLConfig(max_completion_length=10, overlong_cache=4, rewards={"correctness": 2.0, "format": 0.5,
                                                                       "length": 0.25})
    rec = R.AnswerRecorder()
    funcs, weights = R.reward_functions(rl, template="chat", recorder=rec)
    assert [f.__name__ for f in funcs] == ["correctness", "format", "length"] and weights == [2.0, 0.5, 0.25]
    logged = {}

    def log_metric(name, value):
        logged[name] = value

    batch = {"prompts": ["p"] * 4, "completions": ["B. Naloxone", "A", "B or C", "B"],
             "completion_ids": [[1] * 3, [1] * 8, [1] * 3, [1] * 12], "answer": ["B"] * 4, "kind": ["choice"] * 4,
             "options": [R.options_json(MCQ["options"])] * 4, "opened": [False] * 4, "log_metric": log_metric}
    assert funcs[0](**batch) == [1.0, 0.0, 0.0, 1.0]
    assert funcs[1](**batch) == [1.0, 1.0, 0.0, 1.0]
    assert funcs[2](**batch) == [0.0, -0.5, 0.0, -1.0]
    # conversational completions (a chat prompt given as messages) are read the same way
    chat = dict(batch, completions=[[{"role": "assistant", "content": c}] for c in batch["completions"]])
    assert funcs[0](**chat) == [1.0, 0.0, 0.0, 1.0]
    # the distribution of chosen answers and the share of closed thoughts, per step, into the trainer's log
    assert logged["answers/B"] == 0.5 and logged["answers/A"] == 0.25 and logged["answers/none"] == 0.25
    assert logged["answers/thought_closed"] == 1.0  # no thought in a chat answer: nothing left open
    assert rec.totals == {"B": 4, "A": 2, "none": 2}
