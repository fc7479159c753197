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
    causality = report["causality"]
    assert len(causality) == 14 and all(worst["plain"] == 0.0 for worst in causality.values()), causality
    # the ensemble refuses dropped tokens and the carried-only state by design: said, not a crash
    refused = {label for label, worst in causality.items() if worst["vmap"] != 0.0}
    assert refused == {label for label in causality if "dropped" in label or "carried only" in label}, causality
    assert all(causality[label]["vmap"].startswith("refused: ModelConfig.") for label in refused)
    # each training option on the device against the CPU: here CPU against CPU, the same numbers
    options = report["training_options"]
    assert len(options) == 7 and "fixed point (Anderson, implicit gradient), final norm" in options
    assert all(found["finite"] and found["loss_rel"] == 0.0 for found in options.values()), options
    timing = report["drop_timing"]
    assert set(timing["device_ms"]) == set(timing["cpu_ms"]) == set(timing["shapes"])
    assert {"exp 5 first n=3 after loop 1, dropped", "exp 6 last 50% in place, carried only"} <= set(timing["cpu_ms"])
    assert all(ms > 0 for ms in [*timing["device_ms"].values(), *timing["cpu_ms"].values()])
    log = (out / "gpu_check.log").read_text()
    assert "training options, cpu vs CPU" in log and "ms per training step" in log
    assert report["learning"]["status"] == ["finished"] * 8
    assert "model-steps/s" in (out / "speed.txt").read_text()
    with tarfile.open(out / "grid_records.tar.gz") as archive:
        assert sorted(archive.getnames()) == ["data/tiny_1.json", "data/tiny_2.json"]
