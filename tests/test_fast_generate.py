"""The evaluate stage's faster decoding (issue 31): a static KV cache with the decoding step compiled, and
transformers' continuous batching, give the same greedy answers as the eager path, item for item; the static path
runs every batch at one shape, so its step compiles once."""
import types

import pytest

ITEMS = ([{"kind": "freetext", "prompt": f"Question {i}: what " + "exactly " * (i % 4) + "causes scurvy?"}
          for i in range(5)]
         + [{"kind": "choice", "prompt": f"Pick {i}: " + "A, B " * (1 + i % 3) + "or C?"} for i in range(3)])


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir):
    """The tiny random model with its weights scaled up: greedy decoding then picks varied tokens (the plain random
    model repeats one token), so answers that agree token for token mean something."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)
    return model.eval()


def answers_with(model, tokenizer, engine, batch=3, **kw):
    from medqlora.evaluation.generate import generate

    return generate(model, tokenizer, ITEMS, 10, 4, batch, "base", print_fn=lambda *a: None, engine=engine,
                    max_cache_len=64, **kw)


def test_every_engine_gives_the_eager_paths_greedy_answers(sharp_model, tokenizer):
    eager = answers_with(sharp_model, tokenizer, "eager")
    assert len({a["text"] for a in eager}) == len(ITEMS), "varied answers: the comparison means something"
    assert sum(a["new_tokens"] for a in eager) == 5 * 10 + 3 * 4
    assert answers_with(sharp_model, tokenizer, "static") == eager
    assert answers_with(sharp_model, tokenizer, "continuous") == eager
    assert answers_with(sharp_model, tokenizer, "continuous", batch=2) == eager, "fewer answers at once"


def test_the_compiled_static_path_gives_the_same_answers(sharp_model, tokenizer, monkeypatch):
    """The static path through torch.compile as on a GPU (here with the eager backend: traced by dynamo, the decoding
    step run from the traced graph): the same answers as without the compiler."""
    import torch
    from transformers import CompileConfig

    from medqlora.evaluation import fast_generate as FG

    def compiled(model, max_cache_len):
        cc = CompileConfig(fullgraph=False, dynamic=False, backend="eager", mode="default")
        cc._compile_all_devices = True  # transformers compiles on the CPU only when told to
        return {"cache_implementation": "static", "max_cache_len": max_cache_len, "compile_config": cc}

    monkeypatch.setattr(FG, "static_kwargs", compiled)
    torch._dynamo.reset()
    eager = answers_with(sharp_model, tokenizer, "eager")
    assert answers_with(sharp_model, tokenizer, "static") == eager
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1, "the decoding step went through torch.compile"


def test_the_static_path_runs_every_batch_at_the_passes_shape(sharp_model, tokenizer, monkeypatch):
    shapes = []
    real = sharp_model.generate

    def spy(**kw):
        shapes.append((kw["input_ids"].shape[0], kw.get("max_cache_len"), kw.get("cache_implementation")))
        return real(**kw)

    monkeypatch.setattr(sharp_model, "generate", spy)
    out = answers_with(sharp_model, tokenizer, "static")
    # 5 free-text items in batches of 3 (3 + 2 filled up to 3), 3 closed ones in one batch: one shape, one cache size
    assert shapes == [(3, 64, "static")] * 3 and len(out) == len(ITEMS)
    shapes.clear()
    answers_with(sharp_model, tokenizer, "eager")
    assert [s[0] for s in shapes] == [3, 2, 3] and {s[2] for s in shapes} == {None}, "eager: as before"


def test_a_prompt_longer_than_the_planned_cache_gets_a_cache_that_holds_it(sharp_model, tokenizer):
    from medqlora.evaluation.generate import generate

    long = [{"kind": "freetext", "prompt": "Why " * 80 + "?"}]
    eager = generate(sharp_model, tokenizer, long, 5, 5, 1, "q", print_fn=lambda *a: None)
    assert generate(sharp_model, tokenizer, long, 5, 5, 1, "q", print_fn=lambda *a: None, engine="static",
                    max_cache_len=16) == eager


def test_auto_keeps_the_eager_path_until_measured_on_a_gpu_and_unsloth_4bit_loads_through_transformers():
    from medqlora.evaluation import fast_generate as FG

    cfg = types.SimpleNamespace(eval=types.SimpleNamespace(decoding="auto"))
    assert FG.choose(cfg, cuda=False)[0] == "eager"
    engine, why = FG.choose(cfg, cuda=True)
    assert engine == "eager" and "eval.decoding: static" in why, "opt in until a device call has measured it"
    cfg.eval.decoding = "continuous"
    assert FG.choose(cfg, cuda=False) == ("continuous", "eval.decoding: continuous")
    assert FG.load_backend("static", "unsloth", merged=False) == "hf"
    assert FG.load_backend("eager", "unsloth", merged=False) == "unsloth"
    assert FG.load_backend("static", "hf", merged=True) == "hf"


def test_a_4bit_quantizer_is_set_aside_only_while_generate_runs():
    from medqlora.evaluation import fast_generate as FG

    quantizer = types.SimpleNamespace(is_compileable=False)
    inner = types.SimpleNamespace(hf_quantizer=quantizer)
    peft = types.SimpleNamespace(get_base_model=lambda: inner)
    with FG.compile_allowed(peft):
        assert inner.hf_quantizer is None
    assert inner.hf_quantizer is quantizer
    with pytest.raises(RuntimeError), FG.compile_allowed(peft):
        raise RuntimeError("generation failed")
    assert inner.hf_quantizer is quantizer, "put back after a failure too"


def test_a_failing_fast_engine_falls_back_to_eager_once_and_says_so(sharp_model, tokenizer, monkeypatch):
    """A compiled or paged path that fails on some model or library version must not fail the stage: the batch is
    answered again eagerly, the failure is logged and kept, and the pass's later calls go straight to eager."""
    from medqlora.evaluation.generate import generate

    eager = answers_with(sharp_model, tokenizer, "eager")
    real, tried = sharp_model.generate, []

    def static_breaks(**kw):
        tried.append(kw.get("cache_implementation"))
        if kw.get("cache_implementation") == "static":
            raise RuntimeError("Unsupported: a graph break the compiler cannot handle")
        return real(**kw)

    monkeypatch.setattr(sharp_model, "generate", static_breaks)
    lines, fallback = [], []
    out = generate(sharp_model, tokenizer, ITEMS, 10, 4, 3, "base", print_fn=lines.append, engine="static",
                   max_cache_len=64, fallback_log=fallback)
    assert out == eager
    assert fallback == [{"label": "base", "engine": "static",
                         "error": "RuntimeError: Unsupported: a graph break the compiler cannot handle"}]
    assert any("static decoding failed" in line and "going on with eager decoding" in line for line in lines)
    assert tried.count("static") == 1, "tried once, then eager for the rest of the call"
    tried.clear()
    generate(sharp_model, tokenizer, ITEMS, 10, 4, 3, "fine-tuned", print_fn=lines.append, engine="static",
             max_cache_len=64, fallback_log=fallback)
    assert "static" not in tried and len(fallback) == 1, "a later call of the pass starts eager"
