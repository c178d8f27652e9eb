"""``provmark eval``: every scheme side by side under every attack, with CSVs, plots and a report.

- ``suites``: the named suites (frozen dataclasses) and the schemes they run;
- ``prompts``: the evaluation prompts and batched fixed-length generation;
- ``quality``: perplexity, top-5 hit rate and bit accuracy (shared with ``benchmarks.multibit``);
- ``runner``: runs a suite and summarises it per (scheme, attack, strength);
- ``report``: writes the CSVs, the PNG plots and the Markdown report.
"""

from __future__ import annotations

from provmark.evaluation.prompts import PROMPTS_PATH, generate_batched, load_prompts
from provmark.evaluation.quality import bit_accuracy, quality
from provmark.evaluation.report import check_output_dir, markdown_report, plot_detection, write_outputs
from provmark.evaluation.runner import ALPHAS, FIELDS, SUMMARY_FIELDS, Evaluation, run_suite, summarise
from provmark.evaluation.suites import SCHEMES, SUITES, SchemeSpec, Suite, get_suite

__all__ = [
    "ALPHAS",
    "FIELDS",
    "PROMPTS_PATH",
    "SCHEMES",
    "SUITES",
    "SUMMARY_FIELDS",
    "Evaluation",
    "SchemeSpec",
    "Suite",
    "bit_accuracy",
    "check_output_dir",
    "generate_batched",
    "get_suite",
    "load_prompts",
    "markdown_report",
    "plot_detection",
    "quality",
    "run_suite",
    "summarise",
    "write_outputs",
]
