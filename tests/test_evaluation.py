"""provmark eval: a tiny suite runs end to end on the tiny model and writes its CSVs, plots and report."""

import csv
import math
import shutil

import pytest
import torch
from click.testing import CliRunner

from provmark.attacks import ATTACKS
from provmark.cli import cli
from provmark.errors import OutputError, ParameterError
from provmark.evaluation import FIELDS, SUMMARY_FIELDS, SchemeSpec, Suite, get_suite, run_suite, write_outputs
from provmark.evaluation.report import markdown_report
from provmark.watermark.models import LoadedModel

PROMPTS = ["Tell me about rivers.", "Write a poem about snow, please.", "Explain how bread rises."]
TINY = Suite(
    "tiny",
    (SchemeSpec("kgw", "kgw", {"delta": 3.0}),
     SchemeSpec("mpac", "mpac", {"radix": 4, "bits": 8, "delta": 3.0}),
     SchemeSpec("balance", "balance", {"bits": 8, "segment_bits": 8, "proxy_context": "window", "delta": 3.0}),
     SchemeSpec("synonym", "synonym")),
    ("delete", "truncate", "copy_paste"),
    prompts=3, tokens=40, human=2, batch=3,
    strengths={"delete": (0.1,), "truncate": (0.5,), "copy_paste": (0.5,)},
)
CONDITIONS = ["none", "delete@0.1", "truncate@0.5", "copy_paste@0.5"]


class ConstantEncoder:
    """A sentence encoder under which every sentence is the same: the similarity filter passes all."""

    def embed(self, texts):
        return torch.ones(len(texts), 4) / 2


@pytest.fixture(scope="module")
def result(tiny_model, tokenizer):
    return run_suite(TINY, tiny_model, tokenizer, seed=0, prompts=PROMPTS, encoder=ConstantEncoder(), model_name="tiny")


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    """The outputs as a machine without a browser writes them (the PNG has its own test)."""
    folder = tmp_path_factory.mktemp("eval") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("provmark.evaluation.report.BROWSERS", ("no-such-browser-here",))
        with pytest.warns(UserWarning, match="no browser"):
            paths = write_outputs(result, folder, "provmark eval --suite tiny --out out")
    return folder, paths


def _cell(result, scheme, attack, strength=""):
    (cell,) = [c for c in result.summary if (c["scheme"], c["attack"], c["strength"]) == (scheme, attack, strength)]
    return cell


def test_every_scheme_attack_strength_and_kind_has_one_row_per_prompt(result):
    assert len(result.rows) == 4 * (len(CONDITIONS) * len(PROMPTS) * 2 + TINY.human)
    keys = {(r["scheme"], r["attack"], r["strength"], r["prompt_index"], r["kind"]) for r in result.rows}
    assert len(keys) == len(result.rows)
    assert all(set(r) == set(FIELDS) for r in result.rows)


def test_the_summary_has_a_cell_per_scheme_and_condition_and_the_unwatermarked_quality_row(result):
    assert len(result.summary) == 4 * len(CONDITIONS) + 1
    assert [c["scheme"] for c in result.summary[-1:]] == ["unwatermarked"]
    assert all(set(c) == set(SUMMARY_FIELDS) for c in result.summary)
    assert all(c["n"] == len(PROMPTS) for c in result.summary)
    assert [c["n_human"] for c in result.summary[:-1]] == [TINY.human if c["attack"] == "none" else ""
                                                           for c in result.summary[:-1]]


def test_human_texts_are_detected_unattacked_with_every_key_at_the_suite_length(result, tokenizer):
    from provmark.evaluation.human import human_texts

    human = [r for r in result.rows if r["kind"] == "human"]
    assert sorted({r["scheme"] for r in human}) == ["balance", "kgw", "mpac", "synonym"]
    assert {(r["attack"], r["strength"]) for r in human} == {("none", "")}
    for row in human:
        assert row["perplexity"] == "" and row["bit_accuracy"] == ""
        if row["scheme"] == "kgw":  # re-tokenising the cut text may merge a token at the cut
            assert abs(row["num_tokens"] - TINY.tokens) <= 2
    texts = human_texts(2, min_words=40)
    assert len(texts) == 2 and all(len(t.split()) >= 40 for t in texts)
    assert "Python" in " ".join(human_texts(20, min_words=40))


def test_the_human_corpus_refuses_bad_sizes():
    from provmark.evaluation.human import human_texts

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ParameterError, match="must be a positive integer"):
            human_texts(bad, 10)
        with pytest.raises(ParameterError, match="must be a positive integer"):
            human_texts(3, bad)


def test_generation_time_schemes_are_detected_in_unattacked_text(result):
    # The tiny model is near-uniform, so 40 tokens at delta 3 carry the watermark plainly.
    for scheme in ("kgw", "mpac", "balance"):
        assert _cell(result, scheme, "none")["detection_rate_0.01"] == 1.0, scheme


def test_the_unwatermarked_controls_and_human_texts_raise_no_false_alarm_at_the_strict_level(result):
    cells = [c for c in result.summary if c["scheme"] != "unwatermarked"]
    assert all(c["fpr_0.001"] == 0.0 for c in cells)
    assert all(c["fpr_human_0.001"] == 0.0 for c in cells if c["attack"] == "none")


def test_detection_rates_and_fprs_are_shares_and_agree_with_the_rows(result):
    for cell in result.summary[:-1]:
        rows = [r for r in result.rows if (r["scheme"], r["attack"], r["strength"]) == (cell["scheme"], cell["attack"],
                                                                                           cell["strength"])]
        for alpha in (0.01, 0.001):
            marked = [r["detected_" + f"{alpha:g}"] for r in rows if r["kind"] == "watermarked"]
            control = [r["detected_" + f"{alpha:g}"] for r in rows if r["kind"] == "unwatermarked"]
            human = [r["detected_" + f"{alpha:g}"] for r in rows if r["kind"] == "human"]
            assert cell[f"detection_rate_{alpha:g}"] == pytest.approx(sum(marked) / len(marked), abs=1e-4)
            assert cell[f"fpr_{alpha:g}"] == pytest.approx(sum(control) / len(control), abs=1e-4)
            if human:
                assert cell[f"fpr_human_{alpha:g}"] == pytest.approx(sum(human) / len(human), abs=1e-4)
            assert all(r["detected_" + f"{alpha:g}"] == int(r["log10_p_value"] <= math.log10(alpha)) for r in rows)
        assert cell["detection_rate_0.001"] <= cell["detection_rate_0.01"]


def test_bit_accuracy_and_exact_match_only_for_multi_bit_watermarked_texts(result):
    for row in result.rows:
        multi = row["scheme"] in ("mpac", "balance") and row["kind"] == "watermarked"
        assert (row["bit_accuracy"] != "") == multi and (row["exact_match"] != "") == multi
        if multi:
            assert 0 <= row["bit_accuracy"] <= 1 and row["exact_match"] in (0, 1)
    assert _cell(result, "mpac", "none")["bit_accuracy"] >= 0.9


def test_quality_is_scored_on_unattacked_texts_only(result):
    for row in result.rows:
        scored = row["attack"] == "none" and row["kind"] != "human"
        assert (row["perplexity"] != "") == scored
        if scored:
            assert row["perplexity"] > 1 and 0 <= row["top5_hit_rate"] <= 1


def test_balance_locates_a_text_pasted_into_unwatermarked_hosts(result):
    # locate() searches windows of the suite's length; half of the pasted text is the mark.
    assert _cell(result, "balance", "copy_paste", 0.5)["detection_rate_0.01"] >= 2 / 3


def test_truncation_halves_the_tokens_scored(result):
    def tokens(attack, strength=""):
        return sum(r["num_tokens"] for r in result.rows if r["scheme"] == "kgw" and r["kind"] == "watermarked"
                   and r["attack"] == attack and r["strength"] == strength)

    assert 0.3 < tokens("truncate", 0.5) / tokens("none") < 0.7


def test_the_run_replays_with_the_same_seed(result, tiny_model, tokenizer):
    suite = Suite("replay", TINY.schemes[:2], ("delete",), prompts=2, tokens=16, batch=2, strengths={"delete": (0.2,)})
    first, second = (run_suite(suite, tiny_model, tokenizer, seed=3, prompts=PROMPTS[:2]) for _ in range(2))
    assert first.rows == second.rows


def test_the_csvs_have_the_documented_columns(written, result):
    folder, paths = written
    assert [p.name for p in paths] == ["results.csv", "summary.csv", "detection_rate_0.01.png",
                                       "detection_rate_0.001.png", "explanation.html", "report.md"]
    with (folder / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == FIELDS
        assert sum(1 for _ in reader) == len(result.rows)
    with (folder / "summary.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == SUMMARY_FIELDS
        assert sum(1 for _ in reader) == len(result.summary)
    for name in ("detection_rate_0.01.png", "detection_rate_0.001.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (folder / name).stat().st_size > 5000


def test_the_report_has_one_table_per_metric_with_schemes_as_rows_and_conditions_as_columns(written):
    folder, _ = written
    report = (folder / "report.md").read_text()
    assert report.startswith("# provmark evaluation: suite `tiny`\n")
    assert "- command: `provmark eval --suite tiny --out out`" in report
    assert "- machine: " in report and "- date: " in report
    header = "| scheme | " + " | ".join(CONDITIONS) + " |"
    titles = ["Detection rate at alpha = 0.01", "Detection rate at alpha = 0.001",
              "Empirical false-positive rate at alpha = 0.01 (unwatermarked texts)",
              "Empirical false-positive rate at alpha = 0.001 (unwatermarked texts)",
              "Median log10 p-value (watermarked texts)", "Bit accuracy (multi-bit schemes)",
              "Exact match of the payload (multi-bit schemes)"]
    for title in titles:
        section = report.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
        schemes = ["mpac", "balance"] if "multi-bit" in title else ["kgw", "mpac", "balance", "synonym"]
        assert section[0] == header
        assert [line.split(" | ")[0] for line in section[2:]] == [f"| {s}" for s in schemes]
        assert all(line.count("|") == len(CONDITIONS) + 2 for line in section)
    human = report.split("## False-positive rate on human-written text\n\n", 1)[1].split("\n\n", 2)[1].splitlines()
    assert human[0] == ("| scheme | human texts | human FPR at 0.01 | human FPR at 0.001 | generated FPR at 0.01 "
                        "| generated FPR at 0.001 |")
    assert [line.split(" | ")[:2] for line in human[2:]] == [[f"| {s}", "2"] for s in ("kgw", "mpac", "balance",
                                                                                       "synonym")]
    quality = report.split("## Quality of the unattacked texts\n", 1)[1]
    assert "| unwatermarked | " in quality and "| synonym | " in quality
    assert "![detection_rate_0.001.png](detection_rate_0.001.png)" in report
    explained = report.split("## Explanation of one text\n\n", 1)[1]
    assert "(mpac, prompt 0, delete@0.1)" in explained and "No browser was found" in explained


def test_one_attacked_text_is_explained_and_its_page_holds_that_text(result, written):
    from html.parser import HTMLParser

    assert result.explained == "mpac, prompt 0, delete@0.1"
    explanation = result.explanation
    assert explanation.result.scheme == "mpac" and explanation.result.payload is not None
    assert len(explanation.tokens) >= explanation.result.num_scored_tokens > 20

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.text = 0, []

        def handle_starttag(self, tag, attrs):
            if self.inside or ("id", "text") in attrs:
                self.inside += 1

        def handle_endtag(self, tag):
            self.inside -= bool(self.inside)

        def handle_data(self, data):
            if self.inside:
                self.text.append(data)

    page = Text()
    page.feed((written[0] / "explanation.html").read_text())
    assert "".join(page.text) == explanation.text


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no Chromium on this machine (Debian package chromium)")
def test_headless_chromium_renders_the_explanation_as_a_trimmed_png(written, tmp_path):
    from PIL import Image

    from provmark.evaluation.report import screenshot

    assert screenshot(written[0] / "explanation.html", tmp_path / "page.png", width=800, height=3000)
    with Image.open(tmp_path / "page.png") as image:
        assert image.width == 800 and 300 < image.height < 3000  # content kept, blank page below cut
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # coloured tokens, not a blank page


def test_screenshot_says_so_when_no_browser_is_installed(tmp_path, monkeypatch):
    from provmark.evaluation.report import screenshot

    monkeypatch.setattr("provmark.evaluation.report.BROWSERS", ("no-such-browser-here",))
    assert screenshot(tmp_path / "x.html", tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()


def test_a_detection_table_shows_the_rates_of_the_summary(result):
    report = markdown_report(result, "cmd")
    table = report.split("## Detection rate at alpha = 0.001\n\n", 1)[1].split("\n\n", 1)[0]
    kgw_line = next(line for line in table.splitlines() if line.startswith("| kgw |"))
    assert kgw_line.split(" | ")[1] == f"{_cell(result, 'kgw', 'none')['detection_rate_0.001']:.2f}"


def test_named_suites_run_every_scheme_and_the_standard_strengths():
    quick, full = get_suite("quick"), get_suite("full")
    for suite in (quick, full):
        assert [s.label for s in suite.schemes] == ["kgw", "mpac", "majormark+", "balance", "vanilla", "synonym"]
        assert suite.strengths["delete"] == (0.05, 0.1, 0.2) and suite.strengths["copy_paste"] == (0.5, 0.25, 0.1)
    assert dict(quick.schemes[3].params) == {"bits": 20, "segment_bits": 20, "proxy_context": "window"}
    assert "paraphrase" not in quick.attacks and "lm_synonyms" not in quick.attacks
    assert set(full.attacks) == set(ATTACKS)
    assert full.tokens == 200 and full.prompts > quick.prompts
    assert quick.human == quick.prompts and full.human == full.prompts


def test_an_unknown_suite_is_refused_with_the_names_of_the_suites():
    with pytest.raises(ParameterError, match=r"^unknown suite 'nope'; the suites are quick, full$"):
        get_suite("nope")


def test_a_suite_refuses_unknown_attacks_and_too_few_prompts():
    with pytest.raises(ParameterError, match="unknown attack"):
        Suite("x", TINY.schemes, ("shout",), prompts=2, tokens=16)
    with pytest.raises(ParameterError, match="prompts must be an integer >= 2"):
        Suite("x", TINY.schemes, ("delete",), prompts=1, tokens=16)
    with pytest.raises(ParameterError, match="radix"):
        SchemeSpec("mpac", "mpac", {"radix": 3})


def test_cli_refuses_an_unknown_suite():
    out = CliRunner().invoke(cli, ["eval", "--suite", "nope", "--out", "x"])
    assert out.exit_code == 1
    assert out.output == "Error: unknown suite 'nope'; the suites are quick, full\n"


def test_cli_refuses_an_out_that_is_a_file_before_loading_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr("provmark.watermark.models.load_model", lambda *a: pytest.fail("loaded the model"))
    target = tmp_path / "taken"
    target.write_text("")
    out = CliRunner().invoke(cli, ["eval", "--suite", "quick", "--out", str(target)])
    assert out.exit_code == 1
    assert out.output == f"Error: --out {target} is a file, not a folder; give a folder for the results\n"
    out = CliRunner().invoke(cli, ["eval", "--suite", "quick", "--out", str(target / "below")])
    assert out.exit_code == 1
    assert out.output == f"Error: cannot write to --out {target / 'below'}: Not a directory\n"


def test_write_outputs_refuses_an_unwritable_folder(result, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write to --out"):
        write_outputs(result, blocker / "sub", "cmd")


def test_cli_runs_a_suite_and_lists_what_it_wrote(tmp_path, monkeypatch, tiny_model, tokenizer):
    small = Suite("small", TINY.schemes[:1], ("delete",), prompts=2, tokens=16, batch=2, strengths={"delete": (0.1,)})
    monkeypatch.setattr("provmark.evaluation.suites.SUITES", {"small": small})
    monkeypatch.setattr("provmark.watermark.models.load_model",
                        lambda path=None: LoadedModel(tiny_model, tokenizer, "tiny"))
    out = CliRunner().invoke(cli, ["eval", "--suite", "small", "--out", str(tmp_path / "r"), "--seed", "2"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[:5] == [f"wrote {tmp_path / 'r' / name}" for name in ("results.csv", "summary.csv",
                         "detection_rate_0.01.png", "detection_rate_0.001.png", "report.md")]
    assert lines[5].startswith("suite small: 8 detections in ")  # kgw alone: no multi-bit text to explain
    assert "- command: `provmark eval --suite small --out " in (tmp_path / "r" / "report.md").read_text()


def test_the_window_cache_gives_the_proxy_heads_and_reads_each_kept_window_once(tiny_model, tokenizer):
    from provmark.evaluation.cache import WindowCache
    from provmark.watermark.proxy import Proxy

    ids = torch.randint(100, 49000, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    cache = WindowCache(tiny_model, tokenizer)
    cache.keep = True
    for (mass, top), (plain_mass, plain_top) in zip(cache.window_heads([ids, ids[:25]], 16, 10),
                                                    Proxy(tiny_model, tokenizer).window_heads([ids, ids[:25]], 16, 10)):
        assert torch.equal(top, plain_top)
        torch.testing.assert_close(mass, plain_mass, rtol=0, atol=1e-6)
    assert cache.windows_read == 39  # the prefix's windows are the text's
    cache.window_heads([ids[:30]], 16, 10)
    assert cache.windows_read == 39
    cache.keep = False
    edited = ids[:20] + [7] + ids[20:]
    cache.window_heads([edited], 16, 10)
    assert cache.windows_read == 39 + 10  # the windows that hold the new id
    cache.window_heads([edited], 16, 10)
    assert cache.windows_read == 39 + 20  # not kept: read again
