"""provmark eval's zero-shot row: computed by detector.zero_shot's scorer on the model's own texts
under every attack, beside the schemes in the tables, off unless the suite asks for it."""

import functools
import math

import pytest

from provmark.detector.zero_shot import SamplingSettings, ZeroShotScorer
from provmark.errors import ParameterError
from provmark.evaluation import SUITES, SchemeSpec, Suite, generate_batched, run_suite
from provmark.evaluation.report import markdown_report
from provmark.evaluation.runner import _human
from provmark.watermark.hook import generate

PROMPTS = ["Tell me about rivers.", "Write a poem about snow, please."]
SUITE = Suite("zs", (SchemeSpec("kgw", "kgw", {"delta": 3.0}),), ("delete", "truncate"), prompts=2, tokens=30,
              human=2, batch=2, strengths={"delete": (0.2,), "truncate": (0.5,)}, zero_shot_references=20)
CONDITIONS = ["none", "delete@0.2", "truncate@0.5"]


@pytest.fixture(scope="module")
def result(tiny_model, tokenizer):
    return run_suite(SUITE, tiny_model, tokenizer, seed=0, prompts=PROMPTS, model_name="tiny")


def test_the_zero_shot_row_scores_the_models_texts_under_every_attack_and_the_human_texts(result):
    rows = [r for r in result.rows if r["scheme"] == "zero-shot"]
    kinds = {(r["attack"], r["strength"], r["kind"]) for r in rows}
    assert kinds == {("none", "", "generated"), ("delete", 0.2, "generated"), ("truncate", 0.5, "generated"),
                     ("none", "", "human")}
    assert len(rows) == 3 * len(PROMPTS) + SUITE.human
    for row in rows:
        assert row["log10_p_value"] >= math.log10(1 / 21) - 1e-4  # conformal floor over 20 references
        assert row["consistent_with_model"] in (0, 1) and row["z_score"] != ""
        for alpha in (0.01, 0.001):
            assert row[f"detected_{alpha:g}"] == int(row["log10_p_value"] <= math.log10(alpha))
    assert all(r["z_score"] == "" for r in result.rows if r["scheme"] != "zero-shot")


def test_the_zero_shot_row_is_the_scorers_tests_on_the_same_texts(result, tiny_model, tokenizer):
    plain = generate_batched(functools.partial(generate, tiny_model, tokenizer, key=None), PROMPTS, None,
                             tokens=SUITE.tokens, seed=0, batch=SUITE.batch, temperature=SUITE.temperature)
    scorer = ZeroShotScorer(tiny_model, tokenizer, sampling=SamplingSettings(temperature=SUITE.temperature))
    for kind, texts in (("generated", [g.text for g in plain]), ("human", _human(tokenizer, SUITE))):
        expected = scorer.test(texts, alpha=0.01, human_limit=20, min_tokens=1)
        rows = sorted((r for r in result.rows if (r["scheme"], r["attack"], r["kind"]) == ("zero-shot", "none", kind)),
                      key=lambda r: r["prompt_index"])
        assert [r["z_score"] for r in rows] == pytest.approx([round(e.z_score, 4) for e in expected], abs=1e-4)
        assert [r["log10_p_value"] for r in rows] == pytest.approx(
            [round(math.log10(e.p_value_human), 4) for e in expected], abs=1e-4)
        assert [r["consistent_with_model"] for r in rows] == [int(e.consistent_with_model) for e in expected]


def test_the_summary_and_report_put_the_zero_shot_row_beside_the_schemes(result):
    cells = [c for c in result.summary if c["scheme"] == "zero-shot"]
    assert [(c["attack"], c["strength"]) for c in cells] == [("none", ""), ("delete", 0.2), ("truncate", 0.5)]
    for cell in cells:
        rows = [r for r in result.rows if (r["scheme"], r["attack"], r["strength"], r["kind"])
                == ("zero-shot", cell["attack"], cell["strength"], "generated")]
        assert cell["detection_rate_0.01"] == pytest.approx(sum(r["detected_0.01"] for r in rows) / len(rows), abs=1e-4)
        assert cell["consistent_rate"] == pytest.approx(sum(r["consistent_with_model"] for r in rows) / len(rows),
                                                        abs=1e-4)
        assert cell["fpr_0.01"] == "" and cell["n"] == len(PROMPTS)
    assert cells[0]["n_human"] == SUITE.human and cells[0]["fpr_human_0.01"] != ""
    report = markdown_report(result, "provmark eval --suite zs --out out")
    detection = report.split("## Detection rate at alpha = 0.01\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert detection[0] == "| scheme | " + " | ".join(CONDITIONS) + " |"
    assert [line.split(" | ")[0] for line in detection[2:]] == ["| kgw", "| zero-shot"]
    section = report.split("## Zero-shot attribution (no key)\n\n", 1)[1]
    assert "1/21" in section and "| test (a) accepts at 0.01 |" in section and "| median z |" in section
    human = report.split("## False-positive rate on human-written text\n\n", 1)[1]
    assert "| zero-shot | 2 |" in human


def test_the_named_suites_run_the_zero_shot_row_and_bad_sizes_are_refused():
    assert all(s.zero_shot_references == 200 for s in SUITES.values())
    for bad in (5, -1, True, 20.0):
        with pytest.raises(ParameterError, match="zero_shot_references must be 0"):
            Suite("x", SUITE.schemes, ("delete",), prompts=2, tokens=16, zero_shot_references=bad)
    with pytest.raises(ParameterError, match="names the zero-shot row"):
        Suite("x", (SchemeSpec("zero-shot", "kgw"),), ("delete",), prompts=2, tokens=16, zero_shot_references=20)
