"""The /stats page: the statistics a person reads in ten seconds, charts drawn here as SVG.

Nothing is loaded from elsewhere (no scripts, fonts or stylesheets), so the
page works on a server without internet access and leaks no visitor to a
third party.  Every number also comes as JSON (``?format=json``).
"""
from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from retrace_server.tasks.task import TaskStatus

if TYPE_CHECKING:
    from retrace_server.tasks.taskqueue import Occupancy

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Retrace Server statistics</title>
<style>
body{{font-family:sans-serif;max-width:62em;margin:2em auto;line-height:1.4;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}}
td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums}}.big{{font-size:1.6em;font-weight:bold}}
svg text{{font-family:sans-serif;font-size:12px}}section{{margin-bottom:2em}}
</style></head>
<body>
<h1>Retrace Server statistics</h1>
<p>Generated {generated}.</p>
<section id="totals"><h2>Totals</h2>
<table>
<tr><th>Retraced</th><th>Successful</th><th>Failed</th><th>Success rate</th><th>Running now</th><th>Queued now</th>
<th>Refused (server full)</th><th>First retrace</th></tr>
<tr><td class="n big" id="total">{total}</td><td class="n" id="successful">{successful}</td>
<td class="n" id="failed">{failed}</td>
<td class="n" id="success-rate">{success_rate}</td><td class="n" id="running">{running}</td>
<td class="n" id="queued">{queued}</td>
<td class="n" id="refused">{refused}</td><td>{first}</td></tr>
</table></section>
<section id="per-day"><h2>Tasks per day (last {days} days)</h2>{per_day_chart}</section>
<section id="packages"><h2>Most retraced packages</h2>{packages_chart}</section>
<section id="phases"><h2>How long each phase takes</h2>{phases_table}</section>
<section id="failures"><h2>Why tasks failed</h2>{failures_table}</section>
<section id="missing"><h2>Most wanted missing build-ids</h2>{missing_table}</section>
<section id="releases"><h2>Releases</h2>{releases_table}</section>
<section id="architectures"><h2>Architectures</h2>{arch_table}</section>
</body></html>
"""


def _table(headers: list[str], rows: list[list[str | int]], numeric_from: int = 1) -> str:
    if not rows:
        return "<p>None yet.</p>"
    head = "".join(f'<th{" class=n" if i >= numeric_from else ""}>{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(
            f'<td{" class=n" if i >= numeric_from else ""}>{html.escape(str(cell))}</td>' for i, cell in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(pairs: list[list[str | int]], width: int = 640, bar_height: int = 22, label_width: int = 230) -> str:
    """Horizontal bars, one per ``[label, count]``, labels and counts written beside them."""
    if not pairs:
        return "<p>None yet.</p>"
    most = max(int(count) for _, count in pairs) or 1
    room = width - label_width - 50
    height = bar_height * len(pairs) + 4
    parts = [f'<svg class="bar-chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for row, (label, count) in enumerate(pairs):
        y = row * bar_height + 2
        length = max(1, round(room * int(count) / most))
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{html.escape(str(label))}</text>'
            f'<rect class="bar" x="{label_width}" y="{y + 3}" width="{length}" height="{bar_height - 6}" fill="#3c6eb4">'
            f"<title>{html.escape(str(label))}: {count}</title></rect>"
            f'<text class="count" x="{label_width + length + 5}" y="{y + 15}">{count}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def day_chart(per_day: list[list[str | int]], width: int = 640, height: int = 160) -> str:
    """One column per day; the first and last dates and the busiest day's count on the axes."""
    most = max((int(count) for _, count in per_day), default=0) or 1
    column = width / max(1, len(per_day))
    top, bottom = 18, height - 20
    parts = [f'<svg class="day-chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<text x="0" y="12">max {most}</text>']
    for index, (day, count) in enumerate(per_day):
        bar = (bottom - top) * int(count) / most
        parts.append(
            f'<rect class="day" x="{index * column + 1:.1f}" y="{bottom - bar:.1f}" width="{column - 2:.1f}" '
            f'height="{bar:.1f}" fill="#3c6eb4"><title>{day}: {count}</title></rect>'
        )
    if per_day:
        parts.append(f'<text x="0" y="{height - 4}">{per_day[0][0]}</text>')
        parts.append(f'<text x="{width}" y="{height - 4}" text-anchor="end">{per_day[-1][0]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _phase_name(phase: str) -> str:
    try:
        return TaskStatus[phase.upper()].sentence
    except KeyError:
        return phase


def render(summary: dict[str, Any], occupancy: Occupancy, now: float | None = None) -> str:
    now = now if now is not None else time.time()
    rate = summary["success_rate"]
    first = summary["first_retrace"]
    phases = [
        [_phase_name(phase), numbers["count"], f"{numbers['p50']:.3f} s", f"{numbers['p95']:.3f} s"]
        for phase, numbers in summary["phases"].items()
    ]
    if summary["queue_wait"]:
        wait = summary["queue_wait"]
        phases.insert(0, ["Waiting in the queue", wait["count"], f"{wait['p50']:.3f} s", f"{wait['p95']:.3f} s"])
    return _PAGE.format(
        generated=html.escape(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))),
        total=summary["total"], successful=summary["successful"], failed=summary["failed"],
        success_rate=f"{100 * rate:.1f} %" if rate is not None else "–",
        running=occupancy.running, queued=occupancy.queued, refused=summary["refused"],
        first=html.escape(time.strftime("%Y-%m-%d %H:%M", time.gmtime(first))) if first else "–",
        days=len(summary["per_day"]),
        per_day_chart=day_chart(summary["per_day"]),
        packages_chart=bar_chart(summary["top_packages"]),
        phases_table=_table(["Phase", "Tasks", "Median", "95th percentile"], phases),
        failures_table=_table(["Reason", "Tasks"], summary["failure_categories"]),
        missing_table=_table(
            ["Build-id", "Library", "Tasks"],
            [[m["buildid"], m["library"], m["count"]] for m in summary["missing_buildids"]], numeric_from=2,
        ),
        releases_table=_table(["Release", "Tasks"], summary["releases"]),
        arch_table=_table(["Architecture", "Tasks"], summary["architectures"]),
    )
