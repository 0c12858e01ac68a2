"""Small server-rendered SVG charts for the status page: no script, no CDN, no front-end build.

`bar_chart` draws one bar per value (stacked pairs for succeeded/failed), `line_chart` a polyline with dots;
both scale to the largest value, label the maximum and the first/last x labels, and carry a `<title>` per
point so a hover shows the number. Output is markup-safe (labels are escaped). It knows nothing of jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 360, 90, 18


def bar_chart(pairs: Sequence[tuple[float, float]], labels: Sequence[str], title: str) -> Markup:
    """Stacked bars: (ok, failed) per slot."""
    top = max((a + b for a, b in pairs), default=0) or 1
    slot = (WIDTH - 2 * PAD) / max(len(pairs), 1)
    parts = []
    for i, ((ok, bad), label) in enumerate(zip(pairs, labels, strict=True)):
        x = PAD + i * slot + 1
        h_ok, h_bad = (HEIGHT - 2 * PAD) * ok / top, (HEIGHT - 2 * PAD) * bad / top
        base = HEIGHT - PAD
        parts.append(f'<rect class="ok" x="{x:.1f}" y="{base - h_ok:.1f}" width="{slot - 2:.1f}" '
                     f'height="{h_ok:.1f}" fill="#17752c"><title>{escape(label)}: {ok:g} ok</title></rect>')
        parts.append(f'<rect class="bad" x="{x:.1f}" y="{base - h_ok - h_bad:.1f}" width="{slot - 2:.1f}" '
                     f'height="{h_bad:.1f}" fill="#b3261e"><title>{escape(label)}: {bad:g} failed</title></rect>')
    return _frame(title, top, labels, "".join(parts))


def line_chart(values: Sequence[float | None], labels: Sequence[str], title: str, unit: str = "") -> Markup:
    """A line through the points that have a value (gaps where None)."""
    top = max((v for v in values if v is not None), default=0) or 1
    slot = (WIDTH - 2 * PAD) / max(len(values) - 1, 1)
    points, dots = [], []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        if value is None:
            continue
        x, y = PAD + i * slot, HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / top
        points.append(f"{x:.1f},{y:.1f}")
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#0b57d0">'
                    f"<title>{escape(label)}: {value:.2f}{escape(unit)}</title></circle>")
    line = f'<polyline fill="none" stroke="#0b57d0" stroke-width="1.5" points="{" ".join(points)}"/>' if points else ""
    return _frame(title, top, labels, line + "".join(dots), unit)


def _frame(title: str, top: float, labels: Sequence[str], body: str, unit: str = "") -> Markup:
    first, last = (labels[0], labels[-1]) if labels else ("", "")
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#bbb"/>'
        f'<text x="{PAD}" y="12" font-size="10" fill="#777">max {top:.3g}{escape(unit)}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 4}" font-size="10" fill="#777">{escape(first)}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 4}" font-size="10" fill="#777" text-anchor="end">{escape(last)}</text>'
        f"{body}</svg>"
    )
