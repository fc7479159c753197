"""Draw the looped transformer's data flow as a diagram: writes `architecture.svg` at the repo root.

Owns the architecture figure only (no model is built): prompt tokens -> embedding (+ optional
positional encoding, added once) -> e; the loop that injects e into the state and applies the
weight-shared stack of L layers b times; the readout after every loop; the stacked predictions.
The boxes mirror `transformer.BaseLoopedTransformer` and `ModelConfig`'s choices; edit the text
here when those change.

The SVG goes through `utils.save_svg`, so two runs give byte-identical files.

    python scripts/draw_architecture.py [--out architecture.svg] [--png /tmp/architecture.png]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformer import BLOCK_CHOICES, INJECTION_CHOICES  # noqa: E402
from utils import save_svg  # noqa: E402

# The axes span the whole figure with 1 data unit = 0.1 inch on both axes, so font sizes in
# points convert to data units at a fixed rate and text can be placed without measuring it.
WIDTH, HEIGHT = 140, 88
UNITS_PER_POINT = 10 / 72

COLOURS = {
    "input": "#eeeeee",
    "embed": "#dbe9f6",
    "state": "#ece4f4",
    "inject": "#fde3c4",
    "stack": "#d9eed4",
    "layer": "#f4fbf2",
    "readout": "#fff1bf",
    "output": "#fbe0dc",
    "edge": "#333333",
    "loop": "#5a7fa8",
    "note": "#555555",
}

Line = tuple[str, float, str]  # (text, font size in points, weight)


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    fill: str,
    lines: Sequence[Line] = (),
    edge: str = COLOURS["edge"],
    linestyle: str = "-",
    zorder: float = 2,
) -> None:
    """A rounded box with lower-left corner (x, y), its text lines centred as a block."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=1.2",
            facecolor=fill,
            edgecolor=edge,
            linewidth=1.2,
            linestyle=linestyle,
            zorder=zorder,
        )
    )
    centred_text(ax, x + w / 2, y + h / 2, lines, zorder=zorder + 0.5)


def centred_text(
    ax: Axes, cx: float, cy: float, lines: Sequence[Line], zorder: float = 3, color: str = "black"
) -> None:
    """Stack text lines vertically, centred on (cx, cy); spacing follows each line's font size."""
    heights = [size * 1.45 * UNITS_PER_POINT for _, size, _ in lines]
    top = cy + sum(heights) / 2
    for (text, size, weight), height in zip(lines, heights, strict=False):
        ax.text(
            cx,
            top - height / 2,
            text,
            fontsize=size,
            fontweight=weight,
            ha="center",
            va="center",
            color=color,
            zorder=zorder,
        )
        top -= height


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], color: str = COLOURS["edge"]) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.4, color=color, shrinkA=0, shrinkB=0, zorder=4
        )
    )


def path_arrow(ax: Axes, points: list[tuple[float, float]], color: str) -> None:
    """A polyline whose last segment ends in an arrowhead (the loop's feedback edge)."""
    xs, ys = zip(*points[:-1], strict=False)
    ax.plot(xs, ys, color=color, linewidth=1.6, solid_capstyle="butt", solid_joinstyle="miter", zorder=4)
    arrow(ax, points[-2], points[-1], color=color)


def draw_tokens(ax: Axes, cx: float, y: float) -> None:
    """The prompt as a strip of token cells; the dropped final y is a dashed, struck-out cell."""
    cells = [r"$x_1$", r"$y_1$", r"$x_2$", r"$y_2$", r"$\cdots$", r"$x_P$"]
    w, gap, h = 4.6, 0.7, 4.4
    total = (len(cells) + 1) * w + len(cells) * gap
    x = cx - total / 2
    ax.text(
        cx, y + h + 2.2, "prompt tokens   [B, S = 2P − 1, d]", fontsize=11, fontweight="bold", ha="center", va="center"
    )
    for label in cells:
        fill = "white" if label == r"$\cdots$" else COLOURS["input"]
        box(ax, x, y, w, h, fill, [(label, 12, "normal")])
        x += w + gap
    box(ax, x, y, w, h, "white", edge="#999999", linestyle="--")
    centred_text(ax, x + w / 2, y + h / 2, [(r"$y_P$", 12, "normal")], color="#888888")
    ax.plot([x + 0.6, x + w - 0.6], [y + 0.6, y + h - 0.6], color="#b03030", linewidth=1.3, zorder=4)
    ax.text(x + w + 1.2, y + h / 2, "dropped", fontsize=9, color="#b03030", ha="left", va="center", style="italic")
    ax.text(
        cx,
        y - 1.8,
        r"$x_i \in \mathbb{R}^d$;  $y_i$ in channel 0, zeros elsewhere",
        fontsize=9,
        color=COLOURS["note"],
        ha="center",
        va="center",
    )


def draw_legend(ax: Axes, x: float, y: float) -> None:
    """Symbol key in the empty top-right corner, so every shape in the figure is defined."""
    entries = [
        ("B", "prompts in the batch"),
        ("P", "points per prompt"),
        ("S", "tokens, 2P − 1"),
        ("d", "n_dims"),
        ("h", "hidden_dim"),
        ("L", "layers in the stack"),
        ("b", "loops"),
    ]
    ax.text(x, y, "symbols", fontsize=10, fontweight="bold", ha="left", va="center")
    for i, (symbol, meaning) in enumerate(entries):
        row = y - 2.6 * (i + 1)
        ax.text(x + 1.0, row, f"${symbol}$", fontsize=10, ha="left", va="center")
        ax.text(x + 4.0, row, meaning, fontsize=9.5, color=COLOURS["note"], ha="left", va="center")


def draw(figure: Figure) -> None:
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, HEIGHT)
    ax.set_aspect("equal")
    ax.axis("off")

    title = "Looped transformer  (transformer.BaseLoopedTransformer)"
    ax.text(2, 85.5, title, fontsize=14, fontweight="bold", ha="left", va="center")

    # Input and embedding, centred over the inject box so e drops straight into it.
    inject_cx = 33.0
    draw_tokens(ax, inject_cx, 73.5)
    arrow(ax, (inject_cx, 69.7), (inject_cx, 66.5))
    box(
        ax,
        17,
        58.5,
        32,
        8,
        COLOURS["embed"],
        [
            ("embedding:  Linear(d → h)", 11, "bold"),
            ("+ positional encoding (optional, added once)", 9, "normal"),
        ],
    )
    draw_legend(ax, 112, 80)

    # The loop: a dashed frame around everything that runs b times with the same weights.
    loop = COLOURS["loop"]
    box(ax, 15, 5, 86, 49, "#f6f9fc", edge=loop, linestyle="--", zorder=1)
    ax.text(
        56,
        51.2,
        "repeat b times   (weights shared across loops)",
        fontsize=12,
        fontweight="bold",
        color=loop,
        ha="left",
        va="center",
    )

    arrow(ax, (inject_cx, 58.5), (inject_cx, 41))
    ax.text(inject_cx + 1.2, 56.2, r"$e$  [B, S, h]", fontsize=11, ha="left", va="center")

    # s_0 = 0 sits outside the frame: it is set once, before the first loop.
    box(ax, 2, 31, 9, 6, COLOURS["state"], [(r"$s_0 = 0$", 12, "normal")])
    arrow(ax, (11, 34), (20, 34))
    # Only add and each_layer start from zero; the other injections start from e.
    centred_text(
        ax,
        6.5,
        26.5,
        [
            ("add, each_layer;", 8, "normal"),
            (r"$s_0 = e$ for none,", 8, "normal"),
            ("linear_add, linear_cat", 8, "normal"),
        ],
        color=COLOURS["note"],
    )

    injections = list(INJECTION_CHOICES)
    box(
        ax,
        20,
        27,
        26,
        14,
        COLOURS["inject"],
        [
            (r"inject:   $s + e$", 13, "bold"),
            ("swappable step:", 8.5, "normal"),
            (" · ".join(injections[:3]) + " ·", 8.5, "normal"),
            (" · ".join(injections[3:]), 8.5, "normal"),
        ],
    )
    arrow(ax, (46, 34), (53, 34))

    # The shared stack, drawn as offset cards to say "L layers of this".
    for offset in (1.6, 0.8):
        box(ax, 53 + offset, 18 - offset, 30, 30, COLOURS["stack"], zorder=1.5)
    box(ax, 53, 18, 30, 30, COLOURS["stack"], [])
    ax.text(68, 45.6, "shared stack of L layers", fontsize=11, fontweight="bold", ha="center", va="center", zorder=3)
    assert set(BLOCK_CHOICES) == {"seed000", "gpt2"}, "update the layer box for new block choices"
    box(
        ax,
        55,
        21.5,
        26,
        19,
        COLOURS["layer"],
        [
            ("seed000 layer (default)", 10, "bold"),
            ("x + MLP(LN2(x + Attn(LN1 x)))", 9.5, "normal"),
            ("causal self-attention", 9, "normal"),
            ("", 5, "normal"),
            ("or: GPT-2 pre-LN block", 10, "bold"),
            ("x + Attn(LN1 x), then + MLP(LN2 ·)", 9, "normal"),
            ("final LayerNorm closes the stack", 9, "normal"),
        ],
        zorder=2.5,
    )
    arrow(ax, (84.6, 34), (88, 34))  # from the back card's edge, not through the cards

    box(ax, 88, 30, 10, 8, COLOURS["state"], [(r"$s_j$", 13, "normal"), ("[B, S, h]", 8, "normal")])

    # Feedback: the new state is the next loop's s.
    path_arrow(ax, [(93, 30), (93, 10), (inject_cx, 10), (inject_cx, 27)], color=loop)
    ax.text(
        63, 11.6, r"$s_j$ is the next loop's state   (j = 1, …, b)", fontsize=10, color=loop, ha="center", va="center"
    )

    # Readout after every loop, then the stack of per-loop predictions.
    arrow(ax, (98, 34), (105, 34))
    box(
        ax,
        105,
        28,
        32,
        12,
        COLOURS["readout"],
        [
            ("readout:  Linear(h → n_dims)", 11, "bold"),
            ("channel 0 at the x positions", 9.5, "normal"),
            (r"applied to every loop's $s_j$", 9.5, "normal"),
        ],
    )
    arrow(ax, (121, 28), (121, 23.5))
    box(ax, 112, 17.5, 18, 6, COLOURS["output"], [(r"$\hat{y}_j$   [B, P]", 12, "normal")])
    arrow(ax, (121, 17.5), (121, 13))
    draw_prediction_stack(ax, 121, 3.5)


def draw_prediction_stack(ax: Axes, cx: float, y: float) -> None:
    """Rows ŷ_1 .. ŷ_b stacked into the model's output [b, B, P]."""
    labels = [r"$\hat{y}_1$", r"$\hat{y}_2$", r"$\vdots$", r"$\hat{y}_b$"]
    w, h = 16, 2.2
    for i, label in enumerate(labels):
        row_y = y + (len(labels) - 1 - i) * h
        fill = "white" if label == r"$\vdots$" else COLOURS["output"]
        ax.add_patch(
            FancyBboxPatch(
                (cx - w / 2, row_y),
                w,
                h,
                boxstyle="square,pad=0",
                facecolor=fill,
                edgecolor=COLOURS["edge"],
                linewidth=0.9,
                zorder=2,
            )
        )
        ax.text(cx - w / 2 - 1.0, row_y + h / 2, label, fontsize=9.5, ha="right", va="center")
    label_x, label_y = cx + w / 2 + 1.2, y + len(labels) * h / 2
    ax.text(label_x, label_y + 1.0, "model output", fontsize=10, ha="left", va="center")
    ax.text(label_x, label_y - 1.4, "[b, B, P]", fontsize=11, fontweight="bold", ha="left", va="center")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "architecture.svg", help="SVG to write")
    parser.add_argument("--png", type=Path, default=None, help="also write a PNG preview here")
    args = parser.parse_args()

    # Matplotlib's defaults, not a user's matplotlibrc, so the SVG is the same on every machine.
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(WIDTH / 10, HEIGHT / 10))
        draw(figure)
        save_svg(figure, args.out)
        if args.png is not None:
            figure.savefig(args.png, dpi=110, bbox_inches="tight", facecolor="white")
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))


if __name__ == "__main__":
    main()
