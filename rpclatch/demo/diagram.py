"""Sequence diagrams drawn from a scenario's event trace: a self-contained SVG and an HTML page.

No external assets or scripts: the SVG uses inline styles only, so the file opens in any browser
and survives being attached to a bug report. Consecutive identical events (same kind, lanes and
label, e.g. a burst of ESP segments) are merged into one arrow marked ``x n`` to keep it readable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from rpclatch.demo.model import Check, EventKind, TraceEvent

COLOURS: dict[EventKind, str] = {
    EventKind.ESP: "#1a7f37",
    EventKind.CLEAR: "#bc4c00",
    EventKind.IKE: "#0550ae",
    EventKind.RPC: "#57606a",
    EventKind.DROP: "#cf222e",
    EventKind.ATTACK: "#a40e26",
    EventKind.STATE: "#6639ba",
    EventKind.POLICY: "#0969da",
    EventKind.WARNING: "#cf222e",
}

LANE_GAP = 230
TOP = 70
ROW = 26
LEFT = 90
MAX_ROWS = 600
#: x where drawing may start: right of the time column ("0.0123" in 10 px monospace)
GUTTER = 48
#: right margin kept free of text
MARGIN = 8
#: advance of one character of 12 px monospace (0.6 em, a little generous for the renderers)
CHAR_W = 7.3


@dataclass(frozen=True, slots=True)
class _Row:
    event: TraceEvent
    count: int


def merge_runs(events: Sequence[TraceEvent]) -> list[_Row]:
    """Merge consecutive events with the same kind, lanes and label into one row with a count."""
    rows: list[_Row] = []
    for ev in events:
        if rows:
            last = rows[-1].event
            if (last.kind, last.src, last.dst, last.label) == (ev.kind, ev.src, ev.dst, ev.label):
                rows[-1] = _Row(last, rows[-1].count + 1)
                continue
        rows.append(_Row(ev, 1))
    return rows


def lanes_of(events: Sequence[TraceEvent], preferred: Sequence[str] = ()) -> list[str]:
    """Lanes in ``preferred`` order first (those that occur), then in order of first appearance."""
    seen: list[str] = []
    for ev in events:
        for name in (ev.src, ev.dst):
            if name is not None and name not in seen:
                seen.append(name)
    ordered = [name for name in preferred if name in seen]
    return ordered + [name for name in seen if name not in ordered]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def text_width(text: str) -> float:
    """Estimated width in px of ``text`` in the diagram's 12 px monospace font."""
    return CHAR_W * len(text)


def place(center: float, width: float, canvas: float) -> float:
    """Left edge for a box ``width`` wide, centred on ``center`` if it fits, else moved (not
    shrunk) to lie between the time column and the right margin of a ``canvas``-wide drawing.
    The canvas must be at least ``GUTTER + width + MARGIN`` wide (render_svg makes it so)."""
    left = center - width / 2
    left = min(left, canvas - MARGIN - width)
    return max(left, GUTTER)


def _note_width(label: str) -> float:
    return text_width(label) + 12


def render_svg(title: str, events: Sequence[TraceEvent], preferred_lanes: Sequence[str] = ()) -> str:
    """A standalone SVG sequence diagram of ``events``."""
    rows = merge_runs(events)
    truncated = max(0, len(rows) - MAX_ROWS)
    rows = rows[:MAX_ROWS]
    lanes = lanes_of([r.event for r in rows], preferred_lanes) or ["(no events)"]
    x_of = {name: LEFT + i * LANE_GAP for i, name in enumerate(lanes)}
    labels = [r.event.label + (f" x{r.count}" if r.count > 1 else "") for r in rows]
    widest = max((_note_width(label) for label in labels), default=0.0)
    width = LEFT + (len(lanes) - 1) * LANE_GAP + LEFT + 160
    # every note and label fits between the time column and the right margin, and the title too
    width = max(width, int(GUTTER + widest + MARGIN) + 1, int(10 + 9 * len(title) + MARGIN) + 1)
    height = TOP + (len(rows) + 2) * ROW + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        "<defs>",
    ]
    for kind, colour in COLOURS.items():
        out.append(
            f'<marker id="arrow-{kind.value}" markerWidth="10" markerHeight="8" refX="9" refY="4" '
            f'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="{colour}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<text x="10" y="20" font-size="15" font-weight="bold">{_esc(title)}</text>')
    bottom = TOP + (len(rows) + 1) * ROW
    for name, x in x_of.items():
        out.append(
            f'<rect x="{x - 70}" y="{TOP - 38}" width="140" height="24" rx="4" fill="#f6f8fa" '
            f'stroke="#57606a"/>'
        )
        out.append(
            f'<text x="{x}" y="{TOP - 21}" text-anchor="middle" font-weight="bold">{_esc(name)}</text>'
        )
        out.append(
            f'<line x1="{x}" y1="{TOP - 14}" x2="{x}" y2="{bottom}" stroke="#8c959f" stroke-dasharray="4,3"/>'
        )
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ev = row.event
        y = TOP + (i + 1) * ROW
        colour = COLOURS[ev.kind]
        tip = f"t={ev.t:.6f}s {ev.kind.value}: {ev.label}" + (f" — {ev.detail}" if ev.detail else "")
        out.append(f"<g><title>{_esc(tip)}</title>")
        out.append(f'<text x="6" y="{y + 4}" fill="#8c959f" font-size="10">{ev.t:.4f}</text>')
        if ev.dst is None or ev.dst == ev.src:
            # centred on its lane when it fits, else kept inside the canvas (a long note on the
            # first or last lane would otherwise start or end off-canvas)
            box_w = _note_width(label)
            left = place(x_of[ev.src], box_w, width)
            out.append(
                f'<rect x="{left:.0f}" y="{y - 12}" width="{box_w:.0f}" height="18" rx="3" '
                f'fill="#ffffff" stroke="{colour}"/>'
            )
            out.append(
                f'<text x="{left + box_w / 2:.0f}" y="{y + 1}" text-anchor="middle" '
                f'fill="{colour}">{_esc(label)}</text>'
            )
        else:
            x1, x2 = float(x_of[ev.src]), float(x_of[ev.dst])
            dash = ' stroke-dasharray="6,3"' if ev.kind in (EventKind.DROP, EventKind.ATTACK) else ""
            if ev.kind is EventKind.DROP:
                x2 = x1 + (x2 - x1) * 0.8
            out.append(
                f'<line x1="{x1}" y1="{y}" x2="{x2:.0f}" y2="{y}" stroke="{colour}" stroke-width="1.6"'
                f'{dash} marker-end="url(#arrow-{ev.kind.value})"/>'
            )
            if ev.kind is EventKind.DROP:
                out.append(f'<text x="{x2 + 4:.0f}" y="{y + 4}" fill="{colour}" font-weight="bold">✕</text>')
            text_w = text_width(label)
            mid = place((x1 + x_of[ev.dst]) / 2, text_w, width) + text_w / 2
            out.append(
                f'<text x="{mid:.0f}" y="{y - 4}" text-anchor="middle" fill="{colour}">{_esc(label)}</text>'
            )
        out.append("</g>")
    if truncated:
        y = TOP + (len(rows) + 1) * ROW
        out.append(f'<text x="{LEFT}" y="{y}" fill="#cf222e">… {truncated} more rows not drawn</text>')
    out.append("</svg>")
    return "\n".join(out)


def render_html(
    title: str,
    svg: str,
    checks: Sequence[Check],
    summary: Sequence[tuple[str, str]],
    events: Sequence[TraceEvent],
) -> str:
    """A self-contained HTML page: the verdict, the checks, the diagram and the raw event list."""
    ok = bool(checks) and all(c.passed for c in checks)
    verdict = "PASS" if ok else "FAIL"
    colour = "#1a7f37" if ok else "#cf222e"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;font-size:13px}"
        "code{font-size:12px}.pass{color:#1a7f37}.fail{color:#cf222e}</style></head><body>",
        f'<h1>{_esc(title)} <span style="color:{colour}">{verdict}</span></h1>',
        "<table>",
    ]
    parts += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in summary]
    parts.append(
        "</table><h2>Checks (computed from what happened)</h2><table>"
        "<tr><th>check</th><th>result</th><th>detail</th></tr>"
    )
    for c in checks:
        cls, word = ("pass", "ok") if c.passed else ("fail", "FAILED")
        parts.append(
            f'<tr><td>{_esc(c.name)}</td><td class="{cls}">{word}</td><td>{_esc(c.detail)}</td></tr>'
        )
    parts.append("</table><h2>Sequence</h2>")
    parts.append(svg)
    parts.append(
        "<h2>Event trace</h2><table><tr><th>t (s)</th><th>kind</th><th>from</th><th>to</th>"
        "<th>event</th><th>detail</th></tr>"
    )
    for ev in events[: MAX_ROWS * 4]:
        parts.append(
            f"<tr><td>{ev.t:.6f}</td><td>{ev.kind.value}</td><td>{_esc(ev.src)}</td>"
            f"<td>{_esc(ev.dst or '')}</td><td>{_esc(ev.label)}</td><td><code>{_esc(ev.detail)}"
            "</code></td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)
