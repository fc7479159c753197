"""Test set-up: one torch thread per test process, and `ROOT`, the repository root, for tests that
run files of the checkout (scripts, benchmarks, notebooks). The library itself is imported as an
installed project (`pip install -r requirements.txt` installs it with `-e .`)."""

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
