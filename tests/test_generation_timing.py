"""The evaluate stage's generation rate without its one-time cost: the first batch of a pass (compilation, caches,
dequantization on a GPU) is timed apart from the batches after it."""
import time


def test_the_first_batch_is_timed_apart_from_the_steady_rate(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from medqlora.evaluation.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real = model.generate
    calls = []

    def slow_first_call(**kw):  # a one-time cost of 1 s on the first batch only
        calls.append(kw["input_ids"].shape[0])
        if len(calls) == 1:
            time.sleep(1.0)
        return real(**kw)

    model.generate = slow_first_call
    items = [{"kind": "freetext", "prompt": f"Question {i}?"} for i in range(6)]
    timing = {}
    answers = generate(model, tokenizer, items, 4, 4, batch_size=2, label="base", print_fn=lambda *a: None,
                       sampling_kw={"do_sample": False, "min_new_tokens": 4}, timing=timing)
    assert calls == [2, 2, 2]
    assert timing["first_batch_tokens"] == 8 and timing["steady_tokens"] == 16
    assert sum(a["new_tokens"] for a in answers) == timing["first_batch_tokens"] + timing["steady_tokens"]
    assert timing["first_batch_seconds"] >= 1.0 > timing["steady_seconds"]
    # a second call in the same pass (another eval set) adds to the steady part
    generate(model, tokenizer, items[:2], 4, 4, batch_size=2, label="base", print_fn=lambda *a: None,
             sampling_kw={"do_sample": False, "min_new_tokens": 4}, timing=timing)
    assert timing["first_batch_tokens"] == 8 and timing["steady_tokens"] == 24
