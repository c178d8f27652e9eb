"""Quality and accuracy metrics shared by ``provmark eval`` and ``benchmarks.multibit``.

Quality is measured under the unwatermarked model that generated the text, given the prompt as
generation saw it (through the chat template when the tokenizer has one):

- perplexity: exp of the mean negative log-likelihood of the completion's tokens;
- top-5 hit rate: the share of the completion's tokens that were among the model's five most
  likely next tokens at their step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from provmark.watermark.models import format_prompts

__all__ = ["quality", "bit_accuracy"]


def quality(model, tokenizer, prompts: Sequence[str], completions: Sequence[Sequence[int]],
            prefixes: Sequence[int] | None, batch: int) -> list[dict[int, tuple[float, float]]]:
    """Per completion: prefix length -> (perplexity, top-5 hit rate) of its first ``prefix`` tokens.

    Args:
        prompts: one prompt per completion (templated as ``hook.generate`` does).
        completions: token ids (no special tokens) of each completion.
        prefixes: prefix lengths to score; a prefix longer than a completion is left out of its dict.
            None scores each whole completion (its dict's one key is its length).
        batch: completions per forward pass (left-padded, as in generation).
    """
    texts = format_prompts(tokenizer, list(prompts))
    templated = texts != list(prompts)
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch):
        rows = []
        for text, completion in zip(texts[start : start + batch], completions[start : start + batch]):
            prompt_ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
            rows.append((prompt_ids, list(completion)))
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, c) in enumerate(rows):  # left padding, as in generation
            sequence = p + c
            ids[i, width - len(sequence) :] = torch.tensor(sequence)
            mask[i, width - len(sequence) :] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for i, (_, c) in enumerate(rows):
            if not c:
                out.append({})
                continue
            first = width - len(c)  # column of the first completion token
            step_logits = logits[i, first - 1 : width - 1]
            target = torch.tensor(c)
            nll = -torch.log_softmax(step_logits, dim=-1).gather(1, target[:, None]).squeeze(1)
            top5 = (step_logits.topk(5, dim=-1).indices == target[:, None]).any(dim=1).float()
            lengths = [len(c)] if prefixes is None else [k for k in prefixes if k <= len(c)]
            out.append({k: (math.exp(nll[:k].mean().item()), top5[:k].mean().item()) for k in lengths})
    return out


def bit_accuracy(config, payload: int, decoded: int | None) -> float:
    """Share of the codeword bits of ``payload`` that ``decoded`` (a detector's payload, None when
    it decoded nothing) gets right, under a multi-bit scheme's ``config``."""
    truth = config.codeword_bits(payload)
    if decoded is None:
        return 0.0
    return sum(a == b for a, b in zip(truth, config.codeword_bits(decoded))) / len(truth)
