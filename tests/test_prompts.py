import pytest

from medqlora.data.formats import Example
from medqlora.data.prompts import build_completion, build_prompt, tokenize_example, user_text
from medqlora.evaluation.scoring import answer_part

FREE = Example("1", "freetext", "What causes scurvy?", "Vitamin C deficiency.")
MCQ = Example("2", "choice", "Scurvy is caused by lack of?", "B", options={"A": "Vitamin A", "B": "Vitamin C"})
R1 = Example("3", "freetext", "What causes scurvy?", "Vitamin C deficiency.", reasoning="Collagen needs vitamin C.")


def test_prompt_is_masked_and_answer_with_eos_is_trained(tokenizer):
    prompt = build_prompt(FREE, tokenizer, "chat")
    completion = build_completion(FREE, prompt, tokenizer, "chat")
    tok = tokenize_example(prompt, completion, tokenizer, "chat")
    ids, labels = tok["input_ids"], tok["labels"]
    n = tok["n_prompt_tokens"]
    assert len(ids) == len(labels) == tok["n_tokens"]
    assert all(label == -100 for label in labels[:n]), "every prompt token must be masked"
    assert labels[n:] == ids[n:], "every answer token must be trained"
    assert tokenizer.decode(ids[:n]) == prompt
    assert tokenizer.decode(ids[n:]).strip() == "Vitamin C deficiency.<|im_end|>"
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"), "the model must learn to stop"


def test_chat_template_wraps_question_as_user_turn(tokenizer):
    prompt = build_prompt(FREE, tokenizer, "chat", system_prompt="You are a physician.")
    assert "<|im_start|>system\nYou are a physician.<|im_end|>" in prompt
    assert "<|im_start|>user\nWhat causes scurvy?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_multiple_choice_prompt_lists_options_and_answer_is_letter_first(tokenizer):
    text = user_text(MCQ)
    assert "A. Vitamin A\nB. Vitamin C" in text and "letter" in text
    assert build_completion(MCQ, "", tokenizer, "chat").startswith("B. Vitamin C")


def test_reasoning_template_trains_the_thought_then_the_answer(tokenizer):
    prompt = build_prompt(R1, tokenizer, "reasoning")
    completion = build_completion(R1, prompt, tokenizer, "reasoning")
    assert completion.startswith("<think>\nCollagen needs vitamin C.\n</think>\n\nVitamin C deficiency.")
    # an R1-distill template that already opens <think> in the generation prompt is not given a second one
    again = build_completion(R1, prompt + "<think>\n", tokenizer, "reasoning")
    assert again.startswith("Collagen needs vitamin C.\n</think>")


def test_plain_template_for_models_without_chat_template(tokenizer):
    prompt = build_prompt(FREE, tokenizer, "plain")
    assert prompt == "### Question:\nWhat causes scurvy?\n\n### Answer:\n"


def test_reasoning_answer_is_after_the_thought():
    assert answer_part("<think>\nhmm\n</think>\n\nB. Vitamin C") == "B. Vitamin C"
    assert answer_part("<think>\nstill thinking") == ""
    assert answer_part("  plain answer ") == "plain answer"


@pytest.mark.parametrize("template", ["chat", "reasoning", "plain"])
def test_evaluation_feeds_the_prompt_tokens_training_saw(tokenizer, template):
    from medqlora.data.prompts import adds_special_tokens

    ex = Example("1", "freetext", "What causes scurvy?", "Vitamin C deficiency.")
    prompt = build_prompt(ex, tokenizer, template)
    trained = tokenize_example(prompt, build_completion(ex, prompt, tokenizer, template), tokenizer, template)
    # evaluation batches prompts through the tokenizer with the same flag (medqlora.evaluation.generate)
    asked = tokenizer([prompt], add_special_tokens=adds_special_tokens(template))["input_ids"][0]
    assert asked == trained["input_ids"][:trained["n_prompt_tokens"]]
