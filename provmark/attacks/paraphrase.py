"""Paraphrase attack: the embedded (or any chat) LM rewrites a share of the sentences.

Sentences are ``watermark.words.sentences`` spans. Each picked sentence is sent alone, in the
prompt ``PROMPT``, through the tokenizer's chat template when it has one, and replaced by the first
line of the sampled reply (temperature 0.7; the sentence stays when the reply is empty). Sampling
is seeded from the caller's ``random.Random`` inside a forked torch RNG, so a seed replays the
attack on the same machine and the caller's torch RNG state is left as it was.
"""

from __future__ import annotations

from provmark.attacks.base import check_model, check_rate, check_rng, check_text, count
from provmark.errors import ParameterError
from provmark.watermark.models import format_prompts
from provmark.watermark.words import analyse, sentences

__all__ = ["PROMPT", "paraphrase", "paraphrase_batch"]

PROMPT = "Rewrite this sentence in other words. Reply with the rewritten sentence only.\n\n{sentence}"
"""The instruction each picked sentence is sent in."""


def paraphrase_batch(texts: list[str], share: float, rng, model, tokenizer, *, temperature: float = 0.7,
                     batch: int = 24) -> list[str]:
    """Each of ``texts`` with ``round(share * s)`` of its s sentences, picked uniformly at random,
    rewritten by the LM; the text outside them is kept byte for byte. Sentences of all texts are
    generated together, ``batch`` at a time (this is what makes a benchmark fast); the tokenizer
    must pad on the left, as ``models.load_model``'s does."""
    check_model("paraphrase", model, tokenizer)
    if isinstance(texts, str):
        raise ParameterError("texts must be a list of strings; paraphrase() takes one text")
    share, rng = check_rate(share, "share"), check_rng(rng)
    jobs = []  # (text index, start, end, sentence)
    for t, text in enumerate(texts):
        check_text(text)
        _, spans = sentences(analyse(text))
        for start, end in rng.sample(spans, count(share, len(spans))):
            jobs.append((t, start, end, text[start:end]))
    import torch

    device = next(model.parameters()).device
    seed = rng.getrandbits(63)
    rewrites = []
    for b in range(0, len(jobs), batch):
        chunk = jobs[b : b + batch]
        prompts = format_prompts(tokenizer, [PROMPT.format(sentence=j[3]) for j in chunk])
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        longest = max(len(tokenizer(j[3])["input_ids"]) for j in chunk)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed + b)
            out = model.generate(**enc, do_sample=True, temperature=temperature, max_new_tokens=int(longest * 1.5) + 8,
                                 pad_token_id=tokenizer.pad_token_id)
        for j, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :]):
            reply = tokenizer.decode(ids, skip_special_tokens=True).strip().split("\n")[0].strip()
            rewrites.append(reply or j[3])
    result = list(texts)
    for (t, start, end, _), new in sorted(zip(jobs, rewrites), key=lambda x: (x[0][0], -x[0][1])):
        result[t] = result[t][:start] + new + result[t][end:]
    return result


def paraphrase(text: str, share: float, rng, model, tokenizer, *, temperature: float = 0.7) -> str:
    """``text`` with ``round(share * s)`` of its s sentences, picked uniformly at random, rewritten
    by the LM (see the module doc); the text outside them is kept byte for byte."""
    return paraphrase_batch([text], share, rng, model, tokenizer, temperature=temperature)[0]
