#!/usr/bin/env python3
"""Renders the panels of the GMMAS Grafana dashboard to one PNG, from a live Prometheus.

    scripts/render-dashboard.py --prometheus http://127.0.0.1:9090 \\
        --dashboard helm/gmmas/files/dashboards/gmmas.json --out /tmp/gmmas.png [--minutes 15]

Each panel's queries run over the last --minutes through Prometheus's HTTP API
(/api/v1/query_range), with Grafana's variables replaced: $service by `.*` (every service),
$__rate_interval and $__interval by `1m`; $datasource is ignored (the given Prometheus
answers). Time-series panels are drawn as lines, stat panels as their last values and table
panels as a table of the series' labels, in a grid, in the dashboard's order.

Needs only the standard library and matplotlib. When matplotlib is missing it runs itself in
the venv ${GMMAS_CACHE:-~/.cache/gmmas}/ops-venv, creating it and installing matplotlib
there if needed (the venv is shared with other scripts; nothing else is changed in it).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

FIGURE_TITLE = "GMMAS — operations dashboard (rendered from Prometheus)"
COLUMNS = 3
MAX_LEGEND = 8

# Grafana unit -> axis label.
UNIT_LABELS = {
    "s": "seconds",
    "ms": "milliseconds",
    "ops": "per second",
    "reqps": "requests per second",
    "percentunit": "share",
    "percent": "percent",
    "bytes": "bytes",
    "short": "count",
    "none": "value",
    "dateTimeFromNow": "time since",
}


def ensure_matplotlib():
    """Re-runs this script in the ops venv when the current Python lacks matplotlib."""
    try:
        import matplotlib  # noqa: F401

        return
    except ImportError:
        pass
    cache = Path(os.environ.get("GMMAS_CACHE") or Path.home() / ".cache" / "gmmas")
    venv = cache / "ops-venv"
    python = venv / "bin" / "python"
    if os.environ.get("GMMAS_RENDER_IN_VENV") == "1":
        sys.exit(f"render-dashboard: matplotlib is still missing in {venv}")
    if not python.exists():
        print(f"render-dashboard: creating {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True)
    if probe.returncode != 0:
        print(f"render-dashboard: pip install matplotlib (in {venv})", file=sys.stderr)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"], check=True)
    os.environ["GMMAS_RENDER_IN_VENV"] = "1"
    os.execv(str(python), [str(python), os.path.abspath(__file__), *sys.argv[1:]])


# --- Prometheus ---------------------------------------------------------------------------


class QueryError(Exception):
    pass


def substitute(expr):
    """Replaces the dashboard's Grafana variables with what a rendering of every service uses."""
    expr = re.sub(r"\$\{service(?::[a-z]+)?\}|\$service\b", ".*", expr)
    expr = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", "1m", expr)
    return expr


def query_range(base, expr, start, end, step):
    """Runs one range query; returns [(labels, [(unix_time, value), ...]), ...]."""
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}s"})
    url = f"{base.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except (ValueError, OSError):
            raise QueryError(f"HTTP {e.code}") from e
    if body.get("status") != "success":
        raise QueryError(body.get("error") or "query failed")
    data = body["data"]
    if data.get("resultType") != "matrix":
        raise QueryError(f"unexpected result type {data.get('resultType')}")
    return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in data["result"]]


def check_reachable(base):
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/api/v1/status/buildinfo", timeout=10) as resp:
            info = json.load(resp)
        return info.get("data", {}).get("version", "?")
    except (urllib.error.URLError, OSError, ValueError) as e:
        sys.exit(f"render-dashboard: cannot reach Prometheus at {base}: {e}")


def legend_name(fmt, labels):
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{inner}}}" if inner or "__name__" in labels else "value"
    name = re.sub(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return " ".join(name.split()) or "value"


# --- drawing ------------------------------------------------------------------------------


def panels_in_order(dashboard):
    """The dashboard's panels (rows' children included), without rows, top to bottom."""
    flat = []
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            flat.extend(p.get("panels", []))
        else:
            flat.append(p)
    flat = [p for p in flat if p.get("type") != "row"]
    return sorted(flat, key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0)))


def human_bytes(v, _pos=None):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(v) < 1024 or unit == "PiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f}"


def human_age(seconds):
    seconds = max(0.0, seconds)
    for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.1f} {name} ago"
    return f"{seconds:.0f} s ago"


def format_value(v, unit, now):
    if math.isnan(v):
        return "NaN"
    if unit == "bytes":
        return human_bytes(v)
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v:.3g} s"
    if unit == "dateTimeFromNow":
        return human_age(now - v / 1000.0)
    if unit == "ops":
        return f"{v:.3g}/s"
    return f"{v:.4g}"


def mapped(value, defaults):
    """Applies the panel's value mappings; returns (text, colour) or None."""
    for m in defaults.get("mappings", []):
        if m.get("type") == "value":
            key = f"{value:g}"
            if key in m.get("options", {}):
                o = m["options"][key]
                return o.get("text", key), o.get("color")
    return None


def threshold_colour(value, defaults):
    colour = None
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            colour = step.get("color")
    return colour


GRAFANA_COLOURS = {"green": "#37872d", "red": "#c4162a", "blue": "#1f60c4", "orange": "#fa6400", "yellow": "#e0b400"}


def note(ax, text, colour="#666666"):
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color=colour, transform=ax.transAxes, wrap=True)


def byte_scale(series):
    """The binary unit that suits the largest value: (divisor, name)."""
    top = max((abs(v) for _, points in series for _, v in points if not math.isnan(v)), default=0)
    scale, name = 1, "B"
    for n in ("KiB", "MiB", "GiB", "TiB"):
        if top >= scale * 1024:
            scale, name = scale * 1024, n
    return scale, name


def draw_timeseries(ax, panel, series, unit, errors, start, end):
    import matplotlib.dates as mdates
    from matplotlib.ticker import PercentFormatter

    ylabel = UNIT_LABELS.get(unit, unit)
    scale = 1
    if unit == "bytes":
        scale, name = byte_scale(series)
        ylabel = f"bytes ({name})"
    drawn = 0
    for name, points in series:
        values = [v / scale for _, v in points]
        if not points or all(math.isnan(v) for v in values):
            continue
        times = [datetime.fromtimestamp(t, tz=timezone.utc) for t, _ in points]
        ax.plot(times, values, linewidth=1.4, label=name)
        drawn += 1
    ax.set_xlabel("time (UTC)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_xlim(datetime.fromtimestamp(start, tz=timezone.utc), datetime.fromtimestamp(end, tz=timezone.utc))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7))
    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M" if end - start >= 1200 else "%H:%M:%S", tz=timezone.utc))
    ax.grid(True, alpha=0.3)
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if drawn == 0:
        ax.set_yticks([])
        note(ax, errors or panel_no_value(panel), "#c4162a" if errors else "#666666")
        return
    handles, labels = ax.get_legend_handles_labels()
    if len(handles) > MAX_LEGEND:
        extra = len(handles) - MAX_LEGEND
        handles, labels = handles[:MAX_LEGEND], labels[:MAX_LEGEND - 1] + [f"{labels[MAX_LEGEND - 1]} (+{extra} more)"]
    ax.legend(handles, labels, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    if errors:
        ax.text(0.01, 0.98, errors, fontsize=9, color="#c4162a", va="top", transform=ax.transAxes)


def panel_no_value(panel):
    nv = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue")
    return nv if nv and "no data" in nv.lower() else f"no data{f' ({nv})' if nv else ''}"


def draw_stat(ax, panel, series, unit, errors, now):
    from matplotlib.patches import FancyBboxPatch

    ax.axis("off")
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    last = []
    for name, points in series:
        vals = [(t, v) for t, v in points if not math.isnan(v)]
        if vals:
            last.append((name, vals[-1][1]))
    if not last:
        note(ax, errors or panel_no_value(panel), "#c4162a" if errors else "#666666")
        return
    last = last[:12]
    n = len(last)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    for i, (name, v) in enumerate(last):
        r, c = divmod(i, cols)
        x0, y0 = c / cols, 1 - (r + 1) / rows
        m = mapped(v, defaults)
        text, colour = m if m else (format_value(v, unit, now), None)
        colour = colour or threshold_colour(v, defaults) or defaults.get("color", {}).get("fixedColor") or "blue"
        colour = GRAFANA_COLOURS.get(colour, colour)
        ax.add_patch(FancyBboxPatch((x0 + 0.01, y0 + 0.03), 1 / cols - 0.02, 1 / rows - 0.06,
                                    boxstyle="round,pad=0.005", transform=ax.transAxes, facecolor=colour,
                                    edgecolor="none", alpha=0.9))
        ax.text(x0 + 0.5 / cols, y0 + 0.62 / rows, text, ha="center", va="center", fontsize=15 if n <= 4 else 12,
                color="white", weight="bold", transform=ax.transAxes)
        ax.text(x0 + 0.5 / cols, y0 + 0.25 / rows, name, ha="center", va="center", fontsize=11, color="white",
                transform=ax.transAxes, wrap=True)


def draw_table(ax, panel, raw_series, errors):
    ax.axis("off")
    if not raw_series:
        note(ax, errors or panel_no_value(panel), "#c4162a" if errors else "#666666")
        return
    order = {}
    for t in panel.get("transformations", []):
        order.update(t.get("options", {}).get("indexByName", {}))
    keys = sorted({k for labels, _ in raw_series for k in labels if k != "__name__"},
                  key=lambda k: (order.get(k, 99), k))
    rows = [[labels.get(k, "") for k in keys] for labels, _ in raw_series[:12]]
    table = ax.table(cellText=rows, colLabels=keys, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1, 1.5)
    for (r, _c), cell in table.get_celld().items():
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#e8e8e8")


def render(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "xtick.labelsize": 9, "ytick.labelsize": 9,
                         "legend.fontsize": 9})
    with open(args.dashboard) as f:
        dashboard = json.load(f)
    version = check_reachable(args.prometheus)
    end = datetime.now(timezone.utc).timestamp()
    start = end - args.minutes * 60
    step = max(5, int(args.minutes * 60 / 240))
    panels = panels_in_order(dashboard)
    rows = math.ceil(len(panels) / COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * 6.4, rows * 4.6), squeeze=False,
                             layout="constrained")
    failures = 0
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.axis("off")
            continue
        panel = panels[i]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        series, raw, errors = [], [], []
        for t in panel.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            try:
                result = query_range(args.prometheus, substitute(expr), start, end, step)
            except (QueryError, urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{t.get('refId', '?')}: {e}")
                print(f"render-dashboard: panel {panel.get('title')!r} {t.get('refId')}: {e}", file=sys.stderr)
                failures += 1
                continue
            for labels, points in result:
                series.append((legend_name(t.get("legendFormat"), labels), points))
                raw.append((labels, points))
        err = "query error: " + "; ".join(errors)[:120] if errors else ""
        ax.set_title(panel.get("title", "(untitled)"), fontsize=12, loc="left", weight="bold")
        kind = panel.get("type")
        if kind == "stat":
            draw_stat(ax, panel, series, unit, err, end)
        elif kind == "table":
            draw_table(ax, panel, raw, err)
        else:
            draw_timeseries(ax, panel, series, unit, err, start, end)
    span = (f"{datetime.fromtimestamp(start, tz=timezone.utc):%Y-%m-%d %H:%M} – "
            f"{datetime.fromtimestamp(end, tz=timezone.utc):%H:%M} UTC (last {args.minutes:g} min, step {step}s)")
    fig.suptitle(f"{FIGURE_TITLE}\n{span} · {dashboard.get('title', '')} · Prometheus {version} at {args.prometheus}",
                 fontsize=15)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"render-dashboard: wrote {out} ({len(panels)} panels, {failures} failed queries)")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL of Prometheus, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default="helm/gmmas/files/dashboards/gmmas.json", help="Grafana dashboard JSON")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--minutes", type=float, default=15, help="time range to draw, ending now (default 15)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default 100)")
    args = parser.parse_args()
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    ensure_matplotlib()
    sys.exit(render(args))


if __name__ == "__main__":
    main()
