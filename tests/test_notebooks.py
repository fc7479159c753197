"""Every experiment notebook runs top to bottom at the smoke preset, and is committed stripped."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "experiments").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert all(not cell.get("outputs") and cell.get("execution_count") is None for cell in code_cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_at_smoke(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))  # never the committed results/
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    written = list((tmp_path / "scratch").rglob("*"))
    assert any(p.name == "README.md" for p in written)
    assert any(p.suffix == ".svg" for p in written)
    assert not (tmp_path / "results").exists()
    assert os.environ["PRESET"] == "smoke"
