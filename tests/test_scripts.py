"""Smoke tests for `scripts/` and `benchmarks/`: every file runs end to end at its smallest size.

Each runs as a subprocess started outside the repository, the way a user starts it. `PYTHONPATH`
points at this checkout, so the files import this checkout's library even where the virtual
environment has another checkout installed (an editable install of a sibling worktree); that the
installed project imports from anywhere is `test_repository.test_installed_library_is_this_checkout`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# file -> (the smallest arguments its flags allow, lines its output must contain). Every script
# and benchmark is listed; "{tmp}" is the test's temporary folder.
SMOKE: dict[str, tuple[list[str], list[str]]] = {
    "scripts/quickstart.py": (
        ["--steps", "2"],
        ["least squares: last-position error", "averaging: last-position error", "looped model: last-position error"],
    ),
    "scripts/draw_architecture.py": (["--out", "{tmp}/architecture.svg"], ["wrote"]),
    # the README's findings table matches the reports, docs/design.md's module table the module docstrings
    "scripts/update_generated.py": (["--check"], ["README.md is up to date", "design.md is up to date"]),
    # the smoke preset and a scratch results root come from PRESET_ENV below
    "scripts/run_until.py": ([str(ROOT / "experiments" / "experiment 11 - which algorithm.ipynb"), "screen_rates("],
                             ["ran 3 code cells", "screen_rates(", "experiment 11, preset smoke"]),
    "benchmarks/train_speed.py": (
        ["--steps", "1", "--warmup", "0", "--shapes", "tiny", "--b", "1", "--batch", "2"],
        ["% of peak", "tiny "],
    ),
    "benchmarks/ensemble_speed.py": (
        ["--steps", "1", "--warmup", "0", "--shapes", "tiny", "--b", "1", "--batch", "2", "--members", "2",
         "--device", "cpu"],
        ["speed-up", "tiny "],
    ),
}  # fmt: skip


def run_file(relative: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run one file of the checkout with this interpreter, from `cwd` (at the smoke preset, writing
    under `cwd`, for the files that run a notebook)."""
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PRESET": "smoke",
           "LOOPED_RESULTS_ROOT": str(cwd), "BACKEND": "inline", "MPLBACKEND": "agg"}
    command = [sys.executable, str(ROOT / relative), *(arg.format(tmp=cwd) for arg in args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_script_and_benchmark_has_a_smoke_test():
    """Each file is in SMOKE, or has its own test file `tests/test_<name>.py` that runs it."""
    files = {
        path.relative_to(ROOT).as_posix()
        for folder in ("scripts", "benchmarks")
        for path in (ROOT / folder).glob("*.py")
        if not (ROOT / "tests" / f"test_{path.stem}.py").exists()
    }
    assert files == set(SMOKE), "list each script and benchmark in SMOKE with its smallest arguments"


@pytest.mark.parametrize("relative", sorted(SMOKE))
def test_runs_at_smallest_size(relative: str, tmp_path: Path):
    args, expected = SMOKE[relative]
    result = run_file(relative, args, tmp_path)
    assert result.returncode == 0, f"{relative} failed:\n{result.stdout}\n{result.stderr}"
    for text in expected:
        assert text in result.stdout, f"{relative} did not print {text!r}:\n{result.stdout}"


def test_run_until_refuses_a_marker_no_cell_holds_before_running_any(tmp_path: Path):
    result = run_file("scripts/run_until.py", [str(ROOT / "experiments" / "experiment 11 - which algorithm.ipynb"),
                                               "no such text"], tmp_path)
    assert result.returncode != 0 and "no code cell of" in result.stderr and "'no such text'" in result.stderr
    assert not (tmp_path / "scratch").exists()  # refused before the first cell ran
