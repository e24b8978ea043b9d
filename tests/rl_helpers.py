"""Shared by the reinforce tests: a tiny model that answers multiple-choice prompts with a letter, and items."""
import random
from pathlib import Path

LETTERS = "ABCD"


def mcq(i: int, answer: str = "A", stem: str = "Which drug reverses poisoning") -> dict:
    return {"id": f"q{i}", "question": f"{stem} number {i}?",
            "options": {k: f"Drug {k.lower()}{i}" for k in LETTERS}, "answer": answer}


def letter_model(out: Path, tiny_model_dir: str, steps: int = 40, seed: int = 0) -> str:
    """The tiny random Llama taught (all its weights, a few seconds on a CPU) to answer a multiple-choice chat prompt
    with a letter and stop ('C.<|im_end|>'), A to D equally often over its training prompts: GRPO then has answers to
    compare. (A random 2-layer model never says a letter: every group's rewards would be equal, and nothing learnt.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqlora.data.formats import Example
    from medqlora.data.prompts import build_prompt
    from medqlora.testing import save_model

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = random.Random(seed)
    rows = []
    for i in range(64):
        ex = Example.from_dict({**mcq(1000 + i, stem="Which agent is indicated for case"), "kind": "choice"})
        prompt = tok(build_prompt(ex, tok, "chat"), add_special_tokens=False)["input_ids"]
        rows.append((prompt, rng.choice(LETTERS)))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = rng.sample(rows, 8)
        # the completion is the letter, '.', end of turn; only its tokens are learnt
        seqs = [(p, tok(f"{letter}.", add_special_tokens=False)["input_ids"] + [eos]) for p, letter in batch]
        width = max(len(p) + len(c) for p, c in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id or 0)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        targets = []
        for b, (p, c) in enumerate(seqs):
            ids[b, :len(p) + len(c)] = torch.tensor(p + c)
            mask[b, :len(p) + len(c)] = 1
            targets += [(b, len(p) - 1 + j, t) for j, t in enumerate(c)]
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows_b, pos, tgt = (torch.tensor(x) for x in zip(*targets))
        logits = model.lm_head(hidden[rows_b, pos])
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_model(model, tok, out)
