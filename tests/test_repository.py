"""The repository's promises: CI runs the README's test command, and the style check passes."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_is_experiment_1_at_cpu():
    main_job = readme_commands()[0]
    assert "PRESET=cpu" in main_job and "experiments/experiment 1 - scaling.ipynb" in main_job
    assert (ROOT / "experiments" / "experiment 1 - scaling.ipynb").exists()


def test_requirements_pin_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()


@pytest.mark.skipif(shutil.which("ruff") is None and not (ROOT / ".venv/bin/ruff").exists(), reason="ruff missing")
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv/bin/ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
