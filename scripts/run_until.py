"""Run an experiment notebook's code cells in this process, top to bottom, stopping after the first
cell that contains a marker: a grid's first stage without the rest (say every rate screen before
any notebook's later stages), from a script in the background, with the notebook's own settings.

    PRESET=cpu python scripts/run_until.py "experiments/experiment 7 - what is looped.ipynb" "screen_rates("

Without a marker every cell runs (as nbconvert would, without a kernel and without saving outputs).
Lines that start with "%" (IPython magics) are skipped; `display` prints. Run it from a separate
worktree for a long grid, so that edits to the checkout do not change a running grid."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def code_cells(notebook: Path) -> list[str]:
    """The source of every code cell of `notebook`, in order."""
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def run_until(notebook: Path, marker: str | None = None) -> int:
    """Execute the code cells of `notebook` (from its folder) up to and including the first one that
    contains `marker` (every cell when None); returns how many ran. Raises ValueError when the marker
    is in no cell, before running any."""
    cells = code_cells(notebook)
    if marker is not None and not any(marker in source for source in cells):
        raise ValueError(f"no code cell of {notebook} contains the marker {marker!r}")
    namespace: dict = {"__name__": "notebook"}  # not "__main__": the pool's spawned workers must not re-run it
    os.chdir(notebook.parent)
    for count, source in enumerate(cells, start=1):
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
        exec(compile(code, f"{notebook.name}, code cell {count}", "exec"), namespace)
        if marker is not None and marker in source:
            return count
    return len(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("marker", nargs="?", default=None, help="stop after the first code cell containing this text")
    args = parser.parse_args()
    ran = run_until(args.notebook.resolve(), args.marker)
    print(f"ran {ran} code cells of {args.notebook.name}" + (f", up to {args.marker!r}" if args.marker else ""))


if __name__ == "__main__":
    main()
