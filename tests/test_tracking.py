"""Tracking a grid in wandb (`tracking.py`), against the real package in offline mode: every
training run of a grid gets its own wandb run whose files hold its spec, curves and final metrics,
with the inline, pool, ensemble and Slurm (submitit's local executor) backends. No mock."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_specs

from runner import run_grid
from tracking import Tracking, tracking_from_env

STEPS = 6


def read_offline_run(path: Path) -> dict:
    """The records of one offline run file (`run-<id>.wandb`): wandb's transaction log, a 7-byte
    header then LevelDB-log records (7-byte header: checksum, length, type) in 32 KiB blocks, each
    record a `wandb_internal_pb2.Record`. Returns its name, project, group, config, history rows
    and summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    offset, pending, payloads = header, b"", []
    while offset + header <= len(data):
        if block - offset % block < header:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + header])
        if kind == 0 and length == 0:
            break  # zeros: the end of what was written
        chunk = data[offset + header : offset + header + length]
        offset += header + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            payloads.append(pending)

    def key(item) -> str:  # wandb writes either a key or a nested key
        return item.key or "/".join(item.nested_key)

    run = {"config": {}, "history": [], "summary": {}}
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"name": record.run.display_name, "project": record.run.project, "group": record.run.run_group}
            run["config"] |= {key(item): json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            run["config"] |= {key(item): json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            run["history"].append({key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            run["summary"] |= {key(item): json.loads(item.value_json) for item in record.summary.update}
    return run


def offline_runs(folder: Path) -> dict[str, dict]:
    import wandb

    wandb.teardown()  # wait until this process's wandb service has written everything
    found = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run = read_offline_run(path)
        assert "name" in run, f"{path} holds no run record: {run}"
        found[run["name"]] = run
    return found


def assert_tracked(runs: dict[str, dict], records: list[dict], group: str = "experiment 0 test") -> None:
    assert sorted(runs) == sorted(record["spec"]["name"] for record in records)
    for record in records:
        run = runs[record["spec"]["name"]]
        assert (run["project"], run["group"]) == ("looped-tests", group)
        assert run["config"]["train"]["seed"] == record["spec"]["train"]["seed"]  # the whole spec
        assert run["config"]["model"] == record["spec"]["model"]
        losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
        assert losses == pytest.approx(record["train"]["loss"])
        validations = [row["eval/last_loop"] for row in run["history"] if "eval/last_loop" in row]
        assert validations == pytest.approx([entry["last_loop"] for entry in record["train"]["evals"]])
        assert run["summary"]["final/heldout_query_last_loop"] == pytest.approx(record["loop_errors"][-1])
        assert run["summary"]["status"] == "finished"


def tracking(folder: Path) -> Tracking:
    return Tracking(project="looped-tests", group="experiment 0 test", mode="offline", dir=str(folder))


@pytest.mark.parametrize("backend", ["inline", "pool", "ensemble"])
def test_every_run_of_a_grid_gets_its_own_offline_wandb_run(tmp_path, backend):
    specs = tiny_specs((1, 2), steps=STEPS)
    records = run_grid(specs, tmp_path / "out", backend=backend, workers=2, progress=False, tracking=tracking(tmp_path))
    assert_tracked(offline_runs(tmp_path), records)


def test_slurm_jobs_are_tracked_too(tmp_path):
    pytest.importorskip("submitit")
    specs = tiny_specs((3,), steps=STEPS)
    records = run_grid(
        specs,
        tmp_path / "out",
        backend="submitit",
        slurm={"cluster": "local", "timeout_min": 5},
        progress=False,
        tracking=tracking(tmp_path),
    )
    assert_tracked(offline_runs(tmp_path), records)


def test_a_run_whose_training_is_reused_logs_its_stored_curves(tmp_path):
    specs = tiny_specs((1,), steps=STEPS)
    run_grid(specs, tmp_path / "first", backend="inline", progress=False)  # trains; stores the trained run
    records = run_grid(specs, tmp_path / "second", backend="inline", progress=False, tracking=tracking(tmp_path))
    assert records[0]["training_reused"]
    assert_tracked(offline_runs(tmp_path), records)


def test_the_track_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("TRACK", raising=False)
    assert tracking_from_env("experiment 1 cpu", tmp_path) is None
    monkeypatch.setenv("TRACK", "off")
    assert tracking_from_env("experiment 1 cpu", tmp_path) is None
    monkeypatch.setenv("TRACK", "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert tracking_from_env("experiment 1 cpu", tmp_path) == Tracking(
        project="mine", group="experiment 1 cpu", mode="offline", dir=str(tmp_path)
    )
    monkeypatch.setenv("TRACK", "tensorboard")
    with pytest.raises(ValueError, match=r"TRACK='tensorboard' is not allowed; choose one of \('off', 'wandb'\)"):
        tracking_from_env("experiment 1 cpu", tmp_path)
    monkeypatch.setenv("TRACK", "wandb")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    with pytest.raises(ValueError, match=r"Tracking.mode='dryrun' must be one of \('online', 'offline', 'disabled'\)"):
        tracking_from_env("experiment 1 cpu", tmp_path)


def test_a_grid_without_tracking_never_imports_wandb(tmp_path):
    code = (
        "import sys, json;"
        "from conftest import tiny_specs;"
        "from runner import run_grid;"
        f"run_grid(tiny_specs((1,), steps=2), {str(tmp_path)!r}, backend='inline', progress=False);"
        "assert 'wandb' not in sys.modules, 'wandb was imported'"
    )
    env = {"PYTHONPATH": str(ROOT / "tests"), "LOOPED_RESULTS_ROOT": str(tmp_path), "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ROOT), env=env)


# Tracking failures, which the real package cannot be made to produce on demand: wandb's entry points
# are replaced by ones that fail the way a network, a disk or wandb itself can.


@pytest.fixture
def fresh_tracking(monkeypatch):
    """tracking.py with no earlier start failure remembered in this process."""
    import tracking

    monkeypatch.setattr(tracking, "_START_FAILED", None)
    return tracking


def test_tracking_asked_for_without_wandb_is_one_clear_error_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises
    with pytest.raises(ValueError, match=r"TRACK=wandb asks for wandb tracking, but wandb cannot be imported"):
        run_grid(tiny_specs((1,), steps=2), tmp_path, backend="inline", progress=False,
                 tracking=Tracking(mode="offline"))
    assert not (tmp_path / "data" / "tiny_1.json").exists()


def test_a_run_wandb_cannot_start_trains_untracked_and_later_runs_do_not_wait(tmp_path, monkeypatch, fresh_tracking):
    import wandb

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs["name"])
        raise TimeoutError("no network")

    monkeypatch.setattr(wandb, "init", failing_init)
    with pytest.warns(UserWarning, match=r"wandb could not start a run for 'tiny_1' \(TimeoutError: no network\)"):
        records = run_grid(tiny_specs((1, 2), steps=2), tmp_path, backend="inline", progress=False,
                           tracking=Tracking(mode="online"))
    assert [r["train"]["status"] for r in records] == ["finished", "finished"]
    assert calls == ["tiny_1"]  # the second run did not try again


class _FailingRun:
    """A wandb run whose `log` or `finish` raises, as a full disk or a wandb bug would."""

    def __init__(self, fail_in: str):
        self.fail_in, self.summary = fail_in, {}

    def log(self, values, step):
        if self.fail_in == "log":
            raise OSError("disk full")

    def finish(self, exit_code):
        if self.fail_in == "finish":
            raise RuntimeError("wandb service gone")


@pytest.mark.parametrize("fail_in", ["log", "finish"])
def test_a_tracking_failure_during_a_run_costs_no_step_and_no_record(tmp_path, monkeypatch, fresh_tracking, fail_in):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kwargs: _FailingRun(fail_in))
    with pytest.warns(UserWarning, match=f"wandb failed in {fail_in} for run 'tiny_1'"):
        records = run_grid(tiny_specs((1,), steps=STEPS), tmp_path, backend="inline", progress=False,
                           tracking=Tracking(mode="online"))
    untracked = run_grid(tiny_specs((1,), steps=STEPS), tmp_path / "untracked", backend="inline", progress=False)
    assert records[0]["train"]["status"] == "finished" and len(records[0]["train"]["loss"]) == STEPS
    assert records[0]["train"]["loss"] == untracked[0]["train"]["loss"]
    assert (tmp_path / "data" / "tiny_1.json").exists()
