"""Small SVG charts drawn on the server: stacked bars per day, and lines over time.

A module of our own rather than a charting library: the dashboard needs two shapes,
drawn in ~100 lines, styled by the page's stylesheet (so dark and light follow the
system setting) and with nothing to load in the browser. Every label is escaped;
numbers are formatted here, never taken as markup.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT = 640, 160
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 20, 8


def _svg(body: list[str], title: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(title)}" >'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def _axis(top: float, fmt) -> list[str]:
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    out = []
    for i in range(3):
        value = top * i / 2
        y = HEIGHT - PAD_BOTTOM - plot_h * i / 2
        out.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/><text class="tick" x="{PAD_LEFT - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{escape(fmt(value))}</text>')
    return out


def bars(labels: list[str], series: dict[str, list[float]], title: str,
         fmt=lambda v: f"{v:g}") -> str:
    """Stacked bars, one per label; each series has a CSS class bar-<name>."""
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top = _nice(max(totals, default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(1, len(labels))
    body = _axis(top, fmt)
    for i, label in enumerate(labels):
        x, y = PAD_LEFT + i * step + step * 0.15, HEIGHT - PAD_BOTTOM
        parts = []
        for name, values in series.items():
            h = plot_h * values[i] / top if top else 0
            if h > 0:
                y -= h
                parts.append(f'<rect class="bar-{escape(name)}" x="{x:.1f}" y="{y:.1f}" '
                             f'width="{step * 0.7:.1f}" height="{h:.1f}"/>')
        tip = ", ".join(f"{n}: {fmt(v[i])}" for n, v in series.items() if v[i])
        body.append(f'<g><title>{escape(label)}{": " if tip else ""}{escape(tip)}</title>'
                    f'{"".join(parts)}</g>')
        if i % max(1, len(labels) // 6) == 0:
            body.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 5}">'
                        f'{escape(label)}</text>')
    return _svg(body, title)


def line(points: list[tuple[float, float]], title: str, fmt=lambda v: f"{v:g}",
         limit: float | None = None) -> str:
    """One series over time (x in seconds from the start), with the limit dashed."""
    if not points:
        return _svg([f'<text class="tick" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
                     'text-anchor="middle">no samples yet</text>'], title)
    span = max(points[-1][0] - points[0][0], 1.0)
    peak = max(v for _, v in points)
    # A limit far above the use would flatten the line: it is then named, not drawn.
    drawn = limit if limit and limit <= 2 * peak else None
    top = _nice(max(peak, drawn or 0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    t0 = points[0][0]

    def xy(t: float, v: float) -> str:
        return (f"{PAD_LEFT + plot_w * (t - t0) / span:.1f},"
                f"{HEIGHT - PAD_BOTTOM - (plot_h * v / top if top else 0):.1f}")

    body = _axis(top, fmt)
    if drawn:
        body.append(f'<polyline class="limit" points="{xy(t0, drawn)} '
                    f'{xy(t0 + span, drawn)}"/>')
    if limit:
        body.append(f'<text class="tick" x="{WIDTH - 4}" y="{PAD_TOP + 8}" '
                    f'text-anchor="end">limit {escape(fmt(limit))}</text>')
    body.append(f'<polyline class="series" points="{" ".join(xy(t, v) for t, v in points)}"/>')
    for t, v in points if len(points) <= 120 else ():
        x, y = xy(t, v).split(",")
        body.append(f'<circle class="dot" cx="{x}" cy="{y}" r="2"><title>'
                    f'{t - t0:.0f} s: {escape(fmt(v))}</title></circle>')
    body.append(f'<text class="tick" x="{WIDTH - 4}" y="{HEIGHT - 5}" text-anchor="end">'
                f'{span:.0f} s</text>')
    return _svg(body, title)


def _nice(value: float) -> float:
    """A round top for the axis, at or above value."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1.0
    if value < 1:
        magnitude = 0.1
        while magnitude > value:
            magnitude /= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude
