"""The video timeline as server-rendered SVG: fake probability per sampled frame over time.

Readable without script or CSS (presentation attributes only, so the CSP needs no exception):
the threshold is a dashed line, the uncertain band a shaded strip, frames without a face a grey
cross on the time axis, and every point is a link to that frame's thumbnail and faces.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Callable, Iterable

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 16, 40  # margins around the plot area
COLOURS = {"fake": "#b3261e", "real": "#146c2e", "uncertain": "#8a5a00", "no_face": "#4d5560",
           "line": "#0b57d0", "grid": "#d5d9de", "ink": "#1b1f24", "band": "#ffbf47"}


@dataclass(frozen=True)
class TimelinePoint:
    """One sampled frame: when it is, how many faces, and its score (None without a face)."""

    index: int
    time_s: float
    faces: int
    score: float | None


def classify(score: float, threshold: float, band: tuple[float, float] | None) -> str:
    """The same rule as the verdict: inside the band is uncertain, else the side of the threshold."""
    if band is not None and band[0] <= score <= band[1]:
        return "uncertain"
    return "fake" if score >= threshold else "real"


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _percent(score: float) -> str:
    p = score * 100
    return f"{p:.0f}" if abs(p - round(p)) < 0.05 else f"{p:.1f}"


def render_timeline(points: Iterable[TimelinePoint], *, threshold: float,
                    band: tuple[float, float] | None, link_for: Callable[[int], str],
                    duration_s: float | None = None, standalone: bool = False,
                    title: str = "Fake probability per sampled frame") -> str:
    """SVG markup for the points (sorted by time). `link_for(frame_index)` gives each point's href.
    `standalone` adds the XML namespace declarations a file served on its own needs."""
    points = sorted(points, key=lambda p: (p.time_s, p.index))
    end = max([duration_s or 0.0] + [p.time_s for p in points]) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(time_s: float) -> float:
        return LEFT + plot_w * (time_s / end)

    def y_of(score: float) -> float:
        return TOP + plot_h * (1.0 - max(0.0, min(1.0, score)))

    scored = [p for p in points if p.score is not None]
    no_face = [p for p in points if p.score is None]
    summary = (f"{len(points)} sampled frames over {_fmt(end)} s; {len(scored)} with faces, "
               f"{len(no_face)} without. Threshold {_percent(threshold)} %.")
    namespaces = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out = [
        f'<svg{namespaces} class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'preserveAspectRatio="xMidYMid meet" role="group" aria-labelledby="timeline-title timeline-desc" '
        f'font-family="system-ui, sans-serif" font-size="12">',
        f'<title id="timeline-title">{escape(title)}</title>',
        f'<desc id="timeline-desc">{escape(summary)}</desc>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    if band is not None and band[1] > band[0]:
        top, bottom = y_of(band[1]), y_of(band[0])
        out.append(f'<rect class="timeline-band" x="{LEFT}" y="{_fmt(top)}" width="{plot_w}" '
                   f'height="{_fmt(max(1.0, bottom - top))}" fill="{COLOURS["band"]}" fill-opacity="0.35">'
                   f'<title>Uncertain band {_percent(band[0])}–{_percent(band[1])} %</title></rect>')
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _fmt(y_of(tick))
        out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y}" y2="{y}" stroke="{COLOURS["grid"]}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y}" text-anchor="end" dominant-baseline="middle" '
                   f'fill="{COLOURS["ink"]}">{int(tick * 100)} %</text>')
    for step in _time_ticks(end):
        x = _fmt(x_of(step))
        out.append(f'<text x="{x}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
                   f'fill="{COLOURS["ink"]}">{step:g} s</text>')
    out.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 4}" text-anchor="middle" '
               f'fill="{COLOURS["ink"]}">time</text>')
    ty = _fmt(y_of(threshold))
    out.append(f'<line class="timeline-threshold" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{ty}" y2="{ty}" '
               f'stroke="{COLOURS["fake"]}" stroke-width="1.5" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{LEFT + plot_w - 2}" y="{_fmt(y_of(threshold) - 5)}" text-anchor="end" '
               f'fill="{COLOURS["fake"]}">threshold {_percent(threshold)} %</text>')
    # Lines join consecutive frames that both have a face; a faceless frame breaks the line.
    run: list[TimelinePoint] = []
    for point in points + [None]:
        if point is not None and point.score is not None:
            run.append(point)
            continue
        if len(run) > 1:
            coords = " ".join(f"{_fmt(x_of(p.time_s))},{_fmt(y_of(p.score))}" for p in run)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{COLOURS["line"]}" stroke-width="2"/>')
        run = []
    for p in scored:
        label = classify(p.score, threshold, band)
        text = (f"Frame {p.index} at {_fmt(p.time_s)} s: fake probability {_percent(p.score)} % "
                f"({p.faces} face{'s' if p.faces != 1 else ''})")
        out.append(
            f'<a class="timeline-point point-{label}" href="{escape(link_for(p.index))}" aria-label="{escape(text)}">'
            f'<title>{escape(text)}</title>'
            f'<circle cx="{_fmt(x_of(p.time_s))}" cy="{_fmt(y_of(p.score))}" r="5" fill="{COLOURS[label]}" '
            f'stroke="#ffffff" stroke-width="1.5"/></a>')
    base = HEIGHT - BOTTOM
    for p in no_face:
        x, text = x_of(p.time_s), f"Frame {p.index} at {_fmt(p.time_s)} s: no face found"
        out.append(
            f'<a class="timeline-point point-no-face" href="{escape(link_for(p.index))}" aria-label="{escape(text)}">'
            f'<title>{escape(text)}</title>'
            f'<path d="M{_fmt(x - 4)},{_fmt(base - 4)} l8,8 m0,-8 l-8,8" stroke="{COLOURS["no_face"]}" '
            f'stroke-width="2" fill="none"/>'
            f'<rect x="{_fmt(x - 6)}" y="{_fmt(base - 6)}" width="12" height="12" fill="#ffffff" fill-opacity="0"/></a>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{base}" y2="{base}" stroke="{COLOURS["ink"]}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _time_ticks(end: float) -> list[float]:
    """About five round tick values from 0 to end (1, 2, 5 x 10^n steps)."""
    raw = end / 5
    step = 1.0
    for candidate in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600):
        step = candidate
        if candidate >= raw:
            break
    count = int(end / step + 1e-9)
    return [round(i * step, 3) for i in range(count + 1)]


def points_from_frames(frames) -> list[TimelinePoint]:
    """FrameResult rows (or anything with index/time_s/faces_count/score) -> points."""
    return [TimelinePoint(int(f.index), float(f.time_s or 0.0), int(f.faces_count or 0),
                          None if f.score is None else float(f.score)) for f in frames]
