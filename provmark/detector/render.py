"""Explanations for people: the text coloured token by token, in a terminal or as an HTML page.

A hit is drawn green and a miss red, with an intensity that grows with the evidence the token
carries: ``-ln(expected)`` for a hit (a hit that was unlikely without the key says more) and
``-ln(1 - expected)`` for a miss. Unscored tokens are left plain. The HTML page is one
self-contained file (no scripts, no external resources): the verdict, the decoded bits shaded by
confidence, the heat-mapped text and the running evidence along the text.
"""

from __future__ import annotations

import html
import math

import click

from provmark.detector.explain import Explanation, TokenEvidence
from provmark.errors import ParameterError

__all__ = ["evidence_weight", "render_terminal", "render_html"]

_FULL_WEIGHT = 3.0  # evidence (nats) drawn at full intensity


def evidence_weight(token: TokenEvidence) -> float:
    """Nats of evidence the token carries: ``-ln(expected)`` for a hit, ``-ln(1 - expected)`` for
    a miss, 0 when unscored (or when the outcome was certain either way)."""
    if token.hit is None or token.expected is None:
        return 0.0
    chance = token.expected if token.hit else 1.0 - token.expected
    return -math.log(chance) if chance > 0 else _FULL_WEIGHT


def _pieces(explanation: Explanation):
    """(text, token or None) pieces that together spell ``explanation.text`` exactly; a token
    whose characters a previous token already covered (a character split over byte-level tokens)
    gets an empty piece."""
    text = explanation.text
    if text is None:
        raise ParameterError("rendering needs the explained text: use explain_text")
    at = 0
    for token in explanation.tokens:
        start, end = max(token.start, at), max(token.end, at)
        if start > at:
            yield text[at:start], None
        yield text[start:end], token
        at = end
    if at < len(text):
        yield text[at:], None


def _summary_lines(explanation: Explanation) -> list[str]:
    result = explanation.result
    verdict = "watermarked" if result.is_watermarked else "not watermarked"
    lines = [
        f"{verdict} (alpha {result.alpha:g})  p-value {result.p_value:.3g}  log10 p {result.log10_p_value:.2f}",
        f"{explanation.unit}s scored: {result.num_scored_tokens}  hits: {explanation.num_hits} "
        f"(expected without the key: {explanation.expected_hits:.1f})",
    ]
    if result.payload_hex is not None:
        bits = "".join(str(b) for b in _payload_bits(explanation))
        lines.append(f"payload: {result.payload_hex}  bits {bits}")
    lines.append(f"scheme: {result.scheme}  key: {result.key_id}")
    return lines


def _payload_bits(explanation: Explanation) -> list[int]:
    result = explanation.result
    width = len(result.bit_confidences or ())
    return [int(c) for c in format(result.payload, f"0{width}b")] if width else []


def render_terminal(explanation: Explanation) -> str:
    """The text with hits in green and misses in red (bold when the token carries at least one
    nat of evidence), unscored tokens dimmed, then the summary. ANSI codes; ``click.echo``
    strips them when the output is not a terminal."""
    out = []
    for text, token in _pieces(explanation):
        if token is None or token.hit is None:
            out.append(click.style(text, dim=True) if token is not None and text.strip() else text)
        else:
            out.append(click.style(text, fg="green" if token.hit else "red", bold=evidence_weight(token) >= 1.0))
    legend = f"{click.style('hit', fg='green')} {click.style('miss', fg='red')} {click.style('not scored', dim=True)}"
    return "".join(out) + "\n\n" + "\n".join(_summary_lines(explanation)) + f"\nlegend: {legend}"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222;line-height:1.5}
.verdict{display:inline-block;padding:.2rem .6rem;border-radius:.3rem;color:#fff;font-weight:600}
.yes{background:#1b7f3b}.no{background:#777}
table.meta td{padding:.1rem .8rem .1rem 0}
.bits{display:flex;flex-wrap:wrap;gap:2px;margin:.5rem 0}
.bit{width:1.6rem;text-align:center;font-family:monospace;border:1px solid #ccc;border-radius:2px}
.text{white-space:pre-wrap;border:1px solid #ddd;padding:1rem;border-radius:.3rem;font-size:1.05rem}
.tok{border-radius:2px}.unscored{color:#999}
.legend span{padding:0 .4rem;margin-right:.5rem;border-radius:2px}
svg{border:1px solid #ddd;border-radius:.3rem}
"""


def _token_style(token: TokenEvidence) -> str:
    alpha = 0.12 + 0.78 * min(evidence_weight(token) / _FULL_WEIGHT, 1.0)
    colour = "27,160,70" if token.hit else "220,50,40"
    return f"background:rgba({colour},{alpha:.2f})"


def _running_evidence_svg(explanation: Explanation, width: int = 720, height: int = 140) -> str:
    """Cumulative (hits - expected) over the scored tokens, in text order."""
    points, total = [(0, 0.0)], 0.0
    for token in explanation.tokens:
        if token.hit is not None:
            total += (1.0 if token.hit else 0.0) - token.expected
            points.append((len(points), total))
    if len(points) < 2:
        return ""
    low, high = min(min(y for _, y in points), 0.0), max(max(y for _, y in points), 1.0)
    span_x, span_y = len(points) - 1, high - low

    def xy(x, y):
        return f"{10 + x * (width - 20) / span_x:.1f},{height - 10 - (y - low) * (height - 20) / span_y:.1f}"

    zero = height - 10 - (0 - low) * (height - 20) / span_y
    line = " ".join(xy(x, y) for x, y in points)
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="running evidence">'
        f'<line x1="10" y1="{zero:.1f}" x2="{width - 10}" y2="{zero:.1f}" stroke="#bbb" stroke-dasharray="4 3"/>'
        f'<polyline fill="none" stroke="#1b7f3b" stroke-width="2" points="{line}"/>'
        f'<text x="12" y="16" font-size="12" fill="#555">hits minus hits expected without the key, '
        f"over the {span_x} scored {explanation.unit}s: {total:+.1f}</text></svg>"
    )


def render_html(explanation: Explanation, *, title: str = "provmark detection") -> str:
    """A self-contained HTML page: verdict and statistics, decoded bits shaded by confidence,
    the text as a per-token heat map (hover a token for its evidence), and the running evidence.
    Every token (every word, for a synonym explanation) of the text is one ``<span class="tok ...">``
    carrying ``data-index`` (and ``data-token-id`` for a token), and ``data-hit`` and
    ``data-expected`` when scored; the text's characters appear exactly once, in order."""
    result = explanation.result
    esc = html.escape
    verdict = "watermarked" if result.is_watermarked else "not watermarked"
    rows = [
        ("scheme", result.scheme), ("key", result.key_id), ("PRF", result.prf_version),
        ("p-value", f"{result.p_value:.3g} (log10 {result.log10_p_value:.2f}, alpha {result.alpha:g})"),
        (f"{explanation.unit}s scored", str(result.num_scored_tokens)),
        ("hits", f"{explanation.num_hits} (expected without the key: {explanation.expected_hits:.1f})"),
    ]
    if result.payload_hex is not None:
        rows.append(("payload", result.payload_hex))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
        f'<p><span class="verdict {"yes" if result.is_watermarked else "no"}" id="verdict">{verdict}</span></p>',
        '<table class="meta">' + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>",
    ]
    if result.bit_confidences:
        parts.append("<h2>Decoded bits</h2><p>Most significant first; darker means more confident.</p><div class=\"bits\">")
        for i, (bit, confidence) in enumerate(zip(_payload_bits(explanation), result.bit_confidences)):
            shade = max(0.0, min(1.0, 2 * (confidence - 0.5)))
            parts.append(
                f'<span class="bit" data-bit="{i}" data-confidence="{confidence:.6f}" '
                f'style="background:rgba(40,90,200,{0.1 + 0.8 * shade:.2f});color:{"#fff" if shade > 0.5 else "#222"}" '
                f'title="bit {i}: confidence {confidence:.4f}">{bit}</span>'
            )
        parts.append("</div>")
    hit_is = ("a word whose keyed bit is 1, the bit the embedder's synonyms are chosen for"
              if explanation.unit == "word" else "a token in the set the embedder prefers at that step for the "
              "detected payload")
    parts.append(
        '<h2>Text</h2><p class="legend"><span style="background:rgba(27,160,70,.6)">hit</span>'
        '<span style="background:rgba(220,50,40,.5)">miss</span><span class="unscored">not scored</span>'
        f"Intensity grows with the evidence a {explanation.unit} carries. A hit is {hit_is}.</p>"
    )
    text = ['<div class="text" id="text">']
    for piece, token in _pieces(explanation):
        if token is None:
            text.append(esc(piece))
            continue
        attributes = f'data-index="{token.index}"'
        if token.token_id is not None:
            attributes += f' data-token-id="{token.token_id}"'
        unit = f"{explanation.unit} {token.index}"
        if token.hit is None:
            text.append(f'<span class="tok unscored" {attributes} title="{unit}: not scored">{esc(piece)}</span>')
            continue
        tip = f"{unit}: {'hit' if token.hit else 'miss'}; chance without the key {token.expected:.3f}"
        text.append(
            f'<span class="tok {"hit" if token.hit else "miss"}" {attributes} data-hit="{int(token.hit)}" '
            f'data-expected="{token.expected:.6f}" style="{_token_style(token)}" title="{esc(tip)}">{esc(piece)}</span>'
        )
    text.append("</div>")
    parts.append("".join(text))
    svg = _running_evidence_svg(explanation)
    if svg:
        parts.append(f"<h2>Running evidence</h2>{svg}")
    parts.append("</body></html>")
    return "\n".join(parts)
