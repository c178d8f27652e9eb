"""Writes an evaluation out: per-text and per-cell CSVs, PNG plots and a Markdown report.

Files in the output folder:

- ``results.csv``: one row per text (``runner.FIELDS``);
- ``summary.csv``: one row per (scheme, attack, strength) (``runner.SUMMARY_FIELDS``);
- ``detection_rate_<alpha>.png``: detection rate against attack strength, one panel per attack,
  one line per scheme (the strengths run from weakest to strongest attack, left to right);
- ``explanation.html``: one watermarked text explained token by token (``detector.render``), and
  ``explanation.png``, that page rendered by headless Chromium when a ``chromium`` is on the PATH
  (Debian's ``chromium`` package);
- ``report.md``: one table per metric, schemes as rows and attack@strength as columns, with the
  command, the machine and the date.
"""

from __future__ import annotations

import csv
import datetime as _dt
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from provmark.detector.render import render_html
from provmark.errors import OutputError, ProvmarkError
from provmark.evaluation.human import CORPUS
from provmark.evaluation.runner import ALPHAS, FIELDS, SUMMARY_FIELDS, UNWATERMARKED, Evaluation
from provmark.evaluation.suites import ZERO_SHOT

__all__ = ["check_output_dir", "write_outputs", "markdown_report", "plot_detection", "column_label", "screenshot"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
"""Executables ``screenshot`` looks for, in order."""


def check_output_dir(path) -> Path:
    """``path`` as a folder that exists and takes files (created with its parents when missing);
    ``OutputError`` saying why otherwise. Call it before a long run, so that it fails at once."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder} is a file, not a folder; give a folder for the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".provmark-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to --out {folder}: {exc.strerror or exc}") from None
    return folder


def column_label(attack: str, strength) -> str:
    """"none" or "attack@strength", as the report's columns read."""
    return attack if strength in ("", None) else f"{attack}@{float(strength):g}"


def _columns(evaluation: Evaluation) -> list[tuple[str, object]]:
    return [(a, "" if s is None else s) for a, s in evaluation.suite.conditions()]


def _format(value, digits: int = 2) -> str:
    if value == "" or value is None:
        return "-"
    return f"{float(value):.{digits}f}"


def _table(evaluation: Evaluation, field: str, schemes: list[str], digits: int = 2) -> list[str]:
    cells = {(c["scheme"], c["attack"], c["strength"]): c for c in evaluation.summary}
    columns = _columns(evaluation)
    lines = ["| scheme | " + " | ".join(column_label(a, s) for a, s in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for scheme in schemes:
        values = [_format(cells.get((scheme, a, s), {}).get(field, ""), digits) for a, s in columns]
        lines.append(f"| {scheme} | " + " | ".join(values) + " |")
    return lines


def markdown_report(evaluation: Evaluation, command: str, plots: list[str] = (), explanation_png: str | None = None) -> str:
    """The report as Markdown (see the module doc)."""
    suite = evaluation.suite
    labels = [s.label for s in suite.schemes]
    rows = suite.labels()  # the detection tables add the zero-shot row when it ran
    multi_bit = sorted({c["scheme"] for c in evaluation.summary if c["bit_accuracy"] != ""}, key=labels.index)
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    n = max((c["n"] for c in evaluation.summary if c["scheme"] != UNWATERMARKED), default=0)
    out = [
        f"# provmark evaluation: suite `{suite.name}`",
        "",
        f"- date: {now}",
        f"- command: `{command}`",
        f"- machine: {evaluation.machine}",
        f"- model: {evaluation.model or 'unnamed'}; seed {evaluation.seed}; wall time {evaluation.seconds:.0f} s",
        f"- texts: {suite.prompts} prompts x {suite.tokens} new tokens (EOS suppressed), temperature "
        f"{suite.temperature:g}; each scheme's watermarked texts and one shared set of unwatermarked texts",
        "- schemes: " + "; ".join(s.describe() for s in suite.schemes),
        "- attacks: " + "; ".join(f"{a} at {', '.join(f'{x:g}' for x in suite.strengths[a])}" for a in suite.attacks),
        "",
        f"Every cell holds {n} texts, so a rate moves in steps of {1 / max(n, 1):.3g}. A text is detected at alpha "
        "when its calibrated p-value is at most alpha. The false-positive rate is measured on the unwatermarked texts, "
        "attacked the same way and detected with the same key. Copy-paste pastes each text into the other prompts' "
        "unwatermarked texts; balance and vanilla search the result with `locate`. For truncate and copy-paste a "
        "smaller number is the stronger attack.",
        "",
        "Files: `results.csv` (one row per text), `summary.csv` (one row per cell), "
        + ", ".join(f"`{p}`" for p in plots) + ".",
    ]
    sections = []
    for alpha in ALPHAS:
        sections.append((f"Detection rate at alpha = {alpha:g}", f"detection_rate_{alpha:g}", rows, 2))
    for alpha in ALPHAS:
        sections.append((f"Empirical false-positive rate at alpha = {alpha:g} (unwatermarked texts)", f"fpr_{alpha:g}",
                         labels, 2))
    sections += [("Median log10 p-value (watermarked texts)", "median_log10_p_value", rows, 1)]
    if multi_bit:
        sections += [("Bit accuracy (multi-bit schemes)", "bit_accuracy", multi_bit, 3),
                     ("Exact match of the payload (multi-bit schemes)", "exact_match", multi_bit, 2)]
    for title, field, schemes, digits in sections:
        out += ["", f"## {title}", "", *_table(evaluation, field, schemes, digits)]
    out += _human_table(evaluation)
    out += _zero_shot_section(evaluation)
    out += ["", "## Quality of the unattacked texts", "",
            "Under the unwatermarked model, given the prompt: perplexity and the share of tokens among its top 5.", "",
            "| scheme | perplexity | top-5 hit rate |", "|---|---:|---:|"]
    for cell in evaluation.summary:
        if cell["attack"] == "none" and cell["scheme"] != ZERO_SHOT:
            out.append(f"| {cell['scheme']} | {_format(cell['perplexity'])} | {_format(cell['top5_hit_rate'], 3)} |")
    for plot in plots:
        out += ["", f"![{plot}]({plot})"]
    if evaluation.explanation is not None:
        out += ["", "## Explanation of one text", "",
                f"`explanation.html` shows which tokens carried evidence in one text ({evaluation.explained}): "
                "green tokens lie in the set the embedder prefers at their step for the decoded payload, red ones "
                "do not, grey ones were not scored (repeated context).", ""]
        out.append(f"![explanation.html rendered by headless Chromium]({explanation_png})" if explanation_png else
                   "No browser was found to render it as a PNG (install Debian's `chromium`).")
    return "\n".join(out) + "\n"


def _human_table(evaluation: Evaluation) -> list[str]:
    """False-positive rates on the human texts next to those on the unwatermarked generations."""
    cells = [c for c in evaluation.summary if c["attack"] == "none" and c["n_human"] != ""]
    if not cells:
        return []
    suite = evaluation.suite
    out = ["", "## False-positive rate on human-written text", "",
           f"{suite.human} texts of {CORPUS}, each cut to {suite.tokens} tokens, detected unattacked with each "
           "scheme's key, next to the unwatermarked generations of the same length.", "",
           "| scheme | human texts | " + " | ".join(f"human FPR at {a:g}" for a in ALPHAS) + " | "
           + " | ".join(f"generated FPR at {a:g}" for a in ALPHAS) + " |",
           "|---|---:|" + "---:|" * 2 * len(ALPHAS)]
    for cell in cells:
        values = [str(cell["n_human"]), *(_format(cell[f"fpr_human_{a:g}"]) for a in ALPHAS),
                  *(_format(cell[f"fpr_{a:g}"]) for a in ALPHAS)]
        out.append(f"| {cell['scheme']} | " + " | ".join(values) + " |")
    return out


def _zero_shot_section(evaluation: Evaluation) -> list[str]:
    """What the zero-shot row is, and test (a)'s consistency rate and the median z per condition."""
    suite = evaluation.suite
    if not suite.zero_shot_references:
        return []
    m = suite.zero_shot_references
    return ["", "## Zero-shot attribution (no key)", "",
            (f"The `{ZERO_SHOT}` row of the detection tables needs no key: the zero-shot \"not human\" test "
            f"(`detector.zero_shot`, test (b)) on the model's own unwatermarked texts, attacked like the schemes' "
            f"controls, each scored alone under the model at temperature {suite.temperature:g} and ranked among "
            f"{m} committed Debian Handbook texts (conformal). Its p-value is at least 1/{m + 1} = {1 / (m + 1):.3g}, "
            "so it cannot detect at a smaller alpha; its false-positive rate on the human texts is in the table "
            "above. Below: the share of those texts that test (a) (\"written by the model\", two-sided) accepts at "
            "alpha 0.01, and their median z (0 for the model's own samples, positive for less predictable text)."),
            "", *_table(evaluation, "consistent_rate", [ZERO_SHOT], 2)[:2],
            _table(evaluation, "consistent_rate", [ZERO_SHOT], 2)[2].replace(ZERO_SHOT, "test (a) accepts at 0.01", 1),
            _table(evaluation, "median_z_score", [ZERO_SHOT], 2)[2].replace(ZERO_SHOT, "median z", 1)]


def plot_detection(evaluation: Evaluation, path: Path, alpha: float) -> None:
    """Detection rate at ``alpha`` against strength: one panel per attack, one line per scheme."""
    try:
        import matplotlib
    except ImportError:
        raise ProvmarkError("the plots need matplotlib: pip install 'provmark[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = evaluation.suite
    cells = {(c["scheme"], c["attack"], c["strength"]): c for c in evaluation.summary}
    field = f"detection_rate_{alpha:g}"
    columns = min(3, max(1, len(suite.attacks)))
    rows = -(-max(1, len(suite.attacks)) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    for ax, attack in zip(axes.flat, suite.attacks or ("none",)):
        strengths = suite.strengths.get(attack, ())
        for label in suite.labels():
            points = [("none", cells.get((label, "none", ""), {}).get(field, ""))]
            points += [(f"{s:g}", cells.get((label, attack, s), {}).get(field, "")) for s in strengths]
            xs = [i for i, (_, y) in enumerate(points) if y != ""]
            ax.plot(xs, [float(points[i][1]) for i in xs], marker="o", label=label,
                    linestyle="--" if label == ZERO_SHOT else "-")
        ax.set_xticks(range(len(strengths) + 1), ["none", *(f"{s:g}" for s in strengths)])
        ax.set(title=attack, xlabel="strength (weak to strong)", ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(suite.attacks or ("none",)) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"detection rate at alpha {alpha:g}")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"suite {suite.name}: {suite.prompts} prompts x {suite.tokens} tokens")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def screenshot(html_path: Path, png_path: Path, width: int = 1000, height: int = 2400) -> bool:
    """Render ``html_path`` with headless Chromium into ``png_path``, trimmed of the blank page
    below the content; False (and nothing written) when no browser of ``BROWSERS`` is installed.
    ``ProvmarkError`` when the browser fails."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        return False
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={width},{height}", f"--screenshot={png_path.resolve()}", html_path.resolve().as_uri()]
    try:
        subprocess.run(command, capture_output=True, timeout=180, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        raise ProvmarkError(f"{browser} could not render {html_path}: {exc}") from None
    _trim_bottom(png_path)
    return True


def _trim_bottom(png_path: Path, margin: int = 24) -> None:
    """Cut the rows below the last non-white one (keeping ``margin`` pixels)."""
    from PIL import Image, ImageOps

    with Image.open(png_path) as image:
        box = ImageOps.invert(image.convert("RGB")).getbbox()
        if box is not None and box[3] + margin < image.height:
            image.crop((0, 0, image.width, box[3] + margin)).save(png_path)


def _write_csv(path: Path, fields: list[str], rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(evaluation: Evaluation, out, command: str) -> list[Path]:
    """Write every file of the module doc into the folder ``out`` (checked with
    ``check_output_dir``); returns their paths, the report last."""
    folder = check_output_dir(out)
    written = [folder / "results.csv", folder / "summary.csv"]
    _write_csv(written[0], FIELDS, evaluation.rows)
    _write_csv(written[1], SUMMARY_FIELDS, evaluation.summary)
    plots = []
    for alpha in ALPHAS:
        name = f"detection_rate_{alpha:g}.png"
        plot_detection(evaluation, folder / name, alpha)
        plots.append(name)
        written.append(folder / name)
    explanation_png = None
    if evaluation.explanation is not None:
        page = folder / "explanation.html"
        page.write_text(render_html(evaluation.explanation, title=f"provmark: {evaluation.explained}"),
                        encoding="utf-8")
        written.append(page)
        if screenshot(page, folder / "explanation.png"):
            explanation_png = "explanation.png"
            written.append(folder / explanation_png)
        else:
            warnings.warn(f"no browser ({', '.join(BROWSERS)}) to render {page} as a PNG", stacklevel=2)
    report = folder / "report.md"
    report.write_text(markdown_report(evaluation, command, plots, explanation_png), encoding="utf-8")
    written.append(report)
    return written

