"""The multi-bit evaluation harness runs end to end on a small model and writes its plots."""

import math
import statistics

import pytest
import torch

from benchmarks.multibit import FIELDS, Cell, plot, quality, run_cell, summarise


@pytest.fixture(scope="module")
def rows(tiny_model, tokenizer):
    prompts = ["Tell me about rivers.", "Write a poem about snow, please."]
    out = []
    for cell in (Cell("none", 0, 0.0, 1.0), Cell("mpac-r4", 8, 3.0, 1.0), Cell("majormark+", 8, 3.0, 1.0)):
        out += run_cell(tiny_model, tokenizer, prompts, cell, tokens=40, prefixes=[20, 40], seed=0, batch=2)
    return out


def test_rows_have_every_field_and_sane_values(rows):
    assert len(rows) == 3 * 2 * 2
    for row in rows:
        assert set(row) == set(FIELDS)
        assert row["perplexity"] > 1 and 0 <= row["top5_hit_rate"] <= 1
        if row["label"] != "none":
            assert 0 <= row["bit_accuracy"] <= 1 and row["exact_match"] in (0, 1) and row["log10_p_value"] <= 0


def test_watermarked_cells_decode_their_payloads_at_full_length(rows):
    # A near-uniform random model carries 8 bits at delta 3 in 40 tokens.
    full = [r for r in rows if r["label"] != "none" and r["prefix_tokens"] == 40]
    assert statistics.fmean(r["bit_accuracy"] for r in full) >= 0.9


def test_greedy_text_scores_better_quality_than_random_tokens(tiny_model, tokenizer):
    prompt = "Hello there."
    templated = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(templated, add_special_tokens=False)["input_ids"]
    greedy = tiny_model.generate(torch.tensor([ids]), max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=2)
    greedy = greedy[0, len(ids) :].tolist()
    noise = torch.randint(0, 49152, (30,), generator=torch.Generator().manual_seed(0)).tolist()
    (ppl_greedy, top5_greedy), (ppl_noise, top5_noise) = [quality(tiny_model, tokenizer, [prompt], [c], [30], 1)[0][30]
                                                          for c in (greedy, noise)]
    assert math.isfinite(ppl_greedy) and ppl_greedy < ppl_noise
    assert top5_greedy == 1.0 and top5_noise < 0.2


def test_summary_and_plots(rows, tmp_path):
    table = summarise(rows)
    assert {t["label"] for t in table} == {"none", "mpac-r4", "majormark+"}
    plot(table, tmp_path, 8, 3.0, 1.0)
    assert (tmp_path / "accuracy_vs_tokens.png").stat().st_size > 1000
    assert (tmp_path / "accuracy_vs_perplexity.png").stat().st_size > 1000
