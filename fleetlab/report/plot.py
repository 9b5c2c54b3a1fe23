"""progress.png: every experiment a dot in submission order and the incumbent as a green step line.

Drawn the way autoresearch's progress plot is (grey dots, a green best-so-far line labelled with the kept changes),
with what validation adds made visible: the line is each incumbent's validated mean (not its lucky screening run),
with the noise floor as a band around it; replicates and validation runs are blue diamonds, not discards; pruned runs
sit at the last value they showed; failures are red crosses on the bottom edge and off-scale results grey triangles
on the worse edge, so one diverged run cannot flatten the whole picture. matplotlib is imported here only, and only
the object API is used (no pyplot, no global backend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

GREY, GREEN, RED, AMBER, BLUE = "#9e9e9e", "#2ca02c", "#d62728", "#ff9f1c", "#1f77b4"
LABEL_CHARS = 42  # kept experiments' descriptions are cut to this length on the plot
MAX_LABELS = 16   # label at most this many new bests (the largest steps), so a long session stays readable


def _short(text: str, n: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _label_choice(new_bests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The new bests worth a label: all of them when few, else the first, the last and the largest steps."""
    if len(new_bests) <= MAX_LABELS:
        return new_bests
    steps = sorted(range(1, len(new_bests) - 1),
                   key=lambda i: -abs(new_bests[i]["metric"] - new_bests[i - 1]["metric"]))[: MAX_LABELS - 2]
    return [new_bests[i] for i in sorted({0, len(new_bests) - 1, *steps})]


def _ylimits(values: list[float], anchors: list[float], goal: str) -> tuple[float, float]:
    """A y range that shows the interesting band: everything from the best to somewhat past the baseline.

    `anchors` (baseline, kept values) are always inside; other points further than one band-width beyond the worse
    anchor are drawn on the edge instead of stretching the axis.
    """
    lo_a, hi_a = min(anchors), max(anchors)
    band = max(hi_a - lo_a, 1e-12 + 0.05 * abs(hi_a))
    if goal == "minimize":
        lo, hi = min(values + [lo_a]), min(max(values), hi_a + band)
    else:
        lo, hi = max(min(values), lo_a - band), max(values + [hi_a])
    pad = 0.08 * max(hi - lo, 1e-12 + 0.02 * abs(hi))
    return lo - pad, hi + pad


def _path_xy(path: list[dict[str, Any]], last_x: float) -> tuple[list[float], list[float]]:
    """The incumbent's validated mean as a step line: each incumbent from its own experiment number on."""
    xs = [p["number"] for p in path]
    ys = [p["mean"] for p in path]
    return xs + [max(last_x, xs[-1])], ys + [ys[-1]]


def plot_progress(points: list[dict[str, Any]], path: list[dict[str, Any]], sigma: float | None, out: Path,
                  metric: str, goal: str, title: str) -> Path:
    """Write the progress plot to `out` (PNG, written whole then moved into place).

    `points` come from fleetlab.report.plot_points (number, metric, kind, description); `path` is
    fleetlab.facts.incumbent_path (the green line: each incumbent's validated mean); `sigma` the noise floor, drawn
    as a band of ±σ around the line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric} ({'lower' if goal == 'minimize' else 'higher'} is better)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.25)

    def of(kind):
        return [p for p in points if p["kind"] == kind]

    scored = [p for p in points if p["metric"] is not None and math.isfinite(p["metric"])]
    failed = of("crash")
    if not scored:
        ax.text(0.5, 0.5, "no finished experiments yet" if not failed else "no experiment has produced a metric yet",
                ha="center", va="center", transform=ax.transAxes, fontsize=13, color="#555555")
        ax.set_yticks([])
    else:
        values = [p["metric"] for p in scored]
        anchors = [p["mean"] for p in path] or [scored[0]["metric"]]
        if sigma and path:
            anchors += [anchors[0] + sigma, anchors[-1] - sigma]
        lo, hi = _ylimits(values, anchors, goal)
        ax.set_ylim(lo, hi)
        last_x = max(p["number"] for p in points)

        def draw(ps, label, **style):
            inside = [p for p in ps if lo <= p["metric"] <= hi]
            if inside:
                ax.scatter([p["number"] for p in inside], [p["metric"] for p in inside], label=label, **style)

        draw(of("discard"), "discarded", s=18, c=GREY, alpha=0.6, zorder=2)
        draw(of("pruned"), "pruned (last value seen)", s=22, facecolors="none", edgecolors=GREY, linewidths=1.0,
             zorder=2)
        draw(of("measure"), "replicates / validation runs", s=28, marker="D", c=BLUE, alpha=0.7, zorder=3)
        draw(of("pending"), "awaiting validation", s=40, facecolors="none", edgecolors=AMBER, linewidths=1.4,
             zorder=3)
        draw(of("keep"), "baseline / kept (the run decided on)", s=55, c=GREEN, edgecolors="black", linewidths=0.6,
             zorder=4)
        off = [p for p in scored if not lo <= p["metric"] <= hi]
        if off:  # on the worse edge, in axes units
            edge = 0.97 if goal == "minimize" else 0.03
            ax.scatter([p["number"] for p in off], [edge] * len(off), marker="^" if goal == "minimize" else "v",
                       s=26, c=GREY, alpha=0.8, transform=ax.get_xaxis_transform(), zorder=2, label="off scale")
        if path:
            xs, ys = _path_xy(path, last_x)
            if sigma:
                ax.fill_between(xs, [y - sigma for y in ys], [y + sigma for y in ys], step="post", color=GREEN,
                                alpha=0.12, linewidth=0, zorder=1, label=f"noise floor (±σ = {sigma:.3g})")
            ax.step(xs, ys, where="post", color=GREEN, linewidth=2, alpha=0.85, zorder=3,
                    label="incumbent (validated mean)")
            x_lo = min(p["number"] for p in points)
            for p in _label_choice([{**q, "metric": q["mean"]} for q in path[1:]]):
                # labels lean away from the curve; in the right third they end at the point instead of starting there
                right = last_x > x_lo and (p["number"] - x_lo) / (last_x - x_lo) > 0.66
                up = 1 if goal == "minimize" else -1
                desc = next((q["description"] for q in points if q["id"] == p["id"]), p["id"])
                ax.annotate(_short(desc), (p["number"], p["metric"]), textcoords="offset points",
                            xytext=(-5 if right else 5, 5 * up), fontsize=7, color="#1b5e20",
                            rotation=(-25 if right else 25) * up, rotation_mode="anchor",
                            ha="right" if right else "left", va="bottom" if up > 0 else "top", zorder=5)

    if failed:
        # red crosses on the bottom edge: x in data units, y in axes units
        ax.scatter([p["number"] for p in failed], [0.02] * len(failed), marker="x", s=34, c=RED, zorder=4,
                   transform=ax.get_xaxis_transform(), clip_on=False, label="crash / failure")
    if points:
        numbers = [p["number"] for p in points]
        ax.set_xlim(min(numbers) - 1, max(numbers) + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    fig.tight_layout()

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)
    return out
