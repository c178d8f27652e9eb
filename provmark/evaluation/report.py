"""Writes an evaluation out: per-text and per-cell CSVs, PNG plots and a Markdown report.

Files in the output folder:

- ``results.csv``: one row per text (``runner.FIELDS``);
- ``summary.csv``: one row per (scheme, attack, strength) (``runner.SUMMARY_FIELDS``);
- ``detection_rate_<alpha>.png``: detection rate against attack strength, one panel per attack,
  one line per scheme (the strengths run from weakest to strongest attack, left to right);
- ``report.md``: one table per metric, schemes as rows and attack@strength as columns, with the
  command, the machine and the date.
"""

from __future__ import annotations

import csv
import datetime as _dt
import tempfile
from pathlib import Path

from provmark.errors import OutputError, ProvmarkError
from provmark.evaluation.runner import ALPHAS, FIELDS, SUMMARY_FIELDS, UNWATERMARKED, Evaluation

__all__ = ["check_output_dir", "write_outputs", "markdown_report", "plot_detection", "column_label"]


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


def markdown_report(evaluation: Evaluation, command: str, plots: list[str] = ()) -> str:
    """The report as Markdown (see the module doc)."""
    suite = evaluation.suite
    labels = [s.label for s in suite.schemes]
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
        sections.append((f"Detection rate at alpha = {alpha:g}", f"detection_rate_{alpha:g}", labels, 2))
    for alpha in ALPHAS:
        sections.append((f"Empirical false-positive rate at alpha = {alpha:g} (unwatermarked texts)", f"fpr_{alpha:g}",
                         labels, 2))
    sections += [("Median log10 p-value (watermarked texts)", "median_log10_p_value", labels, 1)]
    if multi_bit:
        sections += [("Bit accuracy (multi-bit schemes)", "bit_accuracy", multi_bit, 3),
                     ("Exact match of the payload (multi-bit schemes)", "exact_match", multi_bit, 2)]
    for title, field, schemes, digits in sections:
        out += ["", f"## {title}", "", *_table(evaluation, field, schemes, digits)]
    out += ["", "## Quality of the unattacked texts", "",
            "Under the unwatermarked model, given the prompt: perplexity and the share of tokens among its top 5.", "",
            "| scheme | perplexity | top-5 hit rate |", "|---|---:|---:|"]
    for cell in evaluation.summary:
        if cell["attack"] == "none":
            out.append(f"| {cell['scheme']} | {_format(cell['perplexity'])} | {_format(cell['top5_hit_rate'], 3)} |")
    for plot in plots:
        out += ["", f"![{plot}]({plot})"]
    return "\n".join(out) + "\n"


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
        for spec in suite.schemes:
            points = [("none", cells.get((spec.label, "none", ""), {}).get(field, ""))]
            points += [(f"{s:g}", cells.get((spec.label, attack, s), {}).get(field, "")) for s in strengths]
            xs = [i for i, (_, y) in enumerate(points) if y != ""]
            ax.plot(xs, [float(points[i][1]) for i in xs], marker="o", label=spec.label)
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
    report = folder / "report.md"
    report.write_text(markdown_report(evaluation, command, plots), encoding="utf-8")
    written.append(report)
    return written

