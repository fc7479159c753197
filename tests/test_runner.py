"""The grid runner: backends agree, results are cached and skipped, crashes stay contained,
and committed records (written before EvalConfig was renamed) still match their specs."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_at

import runner
import training
from runner import EvalConfig, Level2Config, RunSpec, choose_preset, results_dir, run_grid
from tasks import LinearRegression
from transformer import ModelConfig
from utils import TrainConfig

MODEL = ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=9)
TASK = LinearRegression(2).to_dict()
LEVEL2 = EvalConfig(launches=2, batches_per_launch=1, batch_size=8, extrapolation_b=(1, 3))


def spec(seed, b=2, steps=6, name=None):
    return RunSpec(
        name=name or f"tiny_{b}_{seed}",
        model=MODEL,
        task=LinearRegression(2).to_dict(),
        train=TrainConfig(steps=steps, batch_size=4, b=b, n_points=5, seed=seed, eval_prompts=16),
        evaluation=LEVEL2,
        labels={"b": b, "seed": seed},
    )


def test_inline_and_pool_give_identical_records(tmp_path):
    specs = [spec(1), spec(2, b=1)]
    inline = run_grid(specs, tmp_path / "inline", backend="inline", progress=False)
    shutil.rmtree(runner.trained_dir())  # the pool must train, not reuse the inline training
    pooled = run_grid(specs, tmp_path / "pool", backend="pool", workers=2, progress=False)
    for a, b in zip(inline, pooled, strict=True):
        assert a["train"]["loss"] == b["train"]["loss"]
        assert a["level2"] == b["level2"]
        assert a["position_errors"] == b["position_errors"]
    record = inline[0]
    assert set(record) >= {"spec", "parameters", "hardware", "train", "level2", "position_errors", "wall_time_s"}
    assert record["level2"]["extrapolation"]["b"] == [1, 3]
    assert (tmp_path / "inline" / "data" / "tiny_2_1.json").exists()
    assert (tmp_path / "inline" / "models" / "tiny_2_1" / "model.pt").exists()
    assert not list((tmp_path / "inline" / "checkpoints").glob("*"))


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    calls = []
    real = runner.execute_run
    monkeypatch.setattr(runner, "execute_run", lambda s, *a, **k: calls.append(s.name) or real(s, *a, **k))
    records = run_grid([spec(1), spec(2)], tmp_path, backend="inline", progress=False)
    assert calls == ["tiny_2_2"]
    assert [r["spec"]["name"] for r in records] == ["tiny_2_1", "tiny_2_2"]


def test_changed_spec_under_same_name_is_refused(tmp_path):
    run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    with pytest.raises(ValueError, match="holds a run with another configuration than spec 'tiny_2_1'"):
        run_grid([spec(1, steps=7, name="tiny_2_1")], tmp_path, backend="inline", progress=False)


def test_a_crashed_run_does_not_lose_the_others(tmp_path):
    bad = RunSpec(
        name="bad",
        model=MODEL,
        task={"name": "LinearRegression", "n_dims": 3},  # n_dims differs from the model: train raises
        train=TrainConfig(steps=3, batch_size=4, b=1, n_points=5, eval_prompts=8),
        evaluation=LEVEL2,
    )
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed \(the others are saved\)"):
        run_grid([bad, spec(1)], tmp_path, backend="pool", workers=2, progress=False)
    assert (tmp_path / "data" / "tiny_2_1.json").exists()
    assert not (tmp_path / "data" / "bad.json").exists()


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit")
    records = run_grid(
        [spec(3)], tmp_path, backend="submitit", slurm={"cluster": "local", "timeout_min": 5}, progress=False
    )
    inline = run_grid([spec(3)], tmp_path / "inline", backend="inline", progress=False)
    shutil.rmtree(runner.trained_dir())
    assert records[0]["train"]["loss"] == inline[0]["train"]["loss"]


def test_grid_errors(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"backend='slurm' is not allowed; choose one of \('auto', 'inline', 'pool', 'submitit', 'ensemble'\)",
    ):
        run_grid([spec(1)], tmp_path, backend="slurm")
    with pytest.raises(ValueError, match=r"run names must be unique; repeated: \['tiny_2_1'\]"):
        run_grid([spec(1), spec(1)], tmp_path, backend="inline")


def test_presets_and_results_dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("PRESET", "huge")
    with pytest.raises(ValueError, match=r"PRESET='huge' is not allowed; choose one of \('smoke', 'cpu'\)"):
        choose_preset({"smoke": 1, "cpu": 2})
    monkeypatch.delenv("PRESET")
    assert choose_preset({"smoke": 1, "cpu": 2}) == ("cpu", 2)
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    assert results_dir(1, "cpu") == tmp_path / "results" / "experiment 1"
    assert results_dir(1, "full") == tmp_path / "results" / "experiment 1" / "full"
    assert results_dir(1, "smoke") == tmp_path / "scratch" / "experiment 1"
    assert os.environ["LOOPED_RESULTS_ROOT"] == str(tmp_path)


def test_paper_grade_evaluations_are_recorded_and_survive_a_reload(tmp_path):
    from tasks import OOD_KINDS

    evaluation = EvalConfig(
        launches=2,
        batches_per_launch=1,
        batch_size=8,
        extrapolation_b=(1, 3),
        bootstrap=True,
        state_updates=True,
        ood_kinds=OOD_KINDS,
    )
    paper = RunSpec(
        name="paper", model=MODEL, task=LinearRegression(2).to_dict(), train=spec(1).train, evaluation=evaluation
    )
    record = run_grid([paper], tmp_path, backend="inline", progress=False)[0]
    band = record["position_band"]
    assert len(band["mean"]) == 5
    assert all(lo <= m <= hi for lo, m, hi in zip(band["low"], band["mean"], band["high"], strict=True))
    # the band's mean is the held-out error of the last loop, which position_errors also records
    assert band["mean"] == pytest.approx(record["position_errors"]["last_loop"], rel=1e-5)
    assert len(record["state_updates"]) == 3 and record["state_updates"][0] == pytest.approx(1.0)
    assert set(record["ood"]) == set(OOD_KINDS)
    assert len(record["ood"]["orthogonal_query"]["mean"]) == 2  # min(n_points, n_dims) points
    assert len(record["ood"]["scaled_x"]["mean"]) == 5
    # the record's spec (ood_kinds stored as a list) still matches: a re-run skips it
    assert run_grid([paper], tmp_path, backend="inline", progress=False)[0]["wall_time_s"] == record["wall_time_s"]
    with pytest.raises(ValueError, match=r"EvalConfig.ood_kinds has unknown kinds \['sideways'\]"):
        EvalConfig(ood_kinds=("sideways",))


def test_ood_prompts_are_fixed_per_kind_and_differ_between_kinds():
    from utils import ood_prompts

    task = LinearRegression(3)
    first = ood_prompts(task, "scaled_x", 4, 6, seed=7)
    again = ood_prompts(task, "scaled_x", 4, 6, seed=7)
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    other = ood_prompts(task, "label_noise", 4, 6, seed=7)
    assert not (first[1] == other[1]).all()
    with pytest.raises(ValueError, match="OOD kind 'sideways' is not known; choose one of"):
        ood_prompts(task, "sideways", 4, 6, seed=7)


def test_ood_baselines_score_each_estimator_on_each_kinds_prompts():
    from utils import baseline_prompt_errors, bootstrap_band, ood_baselines, ood_prompts

    task = LinearRegression(3)
    bands = ood_baselines(task, ("least squares", "averaging"), 16, 6, seed=7, kinds=("scaled_x", "label_noise"))
    assert list(bands) == [("scaled_x", "least squares"), ("scaled_x", "averaging"), ("label_noise", "least squares"),
                           ("label_noise", "averaging")]
    tokens, ys = ood_prompts(task, "label_noise", 16, 6, seed=7)
    assert bands["label_noise", "averaging"] == bootstrap_band(baseline_prompt_errors(tokens, ys, "averaging", 3))
    assert len(bands["scaled_x", "least squares"]["mean"]) == 6


def test_label_sensitivity_and_positional_table_are_recorded(tmp_path):
    from dataclasses import replace

    from utils import heldout_prompts, label_sensitivity, load_run

    evaluation = replace(LEVEL2, label_sensitivity=8, positional_table=True)
    learned = RunSpec(
        name="learned",
        model=replace(MODEL, pe="learned", causal=False),
        task=LinearRegression(2).to_dict(),
        train=spec(1).train,
        evaluation=evaluation,
    )
    record = run_grid([learned], tmp_path, backend="inline", progress=False)[0]
    assert len(record["label_sensitivity"]["own"]) == 4 and len(record["label_sensitivity"]["later"]) == 3
    model, _ = load_run(tmp_path / "models" / "learned")
    probe, _ = heldout_prompts(LinearRegression(2), 8, 5, learned.train.eval_seed)
    assert record["label_sensitivity"]["own"] == pytest.approx(label_sensitivity(model, probe, 2).tolist())
    assert record["positional_table"] == model.positional.table.weight.detach().tolist()
    causal = replace(
        learned,
        name="causal",
        model=replace(MODEL, pe="learned"),
        evaluation=replace(evaluation, positional_table=False),
    )
    assert run_grid([causal], tmp_path, backend="inline", progress=False)[0]["label_sensitivity"]["own"] == [0.0] * 4
    with pytest.raises(ValueError, match="positional_table=True needs ModelConfig.pe='learned'"):
        replace(learned, name="no_table", model=MODEL)  # refused when made: nothing trains


def test_eval_config_validation_and_the_deprecated_names():
    assert Level2Config is EvalConfig
    old_style = RunSpec("r", MODEL, TASK, TrainConfig(steps=1), level2=LEVEL2)  # the deprecated keyword
    assert old_style.evaluation == LEVEL2 and old_style == RunSpec(
        "r", MODEL, TASK, TrainConfig(steps=1), evaluation=LEVEL2
    )
    with pytest.raises(ValueError, match="give evaluation= or the deprecated level2=, not both"):
        RunSpec("r", MODEL, TASK, TrainConfig(steps=1), evaluation=LEVEL2, level2=LEVEL2)
    for bad, message in [
        (dict(launches=0), r"EvalConfig.launches=0 must be an integer >= 1"),
        (dict(batch_size=2.5), r"EvalConfig.batch_size=2.5 must be an integer >= 1"),
        (dict(extrapolation_b=()), "EvalConfig.extrapolation_b must hold at least one loop count"),
        (dict(extrapolation_b=(1, 0)), r"EvalConfig.extrapolation_b entry=0 must be an integer >= 1"),
        (dict(bootstrap="yes"), r"EvalConfig.bootstrap='yes' is not allowed; choose one of \(False, True\)"),
        (dict(label_sensitivity=-1), r"EvalConfig.label_sensitivity=-1 must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            EvalConfig(**bad)


def test_old_records_map_level2_to_evaluation():
    old = spec(1).to_dict()
    old["level2"] = old.pop("evaluation")
    for key in ("label_sensitivity", "positional_table", "bootstrap", "state_updates", "ood_kinds"):
        del old["level2"][key]  # fields added since the record was written take their defaults
    assert RunSpec.from_dict(old) == spec(1)


# run records only: a sitting's file (grid.json, tuning.json, shared-rate.json, budget-check.json, ...: any name a
# notebook gives a sitting) holds its wall time, hardware and backend; "step times.json" (`Experiment.step_times`) and
# the files of `Experiment.per_run` (e.g. Experiment 4's "learned alpha.json": {run name: value}, every key a run
# record beside it) are side results
def _is_sitting(path) -> bool:
    from utils import read_json

    kept = read_json(path)
    return isinstance(kept, dict) and "spec" not in kept and {"wall_time_s", "hardware", "backend"} <= set(kept)


def _is_per_run_file(path) -> bool:
    from utils import read_json

    kept = read_json(path)
    return isinstance(kept, dict) and "spec" not in kept and all((path.parent / f"{run}.json").exists() for run in kept)


COMMITTED = sorted(
    p
    for p in (runner.ROOT / "results").glob("experiment */data/*.json")
    if not _is_sitting(p) and p.name not in ("step times.json", "rate choices.json") and not _is_per_run_file(p)
)


def test_side_files_are_told_apart_from_run_records(tmp_path):
    data = runner.ROOT / "results" / "experiment 4" / "data"
    assert _is_per_run_file(data / "learned alpha.json")
    assert not _is_per_run_file(next(p for p in COMMITTED if p.parent == data))  # a run record
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "side.json").write_text('{"a": 1.0, "b": 2.0}')  # b has no record beside it: not a side file
    assert not _is_per_run_file(tmp_path / "side.json")


def test_every_committed_record_loads_and_matches_its_spec():
    from utils import read_json

    # (No committed record predates the rename of "level2" to "evaluation" any more: the runs of Experiments 6 to 8 that
    # did were re-run. Reading such a record is tested on a rewritten one: test_old_records_map_level2_to_evaluation.)
    assert len(COMMITTED) > 100
    for path in COMMITTED:
        record = read_json(path)
        spec_ = RunSpec.from_dict(record["spec"])
        assert spec_.name == path.stem
        assert RunSpec.from_dict(spec_.to_dict()) == spec_
        assert runner.load_result(spec_, path.parent.parent)["spec"] == record["spec"]


def test_experiment_3_records_hold_their_label_leakage():
    from utils import read_json

    records = [read_json(p) for p in COMMITTED if p.parts[-3] == "experiment 3"]
    assert len(records) == 60
    assert all(RunSpec.from_dict(r["spec"]).evaluation.label_sensitivity == 256 for r in records)
    assert all(len(r["label_sensitivity"]["own"]) == 11 for r in records)
    tables = [r for r in records if "positional_table" in r]
    assert sorted(r["spec"]["name"] for r in tables) == ["lpe002_cm_b5_42", "lpe_cm_b5_42"]


def test_a_changed_spec_never_resumes_the_interrupted_runs_checkpoint(tmp_path, monkeypatch):
    first = spec(1, steps=8)
    first = dataclasses.replace(first, train=dataclasses.replace(first.train, checkpoint_every=2))
    real_step = interrupt_at(monkeypatch, training.SingleStepper, 5)
    with pytest.raises(KeyboardInterrupt):
        runner.execute_run(first, tmp_path)
    checkpoints = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == [f"tiny_2_1-{first.training_key()}.ckpt"]
    monkeypatch.setattr(training.SingleStepper, "step", real_step)
    # Same name, another learning rate: its training key differs, so it trains from step 0.
    changed = dataclasses.replace(first, train=dataclasses.replace(first.train, lr=1e-4))
    assert changed.training_key() != first.training_key()
    assert dataclasses.replace(first, evaluation=EvalConfig(launches=1)).training_key() == first.training_key()
    record = runner.execute_run(changed, tmp_path / "fresh")
    shutil.rmtree(runner.trained_dir())  # train again, next to the interrupted run's checkpoint
    resumed_elsewhere = runner.execute_run(changed, tmp_path)
    assert not record["training_reused"] and not resumed_elsewhere["training_reused"]
    assert resumed_elsewhere["train"]["loss"] == record["train"]["loss"]
    assert record["software"] == {**runner.training_software(), "device": "cpu", "backend": "inline"}
    assert record["software"]["torch"] == torch.__version__
    assert record["training_key"] == changed.training_key()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(name="../../x"), r"RunSpec.name='../../x' must be 1 to 120 letters"),
        (dict(name=""), r"RunSpec.name='' must be"),
        (dict(name="a\x00b"), r"RunSpec.name=.* must be"),
        (dict(name="x" * 300), r"RunSpec.name=.* must be 1 to 120"),
        (dict(name=".hidden"), r"not starting with '.'"),
        (dict(labels={"b": (1, 2)}), r"RunSpec.labels=.* must survive JSON unchanged"),
        (dict(labels={1: "a"}), r"RunSpec.labels=.* must survive JSON unchanged"),
        (dict(labels={"seed": np.int64(3)}), r"RunSpec.labels=.* must survive JSON unchanged"),
        (dict(task={"name": "Nope"}), r"RunSpec.task=.* is not a task's dict"),
        (dict(model=dataclasses.replace(MODEL, loop_stacks=3)), r"loop_stacks=3 is more stacks than TrainConfig.b=2"),
        (
            dict(model=dataclasses.replace(MODEL, context_keep="first", context_n=4)),
            r"context_n=4 keeps every one of the 4 examples",
        ),
        (
            dict(model=dataclasses.replace(MODEL, context_keep="first", context_n=2, context_cut_at=3)),
            r"context_cut_at=3 comes after the last of the TrainConfig.b=2 loops",
        ),
    ],
)
def test_a_bad_run_spec_is_refused_on_creation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(spec(1), **changes)


def test_ema_alpha_without_ema_is_refused():
    with pytest.raises(ValueError, match=r"ema_alpha=0.3 has no effect with injection='add'"):
        dataclasses.replace(MODEL, ema_alpha=0.3)
    dataclasses.replace(MODEL, injection="ema", ema_alpha=0.3)


def test_a_truncated_record_is_set_aside_and_its_run_redone(tmp_path):
    first = run_grid([spec(1)], tmp_path, backend="inline", progress=False)[0]
    path = tmp_path / "data" / "tiny_2_1.json"
    path.write_text(path.read_text()[:100])  # a truncated file
    with pytest.warns(UserWarning, match=r"tiny_2_1.json cannot be read as a run record .* set aside"):
        again = run_grid([spec(1)], tmp_path, backend="inline", progress=False)[0]
    assert again["train"]["loss"] == first["train"]["loss"]
    assert (tmp_path / "data" / "tiny_2_1.json.set-aside").exists()


def test_an_unwritable_results_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="results folder .* cannot be written"):
        run_grid([spec(1)], blocker / "results", backend="inline", progress=False)


def test_a_run_another_sitting_holds_is_waited_for_not_computed_twice(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "locks" / "tiny_2_1.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text(f"{holder.pid} {runner.platform.node()}\n")
        returned = []
        thread = threading.Thread(
            target=lambda: returned.append(run_grid([spec(1), spec(2)], tmp_path, backend="inline", progress=False))
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not (tmp_path / "data" / "tiny_2_2.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        # The free run is done; the held one is neither computed nor started here while its holder lives.
        assert not (tmp_path / "data" / "tiny_2_1.json").exists()
        assert not list((tmp_path / "checkpoints").glob("tiny_2_1-*"))
        assert thread.is_alive()
    finally:
        holder.kill()
        holder.wait()
    thread.join(timeout=60)  # the holder is gone without a record: this sitting computes the run
    assert [r["spec"]["name"] for r in returned[0]] == ["tiny_2_1", "tiny_2_2"]
    assert not lock.exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    lock = tmp_path / "locks" / "tiny_2_1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(f"999999999 {runner.platform.node()}\n")  # no such process
    records = run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    assert records[0]["train"]["status"] == "finished" and not lock.exists()


def test_a_run_trained_by_another_notebook_is_reused_not_trained_again(tmp_path, monkeypatch):
    first = run_grid([spec(1)], tmp_path / "experiment A", backend="inline", progress=False)[0]
    monkeypatch.setattr(runner, "train", lambda *args, **kwargs: pytest.fail("trained again"))
    # Another experiment: another name and another evaluation, the same training.
    other = dataclasses.replace(spec(1), name="shared_run", evaluation=EvalConfig(launches=1, extrapolation_b=(1, 2)))
    again = run_grid([other], tmp_path / "experiment B", backend="inline", progress=False)[0]
    assert again["training_reused"] and not first["training_reused"]
    assert again["train"] == first["train"]
    assert again["level2"]["extrapolation"]["reference"][0] == first["level2"]["extrapolation"]["reference"][0]  # b = 1


def test_each_sitting_keeps_its_own_wall_time_file(tmp_path):
    from utils import read_json

    _, tuning = runner.run_grid_timed([spec(1)], tmp_path, backend="inline", sitting="tuning")
    _, grid = runner.run_grid_timed([spec(2)], tmp_path, backend="inline")
    assert read_json(tmp_path / "data" / "tuning.json") == tuning and tuning["runs"] == 1
    assert read_json(tmp_path / "data" / "grid.json") == grid
    with pytest.raises(ValueError, match=r"sitting='../grid' is not allowed; use letters, digits"):
        runner.run_grid_timed([spec(3)], tmp_path, backend="inline", sitting="../grid")
    assert not (tmp_path / "data" / "tiny_2_3.json").exists()  # refused before any training


def test_a_sitting_that_computes_a_run_states_its_own_cost_and_a_cache_read_keeps_the_stored_one(tmp_path):
    from utils import read_json, write_json

    runner.run_grid_timed([spec(1)], tmp_path, backend="inline", sitting="screen")
    write_json(tmp_path / "data" / "screen.json", {**read_json(tmp_path / "data" / "screen.json"), "wall_time_s": 1e6})
    _, kept = runner.run_grid_timed([spec(1)], tmp_path, backend="inline", sitting="screen")  # read from the cache
    assert kept["wall_time_s"] == 1e6
    _, new = runner.run_grid_timed([spec(1), spec(2)], tmp_path, backend="inline", sitting="screen")  # computes tiny_2
    assert new["wall_time_s"] < 1e6 and new["runs"] == 2


def test_a_cached_training_is_reused_only_by_the_same_code_and_torch(tmp_path, monkeypatch):
    first = run_grid([spec(1)], tmp_path / "A", backend="inline", progress=False)[0]
    assert first["software"]["training_version"] == training.TRAINING_VERSION
    changed = {**runner.training_software(), "torch": "9.9.9"}  # the same key, another torch
    monkeypatch.setattr(runner, "training_software", lambda: changed)
    other = dataclasses.replace(spec(1), name="again")
    with pytest.warns(UserWarning, match=r"trained by .* not by .*9\.9\.9.*trains again"):
        again = run_grid([other], tmp_path / "B", backend="inline", progress=False)[0]
    assert not again["training_reused"] and again["software"]["torch"] == "9.9.9"
    assert list(runner.trained_dir().glob("*.set-aside"))  # the old entry is kept for inspection, not used


def test_a_damaged_cache_entry_is_set_aside_by_name_and_the_run_trains(tmp_path):
    run_grid([spec(1)], tmp_path / "A", backend="inline", progress=False)
    entry = runner.trained_dir() / spec(1).training_key()
    (entry / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=re.escape(str(entry)) + r" it cannot be read"):
        again = run_grid([dataclasses.replace(spec(1), name="again")], tmp_path / "B", backend="inline", progress=False)
    assert again[0]["train"]["status"] == "finished" and not again[0]["training_reused"]


def test_a_grid_refused_for_a_record_of_another_configuration_releases_its_locks(tmp_path):
    run_grid([spec(2)], tmp_path, backend="inline", progress=False)
    clashing = dataclasses.replace(spec(2), train=dataclasses.replace(spec(2).train, lr=1e-4))
    with pytest.raises(ValueError, match="holds a run with another configuration"):
        run_grid([spec(1), clashing], tmp_path, backend="inline", progress=False)
    assert not list((tmp_path / "locks").glob("*.lock"))  # tiny_2_1's lock was released
    (tmp_path / "data" / "tiny_2_2.json").unlink()  # as the message says; then the same cell runs
    records = run_grid([spec(1), clashing], tmp_path, backend="inline", progress=False)
    assert [r["train"]["status"] for r in records] == ["finished", "finished"]


def test_a_config_field_added_with_its_default_changes_no_training_key():
    @dataclasses.dataclass(frozen=True)
    class GrownTrainConfig(TrainConfig):
        a_new_option: int = 0  # a later field whose default keeps the old behaviour

    base = spec(1)
    grown = GrownTrainConfig(**base.train.to_dict())
    assert "a_new_option" in grown.to_dict() and "a_new_option" not in training.non_default(grown)
    assert training.training_key(base.model, [grown], base.task) == base.training_key()
    assert training.training_key(base.model, [dataclasses.replace(grown, a_new_option=1)], base.task) != (
        base.training_key()
    )


def test_a_run_has_a_role_and_records_before_roles_read_as_reported():
    with pytest.raises(ValueError, match=r"RunSpec.role.*'reported', 'tuning', 'screen'"):
        dataclasses.replace(spec(1), role="final")
    stored = spec(1).to_dict()
    del stored["role"]  # a record written before RunSpec.role existed
    assert RunSpec.from_dict(stored) == spec(1) and spec(1).role == "reported"


def test_a_record_keeps_the_query_error_of_every_held_out_prompt(tmp_path):
    record = run_grid([spec(1, b=2)], tmp_path, backend="inline", progress=False)[0]
    per_prompt = record["prompt_errors"]
    assert sorted(per_prompt, key=int) == ["2", str(max(LEVEL2.extrapolation_b))]  # b_train and the longest b
    assert all(len(errors) == 16 for errors in per_prompt.values())  # eval_prompts, in the held-out set's order
    # their mean is the last loop's held-out query error the record reports (to the stored six digits)
    assert np.mean(per_prompt["2"]) == pytest.approx(record["loop_errors"][-1], rel=1e-4)


def test_a_lock_of_a_reused_pid_or_of_a_gone_machine_is_taken_over_and_a_live_one_is_not(tmp_path):
    lock = tmp_path / "locks" / "tiny_2_1.lock"
    lock.parent.mkdir(parents=True)
    me, host = os.getpid(), runner.platform.node()
    # this process's pid, alive, but with another start time: the pid was reused after a restart
    lock.write_text(f"{me} {host} 1\n")
    with pytest.warns(UserWarning, match=f"lock {re.escape(str(lock))} of process {me} on {host} was stale"):
        assert runner._take_lock(tmp_path, "tiny_2_1")
    lock.write_text(f"{me} {host} {runner._process_start(me)}\n")  # truly this process: alive
    assert not runner._take_lock(tmp_path, "tiny_2_1")
    lock.write_text("4242 another-machine -\n")  # another machine, refreshed just now: cannot be checked
    assert not runner._take_lock(tmp_path, "tiny_2_1")
    old = time.time() - runner.LOCK_STALE_S - 1
    os.utime(lock, (old, old))  # ...and not refreshed for longer than LOCK_STALE_S: its sitting is gone
    with pytest.warns(UserWarning, match="process 4242 on another-machine was stale"):
        assert runner._take_lock(tmp_path, "tiny_2_1")
    assert lock.read_text() == runner._lock_text()


def test_a_stale_lock_is_taken_over_by_exactly_one_sitting(tmp_path):
    lock = tmp_path / "locks" / "tiny_2_1.lock"
    lock.parent.mkdir(parents=True)
    for _ in range(20):
        lock.write_text(f"999999999 {runner.platform.node()}\n")  # no such process
        barrier, won = threading.Barrier(4), []

        def contend(barrier=barrier, won=won):
            barrier.wait()
            won.append(runner._take_lock(tmp_path, "tiny_2_1"))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            threads = [threading.Thread(target=contend) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert won.count(True) == 1  # threads of one process share its pid: the winner's lock stays


def test_a_long_run_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LOCK_REFRESH_S", 0.05)
    lock = tmp_path / "locks" / "tiny_2_1.lock"
    seen = []

    def slow_run(pending, out_dir, *args):
        first = lock.stat().st_mtime
        time.sleep(0.4)
        seen.append(lock.stat().st_mtime > first)
        raise KeyboardInterrupt  # stop here: only the lock's freshness is tested

    monkeypatch.setattr(runner, "_run_pending", slow_run)
    with pytest.raises(KeyboardInterrupt):
        run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    assert seen == [True] and not lock.exists()  # refreshed while held, released after


def test_a_waiting_sitting_names_the_lock_and_its_holder(tmp_path, capsys, monkeypatch):
    lock = tmp_path / "locks" / "tiny_2_1.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("4242 another-machine -\n")
    monkeypatch.setattr(runner, "LOCK_STALE_S", 0.5)  # so the test's holder goes stale quickly
    with pytest.warns(UserWarning, match="was stale"):
        records = run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    assert records[0]["train"]["status"] == "finished"
    out = capsys.readouterr().out
    assert f"is being computed by process 4242 on another-machine (lock {lock})" in out
    assert "delete the file to take it over now" in out


def test_a_folder_of_finished_results_is_read_even_when_read_only(tmp_path, monkeypatch):
    run_grid([spec(1)], tmp_path, backend="inline", progress=False)

    def read_only(folder):  # as _check_writable answers for a folder it cannot write (tests run as root here)
        raise ValueError(f"results folder {folder} cannot be written (read-only); choose another out_dir")

    monkeypatch.setattr(runner, "_check_writable", read_only)
    assert run_grid([spec(1)], tmp_path, backend="inline", progress=False)[0]["train"]["status"] == "finished"
    with pytest.raises(ValueError, match="cannot be written"):
        run_grid([spec(2)], tmp_path, backend="inline", progress=False)
    assert not (tmp_path / "locks" / "tiny_2_2.lock").exists()  # refused before any lock


def test_training_off_reads_finished_runs_and_refuses_to_compute_one(tmp_path, monkeypatch):
    run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    monkeypatch.setenv("TRAINING", "off")
    assert run_grid([spec(1)], tmp_path, backend="inline", progress=False)[0]["train"]["status"] == "finished"
    with pytest.raises(RuntimeError, match=r"TRAINING=off: 1 of 2 runs have no finished result .*\(tiny_2_2\)"):
        run_grid([spec(1), spec(2)], tmp_path, backend="inline", progress=False)
    assert not (tmp_path / "data" / "tiny_2_2.json").exists() and not (tmp_path / "locks" / "tiny_2_2.lock").exists()
    monkeypatch.setenv("TRAINING", "no")
    with pytest.raises(ValueError, match=r"TRAINING='no' is not allowed; choose one of \('on', 'off'\)"):
        run_grid([spec(1)], tmp_path, backend="inline", progress=False)


def test_a_sitting_never_takes_a_runs_file(tmp_path):
    with pytest.raises(ValueError, match=r"sitting='tiny_2_1' is also a run's name"):
        runner.run_grid_timed([spec(1)], tmp_path, backend="inline", sitting="tiny_2_1")
    run_grid([spec(1)], tmp_path, backend="inline", progress=False)
    with pytest.raises(ValueError, match=r"tiny_2_1.json is not a sitting's record"):
        runner.run_grid_timed([spec(2)], tmp_path, backend="inline", sitting="tiny_2_1")
    assert "spec" in runner.read_json(tmp_path / "data" / "tiny_2_1.json")  # the run's record is kept


def test_the_results_root_is_absolute_or_the_repository(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", "")
    assert runner.results_root() == runner.ROOT
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", "~/retrain")
    assert runner.results_root() == Path.home() / "retrain"
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", "retrain")
    with pytest.raises(ValueError, match=r"LOOPED_RESULTS_ROOT='retrain' must be an absolute path"):
        results_dir(1, "cpu")
