"""progress.png: every experiment a grey dot in submission order, the kept ones green with a best-so-far step line.

Drawn the way autoresearch's progress plot is (kept experiments labelled with their description), plus failures as red
crosses on the bottom edge and off-scale results as grey triangles on the top edge, so one diverged run cannot flatten
the whole picture. matplotlib is imported here only, and only the object API is used (no pyplot, no global backend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

GREY, GREEN, RED, AMBER = "#9e9e9e", "#2ca02c", "#d62728", "#ff9f1c"
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


def plot_progress(points: list[dict[str, Any]], path: Path, metric: str, goal: str, title: str) -> Path:
    """Write the progress plot to `path` (PNG, written whole then moved into place).

    Each point: number (x), metric (float or None), status (keep/discard/crash/pending), failed (bool), description.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric} ({'lower' if goal == 'minimize' else 'higher'} is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)

    scored = [p for p in points if p["metric"] is not None and math.isfinite(p["metric"]) and not p["failed"]]
    failed = [p for p in points if p["failed"]]
    kept = [p for p in scored if p["status"] == "keep"]
    pending = [p for p in scored if p["status"] == "pending"]
    others = [p for p in scored if p["status"] not in ("keep", "pending")]

    if not scored:
        ax.text(0.5, 0.5, "no finished experiments yet" if not failed else "no experiment has produced a metric yet",
                ha="center", va="center", transform=ax.transAxes, fontsize=13, color="#555555")
        ax.set_yticks([])
    else:
        values = [p["metric"] for p in scored]
        anchors = [p["metric"] for p in kept] or [scored[0]["metric"]]
        lo, hi = _ylimits(values, anchors, goal)
        ax.set_ylim(lo, hi)

        def inside(ps):
            return [p for p in ps if lo <= p["metric"] <= hi]

        def outside(ps):
            return [p for p in ps if not lo <= p["metric"] <= hi]

        ax.scatter([p["number"] for p in inside(others)], [p["metric"] for p in inside(others)],
                   s=18, c=GREY, alpha=0.6, zorder=2, label="discarded")
        off = outside(others + pending)
        if off:  # on the worse edge, in axes units
            edge = 0.97 if goal == "minimize" else 0.03
            ax.scatter([p["number"] for p in off], [edge] * len(off), marker="^" if goal == "minimize" else "v",
                       s=26, c=GREY, alpha=0.8, transform=ax.get_xaxis_transform(), zorder=2, label="off scale")
        if pending:
            ax.scatter([p["number"] for p in inside(pending)], [p["metric"] for p in inside(pending)],
                       s=40, facecolors="none", edgecolors=AMBER, linewidths=1.4, zorder=3, label="pending")
        if kept:
            ax.scatter([p["number"] for p in kept], [p["metric"] for p in kept], s=55, c=GREEN,
                       edgecolors="black", linewidths=0.6, zorder=4, label="kept")
            xs, ys, best, new_bests = [], [], None, []
            for p in kept:  # the incumbent only moves on a keep: a step line through the best kept so far
                if best is None or (p["metric"] < best if goal == "minimize" else p["metric"] > best):
                    best = p["metric"]
                    new_bests.append(p)
                xs.append(p["number"])
                ys.append(best)
            last_x = max(p["number"] for p in points)
            ax.step(xs + [last_x], ys + [ys[-1]], where="post", color=GREEN, linewidth=2, alpha=0.8, zorder=3,
                    label="best so far")
            x_lo, x_hi = min(p["number"] for p in points), last_x
            for p in _label_choice(new_bests):
                # labels lean away from the curve; in the right third they end at the point instead of starting there
                right = x_hi > x_lo and (p["number"] - x_lo) / (x_hi - x_lo) > 0.66
                up = 1 if goal == "minimize" else -1
                ax.annotate(_short(p["description"]), (p["number"], p["metric"]), textcoords="offset points",
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

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
