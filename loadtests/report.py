"""Turn locust's final stats into summary.json, check SLO gates, build the compare table and page.

The figures come from locust's --json-file, which locust writes once at shutdown with every request
counted. Its _stats.csv is only the last periodic (1 s) snapshot and can miss the final second of a
run, so the harness writes its own stats.csv from the final figures next to locust's files.
Percentiles use locust's response-time histogram, which keeps whole milliseconds below 100 ms
(10 ms steps up to 1 s): p50/p95/p99 are that coarse; min/avg/max are exact. Use the wrk bench for
sub-millisecond figures.
"""

import csv
import html
import json
import math
import os

PERCENTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}
STATS_COLUMNS = (
    "method name requests failures fail_ratio rps avg_ms min_ms p50_ms p95_ms p99_ms max_ms".split()
)


def percentile(histogram, fraction):
    """Nearest-rank percentile over {value: count}; None when empty."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def _figures(entries):
    """Aggregate figures over one or more locust stats entries (one endpoint, or all of them)."""
    requests = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    hist = {}
    for e in entries:
        for value, count in e["response_times"].items():
            hist[float(value)] = hist.get(float(value), 0) + count
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    span = (max(ends) - min(starts)) if starts and ends else 0
    mins = [e["min_response_time"] for e in entries if e.get("min_response_time") is not None]
    out = {
        "requests": requests,
        "failures": failures,
        "fail_ratio": failures / requests if requests else 0.0,
        "rps": requests / span if span > 0 else 0.0,
        "avg_ms": sum(e["total_response_time"] for e in entries) / requests if requests else None,
        "min_ms": min(mins) if mins else None,
        "max_ms": max((e["max_response_time"] for e in entries), default=None),
    }
    for key, fraction in PERCENTILES.items():
        out[key] = percentile(hist, fraction)
    return out


def read_locust_json(path):
    """(aggregated figures, [per-endpoint figures]) from locust's final --json-file."""
    with open(path) as f:
        entries = json.load(f)
    endpoints = [dict(method=e["method"], name=e["name"], **_figures([e])) for e in entries]
    endpoints.sort(key=lambda e: (e["name"], e["method"]))
    return _figures(entries), endpoints


def write_stats_csv(path, summary):
    """Final per-endpoint figures plus an Aggregated row, in the harness's own columns."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(STATS_COLUMNS)
        for row in summary["endpoints"] + [dict(summary, method="", name="Aggregated")]:
            w.writerow(["" if row.get(c) is None else row.get(c) for c in STATS_COLUMNS])


def last_history_row(path):
    """The newest aggregated row of <prefix>_stats_history.csv, or None (for the progress line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, StopIteration):
        return None
    for line in reversed(tail):
        fields = next(csv.reader([line]), [])
        complete = header and len(fields) == len(header)  # the last line may be half written
        if complete and fields[0] != "Timestamp" and "Aggregated" in fields:
            return dict(zip(header, fields))
    return None


def build_summary(locust_json, meta):
    """summary.json's content: run metadata plus aggregated and per-endpoint figures."""
    total, endpoints = read_locust_json(locust_json)
    summary = dict(meta)
    summary.update(total)
    summary["endpoints"] = endpoints
    rss = summary.get("server_rss_bytes")
    summary["server_rss_mib"] = round(rss / 2**20, 1) if rss else None
    return summary


def check_slo(summary, fail_ratio=None, p99_ms=None):
    """None if the run meets the gates, else the one-line reason it does not."""
    if summary["requests"] == 0:
        return "no request completed"
    if fail_ratio is not None and summary["fail_ratio"] > fail_ratio:
        return (
            f"failure ratio {summary['fail_ratio']:.4f} > {fail_ratio:g} "
            f"({summary['failures']} of {summary['requests']} requests failed)"
        )
    if p99_ms is not None and (summary["p99_ms"] or 0) > p99_ms:
        return f"p99 latency {summary['p99_ms']:g} ms > {p99_ms:g} ms"
    return None


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def load_summary(path):
    if os.path.isdir(path):
        path = os.path.join(path, "summary.json")
    with open(path) as f:
        return json.load(f)


# --- compare -----------------------------------------------------------------------------------

COLUMNS = [  # (key, header, format)
    ("rps", "req/s", "{:,.0f}"),
    ("cpu_us_per_req", "server CPU µs/req", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:g}"),
    ("p99_ms", "p99 ms", "{:g}"),
    ("max_ms", "max ms", "{:,.0f}"),
    ("failures", "failures", "{:,d}"),
    ("server_rss_mib", "RSS MiB", "{:.1f}"),
]
CHARTS = [  # figures that get a bar chart, and which way is better
    ("rps", "requests per second", "higher is better"),
    ("cpu_us_per_req", "server CPU per request (µs)", "lower is better"),
    ("p50_ms", "median latency (ms)", "lower is better"),
    ("p99_ms", "p99 latency (ms)", "lower is better"),
    ("failures", "failed requests", "lower is better"),
    ("server_rss_mib", "server RSS at end (MiB)", "lower is better"),
]


# The load generator ran out of CPU first when its cores were this busy (CPU seconds over wall
# seconds, per locust process) while the server's was at least SERVER_HEADROOM lower.
LOAD_SATURATED = 0.85
SERVER_HEADROOM = 0.2


def _busy(summary, side):
    return ((summary.get("cores") or {}).get(side) or {}).get("busy")


def _locust_busy_per_core(summary):
    """locust's busy figure per process it ran (several processes add up past 1.0)."""
    busy = _busy(summary, "locust")
    if busy is None:
        return None
    load = (summary.get("cores") or {}).get("locust") or {}
    processes = load.get("processes") or 1
    if processes < 1:  # -1: one per CPU it was given
        processes = len(load.get("pinned") or []) or os.cpu_count() or 1
    return busy / processes


def client_bound(summary):
    """True when locust, not the server, was the limit of this run."""
    load, server = _locust_busy_per_core(summary), _busy(summary, "server")
    if load is None or server is None:
        return False
    return load >= LOAD_SATURATED and server <= load - SERVER_HEADROOM


def cpu_us_per_request(summary):
    """Server CPU microseconds per request.

    From the server's CPU seconds when the summary has them; otherwise derived from its busy
    figure (CPU seconds over the seconds of the load) over req/s, which is the same ratio to
    within the rounding of "busy" and the second locust takes to start and stop.
    """
    if summary.get("error"):
        return None
    server = (summary.get("cores") or {}).get("server") or {}
    if server.get("cpu_s") is not None and summary.get("requests"):
        return server["cpu_s"] / summary["requests"] * 1e6
    if server.get("busy") is None or not summary.get("rps"):
        return None
    return server["busy"] / summary["rps"] * 1e6


def figure(summary, key):
    """A column's value for one summary (server CPU per request is computed)."""
    return cpu_us_per_request(summary) if key == "cpu_us_per_req" else summary.get(key)


def headline(summaries):
    """The compare page's lead sentence when the load generator saturated first, else ''."""
    bound = [s for s in summaries if not s.get("error") and client_bound(s)]
    if not bound:
        return ""
    names = ", ".join(s.get("server") or s.get("target") or "?" for s in bound)
    return (
        f"**Headline: server CPU per request.** locust ran out of CPU before the server "
        f"(client-bound: {names}), so req/s there is what the client could send, a floor for "
        "the server, not its limit; compare the servers by server CPU µs per request (lower "
        "is better)."
    )


def _fmt(value, spec):
    return "-" if value is None else spec.format(value)


def _cores(summary):
    cores = summary.get("cores") or {}
    srv, load = cores.get("server") or {}, cores.get("locust") or {}
    busy = lambda side: "-" if side.get("busy") is None else f"{side['busy']:.2f}"  # noqa: E731
    return f"{busy(srv)} / {busy(load)}"


HEAD = ["server"] + [h for _, h, _ in COLUMNS] + ["cores busy srv/locust"]


def _rows(summaries):
    """Table cells, one row per summary; a summary with 'error' gets a row saying so."""
    for s in summaries:
        name = s.get("server") or s.get("target") or "?"
        if s.get("error"):
            yield [name] + ["-"] * len(COLUMNS) + [f"failed: {s['error']}"]
        else:
            cells = [_fmt(figure(s, k), spec) for k, _, spec in COLUMNS]
            if client_bound(s):
                cells[0] += " (client-bound)"
            yield [name] + cells + [_cores(s)]


def compare_table(summaries):
    """Markdown table of the summaries' figures."""
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * (len(HEAD) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in _rows(summaries)]
    return "\n".join(lines)


def describe_run(summaries):
    """One line saying what was measured, from the first good summary."""
    s = next((x for x in summaries if not x.get("error")), None)
    if not s:
        return "no run completed"
    cores = s.get("cores") or {}
    pin = cores.get("server", {}).get("pinned")
    load = cores.get("locust", {})
    pinning = "unpinned"
    if pin:
        cpus = lambda c: ",".join(map(str, c or []))  # noqa: E731
        pinning = f"server pinned to CPU {cpus(pin)}, locust to CPU {cpus(load.get('pinned'))}"
    loads = [x["machine"]["loadavg_at_start"][0] for x in summaries if x.get("machine")]
    busy = f"; 1-min load average at start {', '.join(f'{x:g}' for x in loads)}" if loads else ""
    return (
        f"scenario `{s['scenario']}`, {s['users']} users (spawn {s['spawn_rate']:g}/s), "
        f"{s['duration_s']:g} s per server, locust processes: {load.get('processes', 1)}, "
        f"{pinning}; locust {s.get('locust_version', '?')}{busy}"
    )


def _bar_chart(title, note, rows, warning=None, marked=()):
    """Inline SVG horizontal bar chart; rows are (label, value or None).

    ``warning`` is a red line under the title; labels in ``marked`` get their bar hatched grey
    and the word "client-bound" after the value.
    """
    width, label_w, bar_h, gap = 640, 190, 24, 8
    first = 54 if warning else 34
    height = first + 6 + len(rows) * (bar_h + gap)
    top = max([v for _, v in rows if v is not None] + [0]) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="0" y="18" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="{width}" y="18" font-size="12" text-anchor="end" fill="#666">'
        f"{html.escape(note)}</text>",
    ]
    if warning:
        parts.append(
            f'<text x="0" y="38" font-size="13" fill="#b00020">{html.escape(warning)}</text>'
        )
    if marked:  # one page holds one chart with marked bars, so the id stays unique
        parts.append(
            '<defs><pattern id="bound" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#9aa"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2"/></pattern></defs>'
        )
    for i, (label, value) in enumerate(rows):
        y = first + i * (bar_h + gap)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7}" font-size="13" text-anchor="end">'
            f"{html.escape(label)}</text>"
        )
        if value is None:
            parts.append(
                f'<text x="{label_w}" y="{y + bar_h * 0.7}" font-size="13" fill="#999">n/a</text>'
            )
            continue
        bound = label in marked
        w = max(1.0, (width - label_w - 170) * value / top)
        fill = "url(#bound)" if bound else "#3a7d44"
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{fill}" rx="3"/>'
        )
        shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        shown += " client-bound" if bound else ""
        parts.append(
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7}" font-size="13">{shown}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def compare_html(summaries, links=None):
    """A self-contained page: what ran, the table, a bar chart per figure, the locust reports."""
    good = [s for s in summaries if not s.get("error")]
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cells in _rows(summaries)
    ]
    bound = [s.get("server") or "?" for s in good if client_bound(s)]
    charts = []
    for key, title, note in CHARTS:
        bars = [(s.get("server") or "?", figure(s, key)) for s in good]
        if key == "rps" and bound:
            warning = ("hatched: client-bound (locust saturated its core first), so the bar is "
                       "the client's limit")
            charts.append(_bar_chart(title + " (client-bound)", note, bars, warning, bound))
        elif key == "cpu_us_per_req" and bound:
            charts.insert(0, _bar_chart("Headline: " + title, note, bars))
        else:
            charts.append(_bar_chart(title, note, bars))
    lead = headline(summaries).replace("**", "")
    lead_html = f"<p><strong>{html.escape(lead)}</strong></p>\n" if lead else ""
    link_items = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>'
        for label, href in (links or [])
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>greenserve load comparison</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}svg{{display:block;margin:1.5em 0}}</style></head>
<body><h1>Load comparison</h1><p>{html.escape(describe_run(summaries))}</p>
{lead_html}
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in HEAD)}</tr>{"".join(rows)}</table>
{"".join(charts)}
<h2>Locust reports</h2><ul>{link_items}</ul>
<p>Percentiles are locust's: whole milliseconds below 100 ms.
"cores busy" is CPU time over wall time during the load; server CPU per request is the
server's CPU time over the requests it answered.</p>
</body></html>
"""
