"""Test set-up: one torch thread per test process, and `ROOT`, the repository root, for tests that
run files of the checkout (scripts, benchmarks, notebooks). The library itself is imported as an
installed project (`pip install -r requirements.txt` installs it with `-e .`)."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def separate_results_root(tmp_path, monkeypatch):
    """Every test writes scratch output (the runner's store of trained runs included) under its own
    temporary folder, so no test reuses another's training."""
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path / "results root"))
