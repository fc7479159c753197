"""Plotting and report helpers shared by the experiment notebooks.

Owns the look of every figure (one style, deterministic SVG through `utils.save_svg`) and
the small pieces each report needs: mean and standard deviation across seeds, a band plot
(mean with a band of plus or minus one standard deviation), a bootstrap band over prompts
(`bootstrap_curve`), a boxplot with every value shown (and `final_errors_panel`, the final errors
against the gate), the error-against-examples panel and markdown tables. Verdicts are not drawn
here: the one rule is `verdicts.Comparisons`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; notebooks still show figures inline via display()
import matplotlib.pyplot as plt
import numpy as np

STYLE = {
    "font.size": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "svg.fonttype": "path",
}
plt.rcParams.update(STYLE)
COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def mean_std(rows: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation across runs: rows [runs, points]."""
    array = np.asarray(rows, dtype=float)
    return array.mean(0), array.std(0)


def band(ax, x: Sequence[float], rows: Sequence[Sequence[float]], label: str, color: str, **line) -> None:
    """Mean across rows with a shaded band of plus or minus one standard deviation. Without
    rows (every run of the group diverged) only the legend entry says so."""
    if not len(rows):
        ax.plot([], [], label=f"{label} (no finished run)", color=color, **line)
        return
    mean, std = mean_std(rows)
    ax.plot(x, mean, label=label, color=color, **line)
    lower = mean - std
    if ax.get_yscale() == "log":
        # A log axis cannot show values <= 0: clip the band's lower edge at a tenth of the mean.
        lower = np.maximum(lower, mean / 10)
    ax.fill_between(x, lower, mean + std, color=color, alpha=0.2, linewidth=0)


def bootstrap_curve(ax, summary: dict, label: str | None, color: str, **line) -> None:
    """A mean over prompts at every position with its bootstrap band (`utils.bootstrap_band`'s
    {"mean", "low", "high"}); the lower edge is floored at 1e-4 for log axes."""
    x = range(len(summary["mean"]))
    ax.plot(x, summary["mean"], label=label, color=color, **line)
    ax.fill_between(x, np.maximum(summary["low"], 1e-4), summary["high"], color=color, alpha=0.15, linewidth=0)


def boxplot(ax, groups: Sequence[Sequence[float]], labels: Sequence[str], colors: Sequence[str]) -> None:
    """Boxes without fliers, every value overlaid as a dot (as the reference study drew them).
    A group without values (every run diverged) leaves its place empty."""
    groups = [values if len(values) else [np.nan] for values in groups]
    boxes = ax.boxplot(groups, showfliers=False, patch_artist=True, widths=0.6)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    for patch, color in zip(boxes["boxes"], colors, strict=False):
        patch.set_facecolor(color)
        patch.set_alpha(0.35)
    for median in boxes["medians"]:
        median.set_color("black")
    jitter = np.random.default_rng(0)  # fixed, so the SVG bytes repeat
    for position, values in enumerate(groups, start=1):
        offsets = jitter.uniform(-0.12, 0.12, len(values))
        ax.scatter(position + offsets, values, s=6, color="black", zorder=3)


def final_errors_panel(
    ax, groups: Sequence[Sequence[float]], labels: Sequence[str], colors: Sequence[str], threshold: float
) -> None:
    """Each group's final errors as a box plot with every value shown (`boxplot`), the gate's threshold dotted,
    on a log axis: the panel a report's results open with."""
    boxplot(ax, groups, labels, colors)
    ax.axhline(threshold, color="gray", linestyle=":", linewidth=1)
    ax.set_yscale("log")


def subplots(n_rows: int, n_cols: int, width: float = 4.2, height: float = 3.4, **kwargs):
    return plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False, **kwargs)


def shared_legend(axes, ax=None, **kwargs) -> None:
    """One legend naming every series drawn on any of `axes` (each label once, in the order first
    drawn), on `ax` (default: the last panel): a panel that lacks a series (a model without b = 10)
    no longer leaves that series unnamed."""
    entries: dict[str, object] = {}
    for panel in np.ravel(axes):
        for handle, label in zip(*panel.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    target = ax if ax is not None else np.ravel(axes)[-1]
    target.legend(list(entries.values()), list(entries), **kwargs)


def integer_ticks(fig) -> None:
    """Integer tick marks on every linear axis of `fig` whose plotted values are all integers (loops,
    examples, steps): matplotlib's default locator puts 1.5 or 2.5 between loop counts on a short
    axis. What is read: the lines in data coordinates (not a gate's axhline, which spans the axes) and
    the points of a scatter; an axis with neither, a log axis and an axis with its own tick positions (a
    boxplot's categories) are left alone."""
    from matplotlib.collections import PathCollection
    from matplotlib.ticker import AutoLocator, MaxNLocator

    for ax in fig.axes:
        lines = [line.get_xydata() for line in ax.get_lines() if line.get_transform() == ax.transData]
        points = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
        for index, (name, axis) in enumerate((("x", ax.xaxis), ("y", ax.yaxis))):
            if getattr(ax, f"get_{name}scale")() != "linear" or type(axis.get_major_locator()) is not AutoLocator:
                continue
            values = [np.asarray(xy, dtype=float).reshape(-1, 2)[:, index] for xy in lines + points]
            values = np.concatenate(values) if values else np.array([])
            values = values[np.isfinite(values)]
            if len(lines) and len(values) > 1 and np.all(values == np.round(values)):
                # AutoLocator's own settings, so that only the ticks between integers go
                axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_pm_std(values: Sequence[float]) -> str:
    """'mean ± std' across seeds for a report; 'n/a' without values; one value is shown as such
    (a spread of one seed is no spread); says so when some are not finite."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return "n/a"
    if len(values) == 1:
        return f"{fmt(values[0])} (1 seed)" if np.isfinite(values[0]) else "not finite (1 seed)"
    if not np.isfinite(values).all():  # a model whose outputs overflowed at this loop count
        return f"not finite in {int((~np.isfinite(values)).sum())} of {len(values)} seeds"
    return f"{fmt(values.mean())} ± {fmt(values.std())}"


def error_vs_examples(ax, curves: dict[str, Sequence[Sequence[float]]], baselines: dict[str, Sequence[float]]) -> None:
    """Error per dimension against the number of in-context examples (position i has i).

    curves: label -> rows [runs, P] (None/NaN where a model does not predict); baselines:
    name -> [P]. Least squares is exact from d examples on, so baselines are floored at 1e-3
    to keep the models' curves readable on the log axis."""
    ax.set_yscale("log")  # first, so that the bands are clipped for a log axis
    for i, (label, rows) in enumerate(curves.items()):
        rows = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
        positions = range(rows.shape[1]) if rows.ndim == 2 else []  # no rows: every run diverged
        band(ax, positions, rows, label, COLORS[i % len(COLORS)])
    for j, (name, errors) in enumerate(baselines.items()):
        ax.plot(
            range(len(errors)),
            np.maximum(errors, 1e-3),
            color="black",
            linestyle=["--", ":", "-.", (0, (1, 4))][j % 4],
            label=name + (" (floored at 1e-3)" if name == "least squares" else ""),
        )
    ax.set_xlabel("in-context examples")


def fmt(value: float, digits: int = 3) -> str:
    """A number for a report: 3 significant digits, scientific when small."""
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"
