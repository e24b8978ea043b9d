"""The evaluate stage's generation rate without its one-time cost: the first batch of a pass (compilation, caches,
dequantization on a GPU) is timed apart from the batches after it. The clock is a fake one that only the model's
generate moves: the test checks where the seconds are counted, never how fast this machine is."""
import types


def test_the_first_batch_is_timed_apart_from_the_steady_rate(tiny_model_dir, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    from medqlora.evaluation import generate as G
    from medqlora.evaluation.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real = model.generate
    calls = []
    now = [1000.0]
    monkeypatch.setattr(G, "time", types.SimpleNamespace(time=lambda: now[0]))

    def slow_first_call(**kw):  # 10 s for the first batch (its one-time costs), 1 s for each after it
        calls.append(kw["input_ids"].shape[0])
        now[0] += 10.0 if len(calls) == 1 else 1.0
        return real(**kw)

    model.generate = slow_first_call
    items = [{"kind": "freetext", "prompt": f"Question {i}?"} for i in range(6)]
    timing = {}
    answers = generate(model, tokenizer, items, 4, 4, batch_size=2, label="base", print_fn=lambda *a: None,
                       sampling_kw={"do_sample": False, "min_new_tokens": 4}, timing=timing)
    assert calls == [2, 2, 2]
    assert timing["first_batch_tokens"] == 8 and timing["steady_tokens"] == 16
    assert sum(a["new_tokens"] for a in answers) == timing["first_batch_tokens"] + timing["steady_tokens"]
    assert timing["first_batch_seconds"] == 10.0 and timing["steady_seconds"] == 2.0
    # a second call in the same pass (another eval set) adds to the steady part
    generate(model, tokenizer, items[:2], 4, 4, batch_size=2, label="base", print_fn=lambda *a: None,
             sampling_kw={"do_sample": False, "min_new_tokens": 4}, timing=timing)
    assert timing["first_batch_tokens"] == 8 and timing["steady_tokens"] == 24
    assert timing["first_batch_seconds"] == 10.0 and timing["steady_seconds"] == 3.0


def test_a_reasoning_model_gets_room_for_its_thought_on_closed_form_items(tiny_model_dir, tokenizer):
    """Before: closed-form items got eval.max_new_tokens_choice (16) with the reasoning template too, so an R1
    model's thought never closed and no answer after </think> was ever read."""
    from transformers import AutoModelForCausalLM

    from medqlora.evaluation.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real, budgets = model.generate, []

    def record(**kw):
        budgets.append(kw["max_new_tokens"])
        return real(**kw)

    model.generate = record
    items = [{"kind": "mcq", "prompt": "Which? A. x B. y"}, {"kind": "freetext", "prompt": "Why?"}]
    for template, want in (("chat", {3, 7}), ("reasoning", {7})):
        budgets.clear()
        generate(model, tokenizer, items, 7, 3, batch_size=2, label="base", print_fn=lambda *a: None,
                 template=template, sampling_kw={"do_sample": False})
        assert set(budgets) == want, (template, budgets)
