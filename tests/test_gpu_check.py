"""scripts/gpu_check.py runs every stage at toy sizes on the CPU and writes what it promises."""

import json
import subprocess
import sys
import tarfile

from conftest import ROOT, tiny_specs


def test_gpu_check_smoke_on_cpu(tmp_path):
    specs = [spec.to_dict() for spec in tiny_specs((1, 2), steps=3)]
    grid = tmp_path / "specs.json"
    grid.write_text(json.dumps(specs))
    out = tmp_path / "out"
    # A budget no stage can exhaust: on a loaded machine the default 480 s ran out before the speed stage,
    # which then skipped itself and left speed.txt empty. What is tested is what each stage writes, not its time.
    command = [sys.executable, "scripts/gpu_check.py", "--out", str(out), "--device", "cpu", "--smoke"]
    command += ["--budget", "100000"]
    done = subprocess.run([*command, "--grid", str(grid)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert not [key for key in report if key.endswith("_error")], report
    assert report["ensemble_tests"]["exit"] == 0
    assert all(worst == {"plain": 0.0, "vmap": 0.0} for worst in report["causality"].values())
    assert report["learning"]["status"] == ["finished"] * 8
    assert "model-steps/s" in (out / "speed.txt").read_text()
    with tarfile.open(out / "grid_records.tar.gz") as archive:
        assert sorted(archive.getnames()) == ["data/tiny_1.json", "data/tiny_2.json"]
