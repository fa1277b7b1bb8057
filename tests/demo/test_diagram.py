"""Sequence diagrams: well-formed SVG/HTML, lanes, merged bursts, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from rpclatch.demo.diagram import lanes_of, merge_runs, render_html, render_svg
from rpclatch.demo.model import Check, EventKind, TraceEvent

SVG_NS = "{http://www.w3.org/2000/svg}"


def sample() -> list[TraceEvent]:
    return [
        TraceEvent(0.0, EventKind.POLICY, "client", None, "request IPsec"),
        TraceEvent(0.001, EventKind.IKE, "client", "server", "SA install"),
        *[TraceEvent(0.002 + i / 1000, EventKind.ESP, "client", "server", "ESP seq") for i in range(5)],
        TraceEvent(0.01, EventKind.DROP, "rogue", "client", "cleartext <RST> & co"),
        TraceEvent(0.02, EventKind.STATE, "server", None, "latch BROKEN"),
    ]


def test_merge_runs_collapses_bursts() -> None:
    rows = merge_runs(sample())
    assert [r.count for r in rows] == [1, 1, 5, 1, 1]


def test_lanes_follow_preference_then_appearance() -> None:
    assert lanes_of(sample(), ("server", "client")) == ["server", "client", "rogue"]


def test_svg_parses_and_escapes() -> None:
    svg = render_svg("scenario <1>", sample(), ("client", "server", "rogue"))
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    texts = [t.text or "" for t in root.iter(f"{SVG_NS}text")]
    assert "scenario <1>" in texts
    assert "cleartext <RST> & co" in texts
    assert "ESP seq x5" in texts
    assert {"client", "server", "rogue"} <= set(texts)


def test_html_is_self_contained_and_shows_failed_checks() -> None:
    events = sample()
    checks = [Check("no cleartext", True, "0 bytes"), Check("latched", False, "client latch is none")]
    page = render_html("t", render_svg("t", events), checks, [("GSS service", "krb5p")], events)
    assert page.startswith("<!DOCTYPE html>")
    assert "FAIL" in page and "FAILED" in page and "client latch is none" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_every_note_and_label_lies_inside_the_canvas() -> None:
    """Long notes on the first and last lane (and long arrow labels) used to start or end
    off-canvas; now each box and centred text is inside [0, width], right of the time column."""
    from rpclatch.demo.diagram import GUTTER, text_width

    long = "ALERT 192.0.2.10:53571<->192.0.2.20:2049/6: LARVAL -> ESTABLISHED (sa-establish…"
    events = [
        TraceEvent(0.0, EventKind.POLICY, "client", None, long),
        TraceEvent(0.001, EventKind.STATE, "server", None, "listener " + long),
        TraceEvent(0.002, EventKind.ESP, "client", "mitm", "ESP " + long),
        TraceEvent(0.003, EventKind.STATE, "mitm", None, "short"),
        TraceEvent(0.004, EventKind.WARNING, "client", None, "x" * 300),  # wider than the lanes
    ]
    root = ET.fromstring(render_svg("t", events, ("client", "mitm", "server")))
    width = float(root.attrib["width"])
    notes = [r for r in root.iter(f"{SVG_NS}rect") if r.attrib.get("height") == "18"]
    assert len(notes) == 4
    for r in notes:
        x, w = float(r.attrib["x"]), float(r.attrib["width"])
        assert x >= GUTTER and x + w <= width, (x, w, width)
    centred = [t for t in root.iter(f"{SVG_NS}text") if t.attrib.get("text-anchor") == "middle"]
    labels = [t for t in centred if t.text and t.text not in ("client", "mitm", "server")]
    assert len(labels) == 5
    for t in labels:
        half = text_width(t.text or "") / 2
        x = float(t.attrib["x"])
        assert x - half >= GUTTER - 1 and x + half <= width, (t.text, x, width)
    # a note that fits stays centred on its lane
    short = next(t for t in labels if t.text == "short")
    lane_x = next(float(t.attrib["x"]) for t in centred if t.text == "mitm")
    assert abs(float(short.attrib["x"]) - lane_x) <= 1
