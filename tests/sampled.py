"""Token ids sampled without a model: uniform logits through a key's watermark processor (strongly
watermarked), or uniform ids (plain), over ``vocab`` ids (default SmolLM2's), reproducible from a seed."""

import torch

from provmark.watermark.hook import WatermarkLogitsProcessor

VOCAB = 49152  # SmolLM2's


def watermarked_ids(key, payload=None, *, tokens: int, seed: int = 0, vocab: int = VOCAB) -> list[int]:
    """``tokens`` ids sampled from uniform logits through the key's processor (with ``payload``)."""
    processor = WatermarkLogitsProcessor(key, None if payload is None else [payload])
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (1, key.config.context_width), generator=generator)
    for _ in range(tokens):
        scores = processor(ids, torch.zeros(1, vocab))
        ids = torch.cat([ids, torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)], dim=1)
    return ids[0, key.config.context_width:].tolist()


def plain_ids(*, tokens: int, seed: int = 1, vocab: int = VOCAB) -> list[int]:
    """``tokens`` uniform ids."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (tokens,), generator=generator).tolist()
