#!/usr/bin/env python3
"""Draws the packaged Grafana dashboard's panels as one PNG, from a Prometheus that scraped gpumuxd.

Grafana itself is not needed: every panel's PromQL queries (exactly as in the dashboard JSON, with
its variables filled in: all instances, one tenant per repeated row, $__rate_interval = 4 scrape
intervals) are evaluated by the Prometheus server over the run's time range, and drawn where the
dashboard places the panel (gridPos). Used by scripts/dashboard-picture.sh; needs matplotlib.
"""

import argparse
import json
import re
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ff7383"]


def api(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def fill(expr, tenant, rate_interval):
    return (expr.replace("$__rate_interval", rate_interval)
                .replace("$instance", ".*")
                .replace("$tenant", re.escape(tenant) if tenant else ".*"))


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt) or str(metric)


def unit_formatter(unit):
    def size(v, _):
        for n, s in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= n:
                return f"{v / n:.3g} {s}"
        return f"{v:.0f} B"
    return {
        "bytes": FuncFormatter(size),
        "percentunit": FuncFormatter(lambda v, _: f"{v * 100:.0f}%"),
        "s": FuncFormatter(lambda v, _: f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2g} s"),
    }.get(unit, FuncFormatter(lambda v, _: f"{v:.3g}"))


def override(panel, name, prop):
    """The value of property `prop` that the panel's overrides give series `name` (or None)."""
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"]["id"] == "byRegexp" and re.fullmatch(o["matcher"]["options"], name):
            for p in o["properties"]:
                if p["id"] == prop:
                    return p["value"]
    return None


def draw_timeseries(ax, panel, base, tenant, start, end, step, rate_interval):
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    bars = panel["fieldConfig"]["defaults"].get("custom", {}).get("drawStyle") == "bars"
    n = 0
    right = None  # a second y axis for series the dashboard places on the right
    for t in panel["targets"]:
        data = api(base, "query_range", query=fill(t["expr"], tenant, rate_interval),
                   start=start, end=end, step=step)
        for series in data["result"]:
            xs = [float(p[0]) - start for p in series["values"]]
            ys = [float(p[1]) for p in series["values"]]
            name = legend(t.get("legendFormat", ""), series["metric"])
            color = COLORS[n % len(COLORS)]
            n += 1
            target_ax = ax
            if override(panel, name, "custom.axisPlacement") == "right":
                if right is None:
                    right = ax.twinx()
                    right.tick_params(colors=TEXT, labelsize=7)
                    right.yaxis.set_major_formatter(
                        unit_formatter(override(panel, name, "unit") or unit))
                target_ax = right
            if bars:
                target_ax.bar(xs, ys, width=step * 0.9, color=color, label=name)
            else:
                target_ax.plot(xs, ys, color=color, lw=1.8, label=name,
                               ls="--" if override(panel, name, "custom.lineStyle") else "-")
    ax.yaxis.set_major_formatter(unit_formatter(unit))
    d = panel["fieldConfig"]["defaults"]
    if "min" in d or "max" in d:
        ax.set_ylim(d.get("min"), d.get("max"))
    ax.set_xlim(0, end - start)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}s"))
    ax.grid(color=GRID, lw=0.6)
    if n:
        handles, labels = ax.get_legend_handles_labels()
        if right is not None:
            h2, l2 = right.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
            for s in right.spines.values():
                s.set_color(GRID)
        ax.legend(handles, labels, loc="upper left", fontsize=7, facecolor=PANEL, edgecolor=GRID,
                  labelcolor=TEXT, ncol=2, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color=TEXT)


def draw_stat(ax, panel, base, end):
    t = panel["targets"][0]
    result = api(base, "query", query=fill(t["expr"], None, "4s"), time=end)["result"]
    value = float(result[0]["value"][1]) if result else None
    text = "no data" if value is None else f"{value:g}"
    for m in panel["fieldConfig"]["defaults"].get("mappings", []):
        if value is not None and f"{value:g}" in m.get("options", {}):
            text = m["options"][f"{value:g}"]["text"]
    color = "#2c3235"
    for s in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
        if s["value"] is None or (value is not None and value >= s["value"]):
            color = {"green": "#37872d", "red": "#c4162a", "orange": "#fa6400"}.get(s["color"], s["color"])
    ax.set_facecolor(color)
    ax.text(0.5, 0.45, text, transform=ax.transAxes, ha="center", va="center", fontsize=22,
            color="white", weight="bold")
    ax.set_xticks([])
    ax.set_yticks([])


def layout(dashboard, tenants):
    """Panels with absolute positions: the repeated row once per tenant, below each other."""
    out, offset = [], 0
    panels = dashboard["panels"]
    i = 0
    while i < len(panels):
        p = panels[i]
        if p["type"] == "row" and p.get("repeat"):
            body = []
            j = i + 1
            while j < len(panels) and panels[j]["type"] != "row":
                body.append(panels[j])
                j += 1
            height = max(q["gridPos"]["y"] + q["gridPos"]["h"] for q in body) - p["gridPos"]["y"]
            for k, t in enumerate(tenants):
                shift = offset + k * height
                out.append((p, p["gridPos"]["y"] + shift, t))
                out.extend((q, q["gridPos"]["y"] + shift, t) for q in body)
            offset += (len(tenants) - 1) * height
            i = j
            continue
        out.append((p, p["gridPos"]["y"] + offset, None))
        i += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    ap.add_argument("--step", type=float, default=1.0)
    ap.add_argument("--rate-interval", default="4s")
    ap.add_argument("--caption", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    dashboard = json.load(open(a.dashboard))
    tenants = sorted(api(a.prometheus, "label/tenant/values", **{"match[]": "gpumux_tenant_weight"}))
    placed = layout(dashboard, tenants)
    rows = max(y + p["gridPos"]["h"] for p, y, _ in placed)
    unit_px, width_px = 30, 1600
    fig = plt.figure(figsize=(width_px / 100, rows * unit_px / 100 + 0.9), dpi=100, facecolor=BG)
    H = rows * unit_px / 100 + 0.9
    top = 0.6 / H  # room for the title
    fig.text(0.01, 1 - 0.25 / H, f"{dashboard['title']}  ·  {a.caption}", color=TEXT, fontsize=13,
             weight="bold", va="center")
    for panel, y, tenant in placed:
        g = panel["gridPos"]
        x0, w = g["x"] / 24, g["w"] / 24
        y1 = 1 - top - y * unit_px / 100 / H
        h = g["h"] * unit_px / 100 / H
        title = panel["title"].replace("$tenant", tenant or "")
        if panel["type"] == "row":
            fig.text(x0 + 0.005, y1 - h / 2, "▾ " + title, color=TEXT, fontsize=12, weight="bold",
                     va="center")
            continue
        # Room inside the panel's cell for the tick labels (left, and right for a second axis).
        ax = fig.add_axes((x0 + 0.04, y1 - h + 0.045 / H * 4, w - 0.075, h - 0.5 / H),
                          facecolor=PANEL)
        ax.set_title(title, color=TEXT, fontsize=10, loc="left")
        ax.tick_params(colors=TEXT, labelsize=7)
        for s in ax.spines.values():
            s.set_color(GRID)
        if panel["type"] == "stat":
            draw_stat(ax, panel, a.prometheus, a.end)
        else:
            draw_timeseries(ax, panel, a.prometheus, tenant, a.start, a.end, a.step, a.rate_interval)
    fig.savefig(a.out, facecolor=BG)
    print(f"wrote {a.out}: {len(placed)} panels, tenants {', '.join(tenants)}")


if __name__ == "__main__":
    main()
