"""Draw the looped transformer's data flow and its variants: writes `architecture.svg` at the repo root.

Owns the architecture figure. The top half is the data flow of `transformer.BaseLoopedTransformer`:
prompt tokens -> embedding (+ positional encoding, added once or every loop) -> e; the loop that injects e into
the state and applies the weight-shared stack of L layers b times; the readout after every loop;
the stacked predictions. The bottom half lists every choice of the variant fields of
`transformer.ModelConfig` (injection, block, token mixer).

Nothing here names a choice: the lists come from the code's choice tuples (`INJECTION_CHOICES`,
`BLOCK_CHOICES`, `MIXER_CHOICES`, `PE_CHOICES`, `PE_AT_CHOICES`, `LOOP_EMBEDDING_CHOICES`, `CONTEXT_KEEP_CHOICES`,
`CONTEXT_COMPUTE_CHOICES`, `STATE_KEEP_CHOICES`, `STATE_COMPUTE_CHOICES`), the
defaults from `ModelConfig`, each choice's description from the docstring of the class that a
model built with it uses, and each injection's initial state s_0 from running its
`initial_state`. So the drawing follows the code; `tests/test_architecture.py` fails until the
committed SVG is regenerated after such a change.

The SVG keeps its text as text (`svg.fonttype` "none") and is byte-identical from run to run
(`utils.save_svg`: fixed `svg.hashsalt`, no date; a fixed `svg.id`; matplotlib's default style).

    python scripts/draw_architecture.py [--out architecture.svg] [--png /tmp/architecture.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.style
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from torch import nn

from transformer import (
    BLOCK_CHOICES,
    CONTEXT_COMPUTE_CHOICES,
    CONTEXT_KEEP_CHOICES,
    INJECTION_CHOICES,
    LOOP_EMBEDDING_CHOICES,
    MIXER_CHOICES,
    PE_AT_CHOICES,
    PE_CHOICES,
    STATE_COMPUTE_CHOICES,
    STATE_KEEP_CHOICES,
    BaseLoopedTransformer,
    ModelConfig,
)
from utils import save_svg

ROOT = Path(__file__).resolve().parents[1]

# The axes span the whole figure with 1 data unit = 0.1 inch on both axes, so font sizes in
# points convert to data units at a fixed rate and text can be placed without measuring it.
WIDTH = 140
DIAGRAM_HEIGHT = 88  # the data flow occupies y in [0, 88]; the tables of choices go below 0
UNITS_PER_POINT = 10 / 72
# Characters per data unit of DejaVu Sans at 1 pt (its mean advance is about 0.55 em), for wrapping.
CHARS_PER_UNIT_POINT = 1 / (0.55 * UNITS_PER_POINT)

# Matplotlib's defaults (no user matplotlibrc) plus text kept as SVG text, for every machine.
RC = {"svg.fonttype": "none", "svg.id": "looped-transformer-architecture"}

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
    "panel": "#fafafa",
}

Line = tuple[str, float, str]  # (text, font size in points, weight)


# ----------------------------------------------------------------------------- what the code says


def default(field: str) -> object:
    """`ModelConfig`'s default value of `field`."""
    return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == field)


def tiny_model(**choices: object) -> BaseLoopedTransformer:
    """A model of the smallest shape with the given `ModelConfig` choices (built to ask it what it uses)."""
    return BaseLoopedTransformer(ModelConfig(n_dims=2, n_heads=1, hidden_dim=4, mlp_hidden=4, context=3, **choices))


def summary(module: object) -> str:
    """The first paragraph of the docstring of `module`'s class, on one line."""
    doc = inspect.getdoc(type(module)) or type(module).__name__
    return " ".join(doc.split("\n\n")[0].split())


def initial_state(model: BaseLoopedTransformer) -> str:
    """What the model's injection starts the loop from, found by running it: "0", "1" or "e"."""
    e = torch.full((1, 1, model.config.hidden_dim), 2.0)
    state = model.injection.initial_state(e)
    for name, value in (("0", torch.zeros_like(e)), ("1", torch.ones_like(e)), ("e", e)):
        if torch.equal(state, value):
            return name
    return "other"


def listing(choices: Sequence[str], field: str) -> str:
    """The choices joined by dots, the default marked with a star."""
    return " · ".join(f"{c}*" if c == default(field) else c for c in choices)


def wrap(text: str, width: float, size: float) -> list[str]:
    """`text` broken into lines that fit `width` data units at `size` points."""
    return textwrap.wrap(text, max(10, int(width * CHARS_PER_UNIT_POINT / size)), break_on_hyphens=False)


def plain(text: str) -> str:
    """Text shown literally (a `$` would start matplotlib's mathtext)."""
    return text.replace("$", r"\$")


def injection_rows() -> list[tuple[str, str, str, str]]:
    """(choice, s_0, whether it has learned parameters, what one loop does) for every injection,
    from the classes the models use."""
    rows = []
    for choice in INJECTION_CHOICES:
        model = tiny_model(injection=choice)
        step = re.sub(r"^s_0 = [^;]*;\s*", "", summary(model.injection))  # s_0 has its own column
        learned = "yes" if any(p.requires_grad for p in model.injection.parameters()) else "no"
        rows.append((choice, initial_state(model), learned, step))
    return rows


def block_rows() -> list[tuple[str, str]]:
    """(choice, description) for every block, from the class of the model's first layer."""
    rows = []
    for choice in BLOCK_CHOICES:
        stack = tiny_model(block=choice).stack
        text = summary(stack.layers[0])
        if not isinstance(stack.final_norm, nn.Identity):
            text += " A final LayerNorm closes the stack."
        rows.append((choice, text))
    return rows


def mixer_rows() -> list[tuple[str, str]]:
    """(choice, description) for every token mixer, from the mixer of the model's first layer."""
    return [(choice, summary(tiny_model(mixer=choice).stack.layers[0].attn)) for choice in MIXER_CHOICES]


# ----------------------------------------------------------------------------- drawing helpers


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
    for (text, size, weight), height in zip(lines, heights, strict=True):
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
    """A straight arrow from `start` to `end`."""
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.4, color=color, shrinkA=0, shrinkB=0, zorder=4
        )
    )


def path_arrow(ax: Axes, points: list[tuple[float, float]], color: str) -> None:
    """A polyline whose last segment ends in an arrowhead (the loop's feedback edge)."""
    xs, ys = zip(*points[:-1], strict=True)
    ax.plot(xs, ys, color=color, linewidth=1.6, solid_capstyle="butt", solid_joinstyle="miter", zorder=4)
    arrow(ax, points[-2], points[-1], color=color)


def wrapped_lines(text: str, width: float, size: float, weight: str = "normal") -> list[Line]:
    """`text` wrapped to `width` data units, as lines for `box` / `centred_text`."""
    return [(plain(line), size, weight) for line in wrap(text, width, size)]


# ----------------------------------------------------------------------------- the data flow


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
    ax.text(x, y - 2.6 * (len(entries) + 1), "* ModelConfig's default", fontsize=9, ha="left", va="center")


def draw_flow(ax: Axes) -> None:
    """The data flow: tokens, embedding, the loop (inject, shared stack, state), readout, output."""
    title = "Looped transformer  (transformer.BaseLoopedTransformer)"
    ax.text(2, 85.5, title, fontsize=14, fontweight="bold", ha="left", va="center")

    # Input and embedding, centred over the inject box so e drops straight into it.
    inject_cx = 33.0
    draw_tokens(ax, inject_cx, 73.5)
    arrow(ax, (inject_cx, 69.7), (inject_cx, 66.5))
    box(
        ax,
        15,
        57.5,
        36,
        9,
        COLOURS["embed"],
        [
            ("embedding:  Linear(d → h)", 11, "bold"),
            ("+ positional encoding; pe:", 8.5, "normal"),
            *wrapped_lines(listing(PE_CHOICES, "pe"), 34, 8.5),
            *wrapped_lines(
                f"added (pe_at): {listing(PE_AT_CHOICES, 'pe_at')} (the stack's input, every loop)", 34, 8.5
            ),
        ],
    )
    draw_legend(ax, 112, 80)

    # The loop: a dashed frame around everything that runs b times with the same weights.
    loop = COLOURS["loop"]
    box(ax, 15, 3, 86, 51, "#f6f9fc", edge=loop, linestyle="--", zorder=1)
    ax.text(
        56, 51.2, "repeat b times   (weights shared across loops)", fontsize=12, fontweight="bold", color=loop,
        ha="left", va="center",
    )  # fmt: skip

    arrow(ax, (inject_cx, 57.5), (inject_cx, 43))
    ax.text(inject_cx + 1.2, 55.2, r"$e$  [B, S, h]", fontsize=11, ha="left", va="center")

    # s_0 sits outside the frame: it is set once, before the first loop, by the injection.
    box(ax, 2, 33, 9, 6, COLOURS["state"], [(r"$s_0$", 13, "normal")])
    arrow(ax, (11, 36), (20, 36))
    starts = sorted({start for _, start, _, _ in injection_rows()})
    centred_text(
        ax,
        6.5,
        28.5,
        [
            (", ".join(starts[:-1]) + " or " + starts[-1] if len(starts) > 1 else starts[0], 8.5, "bold"),
            ("by injection", 8, "normal"),
            ("(table below)", 8, "normal"),
        ],
        color=COLOURS["note"],
    )

    box(
        ax,
        20,
        28,
        26,
        15,
        COLOURS["inject"],
        [
            ("inject e into the state", 11.5, "bold"),
            ("injection:", 8.5, "normal"),
            *wrapped_lines(listing(INJECTION_CHOICES, "injection"), 24, 8.5),
        ],
    )
    arrow(ax, (46, 36), (53, 36))

    # The shared stack, drawn as offset cards to say "L layers of this".
    for offset in (1.6, 0.8):
        box(ax, 53 + offset, 18 - offset, 30, 30, COLOURS["stack"], zorder=1.5)
    box(ax, 53, 18, 30, 30, COLOURS["stack"], [])
    ax.text(68, 45.6, "shared stack of L layers", fontsize=11, fontweight="bold", ha="center", va="center", zorder=3)
    box(
        ax,
        55,
        19.5,
        26,
        23.5,
        COLOURS["layer"],
        [
            ("layer  (block)", 10, "bold"),
            *wrapped_lines(listing(BLOCK_CHOICES, "block"), 24, 8.5),
            ("", 4, "normal"),
            ("token mixer  (mixer)", 10, "bold"),
            *wrapped_lines(listing(MIXER_CHOICES, "mixer"), 24, 8.5),
            ("", 4, "normal"),
            ("loop_stacks = k > 1:", 9, "bold"),
            ("k such stacks take turns,", 8.5, "normal"),
            ("one per loop", 8.5, "normal"),
            ("final_norm: a LayerNorm closing", 8.5, "normal"),
            ("the stack (None*: the block's)", 8.5, "normal"),
            ("loop_embedding: " + listing(LOOP_EMBEDDING_CHOICES, "loop_embedding"), 8.5, "normal"),
        ],
        zorder=2.5,
    )
    arrow(ax, (84.6, 36), (88, 36))  # from the back card's edge, not through the cards
    centred_text(
        ax,
        68,
        12.5,
        [
            ("attention sees  (context_keep):", 8.5, "bold"),
            *wrapped_lines(listing(CONTEXT_KEEP_CHOICES, "context_keep"), 34, 8.5),
            *wrapped_lines(
                f"the rest (context_compute): {listing(CONTEXT_COMPUTE_CHOICES, 'context_compute')}", 34, 8.5
            ),
        ],
        color=COLOURS["note"],
    )

    box(ax, 88, 32, 10, 8, COLOURS["state"], [(r"$s_j$", 13, "normal"), ("[B, S, h]", 8, "normal")])

    # Feedback: the new state, or the part of it that state_keep carries, is the next loop's s.
    path_arrow(ax, [(93, 32), (93, 6), (inject_cx, 6), (inject_cx, 28)], color=loop)
    ax.text(
        63, 7.6, r"$s_j$ is the next loop's state   (j = 1, …, b)", fontsize=10, color=loop, ha="center", va="center"
    )
    ax.text(
        63, 4.4, f"carried (state_keep): {listing(STATE_KEEP_CHOICES, 'state_keep')};  runs (state_compute): "
        f"{listing(STATE_COMPUTE_CHOICES, 'state_compute')}", fontsize=8.5, color=loop,
        ha="center", va="center",
    )  # fmt: skip

    # Readout after every loop, then the stack of per-loop predictions.
    arrow(ax, (98, 36), (105, 36))
    box(
        ax,
        105,
        30,
        32,
        12,
        COLOURS["readout"],
        [
            ("readout:  Linear(h → n_dims)", 11, "bold"),
            ("channel 0 at the x positions", 9.5, "normal"),
            (r"applied to every loop's $s_j$", 9.5, "normal"),
        ],
    )
    arrow(ax, (121, 30), (121, 25.5))
    box(ax, 112, 19.5, 18, 6, COLOURS["output"], [(r"$\hat{y}_j$   [B, P]", 12, "normal")])
    arrow(ax, (121, 19.5), (121, 15))
    draw_prediction_stack(ax, 121, 5.5)


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


# ----------------------------------------------------------------------------- the tables of choices

TABLE_SIZE = 8.0
LINE = TABLE_SIZE * 1.45 * UNITS_PER_POINT
ROW_GAP = 0.7
HEADING = 2.6


def table(ax: Axes, x: float, top: float, title: str, columns: Sequence[tuple[str, float]], rows: Sequence) -> float:
    """A table of wrapped text: `columns` are (header, width); the last column wraps. Returns its bottom."""
    ax.text(x, top - 1.0, title, fontsize=10, fontweight="bold", ha="left", va="center")
    y = top - HEADING
    lefts = [x + sum(width for _, width in columns[:i]) for i in range(len(columns))]
    for (header, _), left in zip(columns, lefts, strict=True):
        ax.text(left, y - LINE / 2, header, fontsize=TABLE_SIZE, style="italic", color=COLOURS["note"], va="center")
    y -= LINE + ROW_GAP / 2
    for row in rows:
        ax.plot([x, lefts[-1] + columns[-1][1]], [y + ROW_GAP / 2] * 2, color="#dddddd", linewidth=0.6)
        *fixed, text = row
        lines = wrap(text, columns[-1][1], TABLE_SIZE)
        for value, left in zip(fixed, lefts, strict=False):
            ax.text(left, y - LINE / 2, plain(value), fontsize=TABLE_SIZE, fontweight="bold", va="center")
        for i, line in enumerate(lines):
            ax.text(lefts[-1], y - LINE / 2 - i * LINE, plain(line), fontsize=TABLE_SIZE, va="center")
        y -= len(lines) * LINE + ROW_GAP
    return y


def draw_tables(ax: Axes, top: float) -> float:
    """The choices of the variant fields, each described by its class; returns the lowest y used."""
    injections = [(f"{c}*" if c == default("injection") else c, *rest) for c, *rest in injection_rows()]
    columns = [("choice", 16), ("s_0", 4.5), ("learned", 7), ("one loop (s <- ...)", 40)]
    left = table(ax, 2, top, "injection: how e enters each loop", columns, injections)
    blocks = [(f"{c}*" if c == default("block") else c, text) for c, text in block_rows()]
    right = table(ax, 72, top, "block: the layer the stack repeats", [("choice", 14), ("layer", 52)], blocks)
    mixers = [(f"{c}*" if c == default("mixer") else c, text) for c, text in mixer_rows()]
    right = table(
        ax, 72, right - 1.5, "mixer: the token mixer of a transformer layer", [("choice", 14), ("mixer", 52)], mixers
    )
    return min(left, right)


def draw(figure: Figure) -> None:
    """The whole figure: the data flow above, the tables of choices below, on one axes."""
    ax = figure.add_axes((0, 0, 1, 1))
    ax.axis("off")
    draw_flow(ax)
    bottom = draw_tables(ax, -1.0)
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(bottom - 1, DIAGRAM_HEIGHT)
    ax.set_aspect("equal")
    figure.set_size_inches(WIDTH / 10, (DIAGRAM_HEIGHT - bottom + 1) / 10)


def render(out: Path, png: Path | None = None) -> None:
    """Draw the figure and write it as SVG to `out` (and as PNG to `png`)."""
    with matplotlib.style.context("default"), matplotlib.rc_context(RC):
        figure = Figure(figsize=(WIDTH / 10, DIAGRAM_HEIGHT / 10))
        draw(figure)
        save_svg(figure, out)
        if png is not None:
            figure.savefig(png, dpi=110, bbox_inches="tight", facecolor="white")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "architecture.svg", help="SVG to write")
    parser.add_argument("--png", type=Path, default=None, help="also write a PNG preview here")
    args = parser.parse_args()
    render(args.out, args.png)
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))


if __name__ == "__main__":
    main()
