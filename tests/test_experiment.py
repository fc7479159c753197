"""The notebooks' helper: named look-ups into run records, the report writer and the environment."""

import dataclasses
import json
import types

import numpy as np
import pytest
from conftest import tiny_specs

import experiment
from experiment import Experiment, Results
from report import Cites, fill_template, placeholders, settings_table


def record(model, b, seed, status="finished", scale=1.0):
    """A run record shaped like runner.finish_run's, with values that encode (b, seed)."""
    eval_b = [1, 5, 10]
    return {
        "spec": {"name": f"{model}_{b}_{seed}", "labels": {"model": model, "b": b, "seed": seed}, "train": {"b": b}},
        "parameters": 100 if model == "small" else 800,
        "train": {"status": status, "loss": [3.0, 2.0, 1.0, scale * seed], "evals": [{"reference": seed / 10}]},
        "level2": {
            "launches": {"reference": [scale * seed, 2 * scale * seed, 3 * scale * seed]},
            "extrapolation": {
                "b": eval_b,
                "reference": [scale * seed * e for e in eval_b],
                "last_loop": [scale * seed * e + 1 for e in eval_b],
            },
        },
        "position_errors": {"last_loop": [None, 0.5, 0.25]},
        "label_sensitivity": {"own": [seed, seed], "later": [0.0]},
        "wall_time_s": 60.0,
    }


@pytest.fixture
def results():
    return Results(
        [record(m, b, s) for m in ("small", "large") for b in (1, 5) for s in (1, 2)]
        + [record("large", 10, 3, status="diverged")]
    )


def test_where_one_and_the_status_filters(results):
    assert len(results.where(model="small")) == 4
    assert results.where(model="small", b=5).names == ["small_5_1", "small_5_2"]
    assert results.where(model="tiny").names == []
    assert results.one(model="large", b=1, seed=2)["spec"]["name"] == "large_1_2"
    with pytest.raises(KeyError, match=r"2 runs match \{'model': 'large', 'b': 1\}, expected exactly one"):
        results.one(model="large", b=1)
    assert results.diverged.names == ["large_10_3"]
    assert len(results.finished) == 8
    assert results.labels("b") == [1, 5, 10]
    assert results.where(model="small").parameters == 100
    assert Results([]).parameters is None
    with pytest.raises(ValueError, match=r"different parameter counts: \[100, 800\]"):
        _ = results.parameters
    assert isinstance(results[:2], Results) and results[0]["spec"]["name"] == "small_1_1"


def test_configurations_group_seeds_whatever_the_order_of_their_labels(results):
    """A cached run comes back from JSON with its labels sorted; a fresh one keeps the grid's order."""
    fresh, cached = record("small", 5, 1), record("small", 5, 2)
    cached["spec"]["labels"] = dict(sorted(cached["spec"]["labels"].items()))
    assert list(cached["spec"]["labels"]) != list(fresh["spec"]["labels"])
    groups = Results([fresh, cached, record("large", 5, 1)]).configurations()
    assert list(groups) == ["b=5, model=small", "b=5, model=large"]  # named in sorted order, whichever came first
    assert groups["b=5, model=small"].names == ["small_5_1", "small_5_2"]
    assert list(Results([cached, fresh]).configurations()) == ["b=5, model=small"]


def test_extrapolation_reads_the_named_loop_count(results):
    runs = results.where(model="small", b=5)
    np.testing.assert_array_equal(runs.extrapolation(), [5.0, 10.0])  # default: each run's own b_train
    np.testing.assert_array_equal(runs.extrapolation(at=10), [10.0, 20.0])
    np.testing.assert_array_equal(runs.extrapolation(at=10, metric="last_loop"), [11.0, 21.0])
    with pytest.raises(KeyError, match=r"run 'small_5_1' was not evaluated at b=20; it has \[1, 5, 10\]"):
        runs.extrapolation(at=20)
    # a diverged run has no evaluation: every per-run look-up skips it
    assert len(results.where(b=10).extrapolation()) == 0
    assert runs.curves("last_loop") == [[2, 6, 11], [3, 11, 21]]


def test_level2_losses_positions_and_label_sensitivity(results):
    runs = results.where(model="large", b=1)
    assert runs.level2() == [1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
    np.testing.assert_array_equal(runs.level2_median(), [2.0, 4.0])
    np.testing.assert_array_equal(runs.final_loss(2), [1.0, 1.5])  # mean of the last 2 steps
    np.testing.assert_array_equal(runs.final_loss(0), [1.0, 2.0])  # at least one step
    assert runs.position_errors() == [[None, 0.5, 0.25]] * 2
    np.testing.assert_array_equal(runs.label_sensitivity("own"), [1.0, 2.0])
    np.testing.assert_array_equal(runs.values(lambda r: r["train"]["evals"][-1]["reference"]), [0.1, 0.2])


def test_level2_relative_divides_each_launch_by_its_test_variance():
    launches = {"last_loop": [0.5, 2.0, 0.09], "std": [0.5, 2.0, 0.3]}
    run = {"level2": {"launches": launches}, "train": {"status": "finished"}}
    np.testing.assert_allclose(experiment.level2_launches(run, "last_loop", relative=True), [2.0, 0.5, 1.0])
    np.testing.assert_allclose(experiment.level2_launches(run, "last_loop"), [0.5, 2.0, 0.09])
    assert experiment.level2_median(run, "last_loop", relative=True) == pytest.approx(1.0)
    np.testing.assert_allclose(Results([run]).level2_median("last_loop", relative=True), [1.0])
    assert Results([run]).level2("last_loop", relative=True) == pytest.approx([2.0, 0.5, 1.0])


def test_mean_std_formats_like_the_reports(results):
    runs = results.where(model="small", b=5)
    assert runs.mean_std() == "7.5 ± 2.5"
    assert runs.mean_std(at=1, metric="last_loop") == "2.5 ± 0.5"
    assert runs.mean_std([1.0, 1.0]) == "1 ± 0"
    assert results.where(b=10).mean_std() == "n/a"


def test_fill_template_fills_every_placeholder():
    text = "# {title} ({preset} preset)\n{minutes:.1f} min; a set {{1, 5}}; {title} again\n"
    assert placeholders(text) == ["title", "preset", "minutes"]
    assert fill_template(text, {"title": "T", "preset": "cpu", "minutes": 27.66}) == (
        "# T (cpu preset)\n27.7 min; a set {1, 5}; T again\n"
    )


def test_fill_template_fails_on_a_missing_or_unused_value():
    with pytest.raises(
        ValueError, match=r"placeholders without a value \['preset'\]; values without a placeholder \[\]"
    ):
        fill_template("{title} {preset}", {"title": "T"})
    with pytest.raises(
        ValueError, match=r"placeholders without a value \[\]; values without a placeholder \['extra'\]"
    ):
        fill_template("{title}", {"title": "T", "extra": 1})
    with pytest.raises(ValueError, match=r"placeholder \{\} must start with a name"):
        fill_template("{}", {})
    with pytest.raises(ValueError, match=r"placeholder \{0\} must start with a name"):
        fill_template("{0}", {})


def test_fill_template_cites_an_indexed_value_by_its_root_name():
    text = "{C.mean[looped L2]} and {V[a: b|c]:>6}; {runs[0]}"
    assert placeholders(text) == ["C", "V", "runs"]
    C = types.SimpleNamespace(mean={"looped L2": "0.1"})
    assert fill_template(text, {"C": C, "V": Cites(lambda a, b: a + b), "runs": [7]}) == "0.1 and  a: bc; 7"
    with pytest.raises(ValueError, match=r"values without a placeholder \['extra'\]"):
        fill_template(text, {"C": C, "V": {}, "runs": [], "extra": 1})


def test_fill_template_names_a_placeholder_whose_key_is_missing():
    with pytest.raises(ValueError, match=r"report placeholder \{C.mean\[looped L9\]\} cites nothing: KeyError"):
        fill_template("{C.mean[looped L9]}", {"C": types.SimpleNamespace(mean={"looped L2": "0.1"})})
    with pytest.raises(ValueError, match=r"report placeholder \{C.median\[x\]\} cites nothing: AttributeError"):
        fill_template("{C.median[x]}", {"C": types.SimpleNamespace(mean={})})
    with pytest.raises(ValueError, match=r"report placeholder \{runs\[3\]\} cites nothing: IndexError"):
        fill_template("{runs[3]}", {"runs": [1]})


def test_experiment_reads_the_environment_and_writes_figures_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(7, {"smoke": {"steps": 2}, "cpu": {"steps": 100}})
    assert (exp.preset, exp.p, exp.backend, exp.device) == ("smoke", {"steps": 2}, "inline", "cpu")
    assert exp.out == tmp_path / "scratch" / "experiment 7"

    fig, axes = experiment.plots.subplots(1, 1)
    axes[0, 0].plot([0, 1], [1, 0])
    path = exp.figure(fig, "a line")
    assert path == exp.out / "a line.svg" and path.read_bytes().startswith(b"<?xml")
    assert not experiment.plots.plt.get_fignums()  # closed

    exp.grid = {"wall_time_s": 90.0, "hardware": "a laptop", "backend": "pool"}
    exp.results = Results([{**record("small", 1, seed), "hardware": "a laptop"} for seed in (1, 2)])
    assert exp.wall_time() == "grid 1.5 min (pool backend); 2.0 run-minutes in total"
    assert exp.settings({"seeds": "1, 2"}) == settings_table(
        {"preset": "`smoke`", "seeds": "1, 2", "hardware": "a laptop", "wall time": exp.wall_time()}
    )
    # Runs kept from an earlier sitting on another machine: both machines are named, and the last sitting's time
    # says how many of the runs it computed.
    exp.grid = {"wall_time_s": 90.0, "hardware": "a laptop", "backend": "pool", "runs": 2, "computed": 1}
    machines = {1: "a laptop", 2: "a server"}
    exp.results = Results([{**record("small", 1, seed), "hardware": machines[seed]} for seed in (1, 2)])
    assert exp.hardware() == "a laptop (last sitting); the runs were computed on a laptop: 1 run; a server: 1 run"
    assert exp.wall_time() == (
        "the grid's last sitting 1.5 min, which computed 1 of its 2 runs (pool backend); 2.0 run-minutes in total"
    )

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "experiment 7.md").write_text("# Experiment 7 ({preset})\n{verdict}\n")
    (reports / "experiment 7 - conclusions smoke.md").write_text("\n## Conclusions\n{number} runs\n")
    monkeypatch.setattr(experiment, "REPORTS", reports)
    written = exp.write_report(
        {"preset": "smoke", "verdict": "lower", "number": 2}, parts=["conclusions smoke"], learned=False
    )
    assert written.read_text() == (
        "# Experiment 7 (smoke)\nlower\n\n## Conclusions\n2 runs\n"
        "\n## Diverged runs\n\nNone: all 2 runs finished training.\n"
    )
    diverged = record("small", 1, 3, status="diverged")
    diverged["train"]["message"] = "training stopped at step 5: the loss is nan (not finite)"
    exp.results = Results([record("small", 1, 1), diverged])
    report = exp.write_report(
        {"preset": "smoke", "verdict": "lower", "number": 2}, parts=["conclusions smoke"], learned=False
    )
    assert report.read_text().endswith(
        "## Diverged runs\n\n1 of 2 runs stopped on a non-finite loss; their seeds are left out of every mean, "
        "verdict and plot above:\n\n- `small_1_3`: training stopped at step 5: the loss is nan (not finite)\n"
    )
    with pytest.raises(ValueError, match=r"values without a placeholder \['number'\]"):
        exp.write_report({"preset": "smoke", "verdict": "lower", "number": 2}, learned=False)
    with pytest.raises(ValueError, match=r"experiment 7.md has no '## Results' section to open with the gate"):
        exp.write_report({"preset": "smoke", "verdict": "lower"})
    with pytest.raises(FileNotFoundError):
        exp.write_report({}, parts=["conclusions cpu"])


def test_settings_table_layout():
    assert settings_table({"preset": "`cpu`", "seeds": "42, 451"}) == (
        "| setting | value |\n|---|---|\n| preset | `cpu` |\n| seeds | 42, 451 |"
    )


def test_experiment_runs_a_grid_from_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(1, {"smoke": {}})
    specs = tiny_specs((1, 2), steps=4, launches=2)
    results = exp.run(specs, progress=False)
    assert results.names == ["tiny_1", "tiny_2"] and exp.grid["runs"] == 2
    again = Experiment(1, {"smoke": {}}).run(specs, progress=False)
    assert again.records == results.records
    assert len(results.where(seed=2).extrapolation(at=2)) == 1


def gate_record(label, seed, final, steps=100):
    """A record with a real task and training config whose held-out error ends at `final`."""
    spec = tiny_specs([seed], steps=steps)[0].to_dict()
    spec["labels"] = {"variant": label, "seed": seed}
    evals = [{"step": 0, "reference": 1.0, "last_loop": 1.0}]
    evals += [{"step": step, "reference": final, "last_loop": final} for step in (steps * 4 // 5, steps)]
    return {"spec": spec, "train": {"status": "finished", "evals": evals, "loss": [1.0]}, "wall_time_s": 1.0}


def test_reports_open_their_results_with_the_gate_and_repeat_it_where_they_conclude(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(7, {"smoke": {}})
    exp.grid = {"wall_time_s": 1.0, "hardware": "a laptop", "backend": "inline"}
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "experiment 7.md").write_text("# E7\n\n## Results\ntable\n\n## The claims against these numbers\nx\n")
    (reports / "experiment 7 - conclusions smoke.md").write_text("\n## Conclusions (smoke)\ny\n")
    monkeypatch.setattr(experiment, "REPORTS", reports)

    exp.results = Results([gate_record("learned", s, 0.01) for s in (1, 2)] + [gate_record("plateau", 1, 0.9)])
    text = exp.write_report({}, parts=["conclusions smoke"]).read_text()
    results = text.split("## Results\n", 1)[1]
    assert results.startswith("\n### Did the models learn?\n\nGate: mean held-out last-loop error")
    assert "| variant=learned | 0.01, 0.01 | 0.01 |" in results and "| 2 of 2 |" in results
    assert "| variant=plateau | 0.9 |" in results and "did not learn at this budget" in results
    summary = "1 of 2 configurations passed the gate (variant=learned)."
    assert summary in results.split("## The claims")[0]
    assert "## The claims against these numbers\n\n> Gate: 1 of 2" in text
    assert "## Conclusions (smoke)\n\n> Gate: 1 of 2" in text

    exp.results = Results([gate_record("learned", s, 0.01) for s in (1, 2)])
    text = exp.write_report({}).read_text()
    assert "All 1 configurations passed the gate." in text and "> Gate:" not in text

    exp.results = Results([gate_record("plateau", 1, 0.9)])
    assert "**None of the 1 configurations passed the gate.**" in exp.write_report({}).read_text()


def test_a_gate_per_task_is_applied_to_that_task_and_a_missing_one_is_named(tmp_path, monkeypatch):
    from verdicts import Gate

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(7, {"smoke": {}})
    exp.results = Results([gate_record("plateau", s, 0.04) for s in (1, 2)])  # task LinearRegression(2)
    strict = exp.learned_section()[0]
    assert "did not learn at this budget" in strict
    lenient = exp.learned_section({"LinearRegression": Gate(reference="averaging", fraction=0.9)})[0]
    assert "0.9 x averaging" in lenient and "All 1 configurations passed the gate." in lenient
    missing = r"no gate was fixed for task 'LinearRegression'; gates are given for \['ReLUNetwork'\]"
    with pytest.raises(ValueError, match=missing):
        exp.learned_section({"ReLUNetwork": Gate()})


def test_run_minutes_count_the_training_of_a_run_resumed_from_earlier_sittings():
    fresh = {"wall_time_s": 120.0, "train": {"wall_time_s": 110.0}}  # trained and evaluated in one sitting
    resumed = {"wall_time_s": 60.0, "train": {"wall_time_s": 1200.0}}  # this sitting finished its last steps
    assert Results([fresh, resumed]).run_minutes() == pytest.approx((120.0 + 1200.0) / 60)


def test_a_retraining_elsewhere_is_compared_with_the_committed_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "cpu")
    monkeypatch.setenv("BACKEND", "inline")
    specs = tiny_specs((1, 2), steps=4)
    committed_root, retrain_root = tmp_path / "clone", tmp_path / "retrain"
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(committed_root))
    committed = Experiment(7, {"cpu": {}})
    committed.run(specs, progress=False)
    assert committed.compare_with_committed(committed_root) is None  # the committed results themselves

    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(retrain_root))
    retrained = Experiment(7, {"cpu": {}})
    retrained.run(specs, progress=False)  # its own store of trained runs: it trains again
    text = retrained.compare_with_committed(committed_root)
    assert "| model=tiny | 2 | same |" in text and "| 0.00% | yes |" in text  # CPU: the same bits
    assert (retrain_root / "results" / "experiment 7" / "reproduction.md").read_text() == text

    record = committed_root / "results" / "experiment 7" / "data" / "tiny_2.json"  # a committed run that differs
    values = json.loads(record.read_text())
    values["loop_errors"][-1] *= 1.5
    values["train"]["loss"][0] += 1.0
    record.write_text(json.dumps(values))
    text = retrained.compare_with_committed(committed_root)
    assert "| 33.33% | no |" in text

    values["spec"]["train"]["steps"] = 3000  # the notebook was edited since the commit: other runs, said so
    record.write_text(json.dumps(values))
    assert "| model=tiny | 2 | differs: train.steps 3000 -> 4 |" in retrained.compare_with_committed(committed_root)


def test_step_times_are_measured_once_and_read_back(tmp_path, monkeypatch):
    from utils import read_json, write_json

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(5, {"smoke": {}})
    specs = {"one": tiny_specs([1])[0], "two": tiny_specs([2])[0]}
    measured = exp.step_times(specs, steps=1, warmup=0)
    assert sorted(measured["ms per step"]) == ["one", "two"] and measured["steps"] == 1
    path = exp.out / "data" / "step times.json"
    write_json(path, {**measured, "ms per step": {"one": 1.0, "two": 2.0}})
    assert exp.step_times(specs)["ms per step"] == {"one": 1.0, "two": 2.0}  # read, not measured again
    assert sorted(exp.step_times({"one": specs["one"]}, steps=1, warmup=0)["ms per step"]) == ["one"]  # new labels
    assert sorted(read_json(path)["ms per step"]) == ["one"]


def test_per_run_values_are_computed_once_per_run_and_read_back(tmp_path, monkeypatch):
    from utils import read_json, write_json

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(5, {"smoke": {}})
    records = [{"spec": {"name": name}} for name in ("a", "b")]
    computed = []

    def compute(record):
        computed.append(record["spec"]["name"])
        return (len(computed), 0.1)

    assert exp.per_run("probe", records[:1], compute) == {"a": [1, 0.1]}  # as JSON reads it back
    assert exp.per_run("probe", records, compute) == {"a": [1, 0.1], "b": [2, 0.1]}
    assert computed == ["a", "b"]  # "a" was read from the file, not computed again
    assert read_json(exp.out / "data" / "probe.json") == {"a": [1, 0.1], "b": [2, 0.1]}
    assert exp.per_run("probe", records[1:], compute) == {"b": [2, 0.1]}  # only the runs asked for

    def compute_beside_another_sitting(record):  # which writes "other" to the file meanwhile
        write_json(exp.out / "data" / "probe.json", {**read_json(exp.out / "data" / "probe.json"), "other": 9})
        return 3

    assert exp.per_run("probe", [{"spec": {"name": "c"}}], compute_beside_another_sitting) == {"c": 3}
    assert read_json(exp.out / "data" / "probe.json") == {"a": [1, 0.1], "b": [2, 0.1], "other": 9, "c": 3}


def test_a_runs_saved_model_is_read_back_by_its_record(tmp_path, monkeypatch):
    import torch

    from transformer import ModelConfig
    from utils import build_model, save_run

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(5, {"smoke": {}})
    config = ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=9)
    model = build_model(config, 0)
    save_run(exp.out / "models" / "a_42", model, {"model_config": config.to_dict()})
    read = exp.model({"spec": {"name": "a_42"}})
    assert all(torch.equal(x, y) for x, y in zip(read.state_dict().values(), model.state_dict().values(), strict=True))


def _screen_experiment(tmp_path, monkeypatch):
    """A smoke-preset Experiment writing under tmp_path, and a spec_for(config, seed, lr) of 4-step runs."""
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))

    def spec_for(config, seed, lr):
        spec = tiny_specs([seed], steps=4)[0]
        return dataclasses.replace(spec, name=f"{config}_lr{lr:g}_{seed}", train=dataclasses.replace(spec.train, lr=lr),
                                   labels={"method": config, "seed": seed})

    return Experiment(4, {"smoke": {}}), spec_for


def _gate_at(monkeypatch, threshold: float) -> None:
    """Make the screen's gate on the tuning stream `threshold` (a tenth of a stubbed predicting-0 error)."""
    monkeypatch.setattr(experiment, "reference_errors", lambda *args, **kwargs: {"predicting 0": 10 * threshold})


def test_screen_rates_runs_the_lower_rate_only_where_the_shared_one_left_a_config_above_the_gate(tmp_path, monkeypatch):
    from protocol import TUNING_STREAM, rate_choice_problems
    from verdicts import Gate, final_error

    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)

    _gate_at(monkeypatch, 10.0)
    lenient = Gate(improving=0.99)  # four steps at a constant rate are always "still improving" by the default
    everything_passes = exp.screen_rates(["a", "b"], spec_for, "method", 1e-2, 3e-3, lenient)
    assert everything_passes.untrained == [] and len(everything_passes.screen) == 0
    assert everything_passes.lr == {"a": 1e-2, "b": 1e-2} and everything_passes.threshold == 10.0
    assert everything_passes.shared.names == ["screen_a_lr0.01_7", "screen_b_lr0.01_7"]
    for record in everything_passes.shared:  # the protocol: a screen seed, the tuning stream, the role
        assert record["spec"]["role"] == "screen" and record["spec"]["train"]["eval_seed"] == TUNING_STREAM

    _gate_at(monkeypatch, 0.0)
    nothing_passes = exp.screen_rates(["a", "b"], spec_for, "method", 1e-2, 3e-3)
    assert nothing_passes.untrained == ["a", "b"]
    assert nothing_passes.screen.names == ["screen_a_lr0.003_7", "screen_b_lr0.003_7"]
    for config in ("a", "b"):  # no candidate reaches the gate: the lower final error wins
        candidates = [*nothing_passes.shared.where(method=config), *nothing_passes.screen.where(method=config)]
        best = min(candidates, key=final_error)
        assert nothing_passes.lr[config] == best["spec"]["train"]["lr"]
        assert nothing_passes.chosen(config).names == [best["spec"]["name"]]  # the run at the chosen rate
    assert everything_passes.chosen("a").names == ["screen_a_lr0.01_7"]
    assert nothing_passes.table.count("| a |") == 2 and "final error (tuning stream)" in nothing_passes.table
    assert (exp.out / "data" / "shared-rate.json").exists() and (exp.out / "data" / "rate-screen.json").exists()
    assert "rate screen:" in nothing_passes.stages() and "(2 runs)" in nothing_passes.stages()
    choices = json.loads((exp.out / "data" / "rate choices.json").read_text())["choices"]
    assert choices["a"]["runs"] == ["screen_a_lr0.01_7", "screen_a_lr0.003_7"]
    assert rate_choice_problems(exp.out / "data") == []


def test_screen_rates_tries_each_lower_rate_only_for_the_configs_every_earlier_rate_left_above_the_gate(
    tmp_path, monkeypatch
):
    from verdicts import final_error

    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)

    _gate_at(monkeypatch, 0.0)
    nothing_passes = exp.screen_rates(["a", "b"], spec_for, "method", 1e-2, (3e-3, 1e-3))
    assert nothing_passes.screen.names == [
        "screen_a_lr0.003_7", "screen_b_lr0.003_7", "screen_a_lr0.001_7", "screen_b_lr0.001_7"]  # fmt: skip
    for config in ("a", "b"):  # three candidates each; the lowest final error wins
        candidates = [*nothing_passes.shared.where(method=config), *nothing_passes.screen.where(method=config)]
        assert len(candidates) == 3
        best = min(candidates, key=final_error)
        assert nothing_passes.lr[config] == best["spec"]["train"]["lr"]
        assert nothing_passes.chosen(config).names == [best["spec"]["name"]]
    assert nothing_passes.table.count("| a |") == 3
    assert (exp.out / "data" / "rate-screen-2.json").exists()
    assert "(4 runs)" in nothing_passes.stages()

    # a config the first lower rate trains does not run the second: here "a" trains at 3e-3 (as the gate would say)
    trains_at = lambda results: types.SimpleNamespace(
        trained=any(r["spec"]["labels"]["method"] == "a" and r["spec"]["train"]["lr"] == 3e-3 for r in results))
    monkeypatch.setattr(experiment, "verdict", lambda results, threshold, gate: trains_at(results))
    partial = exp.screen_rates(["a", "b"], spec_for, "method", 1e-2, [3e-3, 1e-3])
    assert partial.screen.names == ["screen_a_lr0.003_7", "screen_b_lr0.003_7", "screen_b_lr0.001_7"]

    with pytest.raises(ValueError, match="screen_lr"):
        exp.screen_rates(["a"], spec_for, "method", 1e-2, ())


def test_two_groups_screened_from_different_shared_rates_keep_their_sittings_and_share_the_choices(
    tmp_path, monkeypatch
):
    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)
    _gate_at(monkeypatch, 0.0)
    exp.screen_rates(["a"], spec_for, "method", 1e-2, 3e-3)
    second = exp.screen_rates(["b"], spec_for, "method", 1e-3, 3e-4, sittings="slow-")
    data = exp.out / "data"
    assert (data / "shared-rate.json").exists() and (data / "slow-shared-rate.json").exists()
    assert (data / "slow-rate-screen.json").exists() and second.shared.names == ["screen_b_lr0.001_7"]
    choices = json.loads((data / "rate choices.json").read_text())["choices"]
    assert set(choices) == {"a", "b"} and choices["b"]["runs"] == ["screen_b_lr0.001_7", "screen_b_lr0.0003_7"]


def test_a_screen_is_built_at_the_screen_seed_only(tmp_path, monkeypatch):
    from protocol import SCREEN_SEED, screen_twin

    _, spec_for = _screen_experiment(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=f"has seed 42; build it at protocol.SCREEN_SEED={SCREEN_SEED}"):
        screen_twin(spec_for("a", 42, 1e-2))


def test_a_reports_answer_sits_under_its_title_and_feeds_the_readme_table(tmp_path):
    from report import Answer, findings_table, read_answer

    answer = Answer("loops help | a lot", "moderate", "3000 steps x 64 prompts, 3 seeds")
    report = f"# Experiment 1: scaling\n\n{answer.block()}\n## Design\n..."
    assert read_answer(report) == answer and read_answer("# Experiment 2\n\n## Design\n") is None
    for number, text in ((1, report), (2, "# Experiment 2\n\n## Design\n")):
        folder = tmp_path / "results" / f"experiment {number}"
        folder.mkdir(parents=True)
        (folder / "README.md").write_text(text)
    table = findings_table(tmp_path)
    assert "| experiment 1 | loops help \\| a lot | moderate | 3000 steps x 64 prompts, 3 seeds |" in table
    assert "| experiment 2 | not re-rendered with the verdict rule yet" in table
    with pytest.raises(ValueError, match=r"Answer.strength='certain' is not allowed; choose one of \('strong'"):
        Answer("x", "certain", "y")
    with pytest.raises(ValueError, match="Answer.text must be one non-empty line"):
        Answer("two\nlines", "weak", "y")


def test_concurrent_per_run_writers_lose_no_value(tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(4, {"smoke": {}})
    barrier = threading.Barrier(8)

    def compute(record):
        barrier.wait()  # every writer reads the file at once
        time.sleep(0.01)
        return record["spec"]["name"]

    threads = [threading.Thread(target=exp.per_run, args=("probe", [{"spec": {"name": f"run{i}"}}], compute))
               for i in range(8)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads((exp.out / "data" / "probe.json").read_text()) == {f"run{i}": f"run{i}" for i in range(8)}


def test_a_finished_record_without_its_evaluation_is_named():
    record = {"spec": {"name": "small_5_42", "train": {"b": 5}, "labels": {}}, "train": {"status": "finished"}}
    with pytest.raises(KeyError, match="run 'small_5_42' finished but has no evaluation"):
        Results([record]).extrapolation()


def test_a_budget_check_trains_the_seeds_again_with_more_steps_and_gives_the_ratio(tmp_path, monkeypatch):
    from protocol import longer_twin

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(4, {"smoke": {}})
    specs = tiny_specs((1, 2), steps=4)
    twin = longer_twin(specs[0], 2)
    assert twin.name == "tiny_x2steps_1" and twin.train.steps == 8 and twin.labels["budget"] == "x2"
    assert twin.train.lr_schedule == specs[0].train.lr_schedule and twin.model == specs[0].model
    check = exp.budget_check(specs, 2)
    sentence = str(check)
    assert check.short().startswith("2x the steps: x") and "95% CI" in check.short()
    assert len(check.errors) == len(check.longer_errors) == 2
    assert sentence.startswith("held-out last-loop error after 4 steps ") and ", after 8 steps " in sentence
    assert ": 2x the steps multiply it by x" in sentence and "95% CI" in sentence
    assert (exp.out / "data" / "tiny_x2steps_2.json").exists() and (exp.out / "data" / "budget-check.json").exists()
    with pytest.raises(ValueError, match="factor=1 must be an integer above 1"):
        longer_twin(specs[0], 1)
    # the notebook's own longer runs: the same runs when they are the same configuration
    assert str(exp.budget_check(specs, [longer_twin(spec, 2) for spec in specs])) == sentence
    other_rate = [dataclasses.replace(twin, train=dataclasses.replace(twin.train, lr=0.5))
                  for twin in (longer_twin(spec, 2) for spec in specs)]
    with pytest.raises(ValueError, match="is not 'tiny_1' with 2x the steps"):
        exp.budget_check(specs, other_rate)
    with pytest.raises(ValueError, match="give one longer run per spec"):
        exp.budget_check(specs, other_rate[:1])


def test_budget_checks_train_several_configurations_at_twice_the_steps_in_one_sitting(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(4, {"smoke": {}})
    other = [dataclasses.replace(spec, name=f"wide_{spec.train.seed}", labels={**spec.labels, "model": "wide"},
                                 model=dataclasses.replace(spec.model, hidden_dim=12))
             for spec in tiny_specs((1, 2), steps=4)]  # fmt: skip
    grid = exp.run(tiny_specs((1, 2, 3), steps=4) + other)
    sitting = dict(exp.grid)
    checks = exp.budget_checks({"tiny": tiny_specs((1, 2), steps=4), "wide": other}, 2)
    assert list(checks) == ["tiny", "wide"]
    assert checks["tiny"].longer_runs.names == ["tiny_x2steps_1", "tiny_x2steps_2"]
    assert checks["wide"].longer_runs.names == ["wide_x2steps_1", "wide_x2steps_2"]
    assert {r["spec"]["train"]["steps"] for r in checks["wide"].longer_runs} == {8}
    assert checks["tiny"].steps == 4 and checks["tiny"].factor == 2 and checks["tiny"].test.seeds == (1, 2)
    assert json.loads((exp.out / "data" / "budget-check.json").read_text())["runs"] == 4  # one sitting for all
    # the grid's records and sitting stay the report's: its tables and wall time are the grid's
    assert exp.results.names == grid.names and exp.grid == sitting
    assert "tiny_x2steps_1" in exp.computed
    with pytest.raises(ValueError, match="budget_checks: factor=1 must be an integer >= 2"):
        exp.budget_checks({"tiny": tiny_specs((1,), steps=4)}, 1)
    with pytest.raises(ValueError, match=r"budget_checks: groups must map each configuration .*; empty: \['tiny'\]"):
        exp.budget_checks({"tiny": []})


def test_primary_checks_read_the_notebooks_own_longer_runs_where_it_names_them(tmp_path, monkeypatch):
    from plan import Primaries

    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("BACKEND", "inline")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(4, {"smoke": {}})
    base = {s.train.seed: s for s in tiny_specs((1, 2, 3), steps=4)}
    wide = {seed: dataclasses.replace(spec, name=f"wide_{seed}", labels={**spec.labels, "model": "wide"},
                                      model=dataclasses.replace(spec.model, hidden_dim=12))
            for seed, spec in base.items()}  # fmt: skip
    spec_for = lambda key, seed: (base if key == "tiny" else wide)[seed]
    # the notebook's own longer runs (Plan.spec with steps_factor): longer_twin's names, other labels
    own = lambda key, seed, factor=2: dataclasses.replace(
        spec_for(key, seed), name=f"{key}_x{factor}steps_{seed}",
        labels={"model": f"{key}, {factor}x steps", "seed": seed},
        train=dataclasses.replace(spec_for(key, seed).train, steps=4 * factor))
    exp.run(list(base.values()) + list(wide.values()))
    committed = exp.run([own("tiny", 1), own("tiny", 2)], sitting="budget-check")  # the reference's, trained before
    primaries = Primaries([("wide", "tiny")], ["Is wide lower than tiny?"], (1, 2), (3,), (1, 2))
    with pytest.raises(ValueError, match="tiny_x2steps_1.json holds a run with another configuration"):
        exp.primary_checks(primaries, spec_for)  # longer_twin's labels: the committed runs would be replaced
    checks = exp.primary_checks(primaries, spec_for, own)
    assert checks["tiny"].longer_runs.names == ["tiny_x2steps_1", "tiny_x2steps_2"]
    assert checks["wide"].longer_runs.names == ["wide_x2steps_1", "wide_x2steps_2"]
    wall = lambda results: list(results.values(lambda r: r["train"]["wall_time_s"]))
    assert wall(checks["tiny"].longer_runs) == wall(committed)  # read, not trained again
    assert json.loads((exp.out / "data" / "primary-checks.json").read_text())["computed"] == 2  # wide's only
    assert checks["wide"].factor == 2 and checks["wide"].test.seeds == (1, 2)
    with pytest.raises(ValueError, match=r"primary_checks: \['wide_x3steps_1', .*\] do not train 2x their run's"):
        exp.primary_checks(primaries, spec_for, lambda key, seed: own(key, seed, 3))
    assert not (exp.out / "data" / "tiny_x3steps_1.json").exists()  # nothing trained


def test_sweep_rates_runs_every_candidate_for_every_config_and_records_the_choice(tmp_path, monkeypatch):
    from protocol import TUNING_STREAM, rate_choice_problems
    from verdicts import final_error

    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)
    _gate_at(monkeypatch, 0.0)  # no candidate reaches the gate: each config takes its lowest final error
    sweep = exp.sweep_rates(["a", "b"], spec_for, "method", (1e-2, 3e-3, 1e-3))
    assert sweep.runs.names == [f"screen_{c}_lr{lr:g}_7" for c in ("a", "b") for lr in (1e-2, 3e-3, 1e-3)]
    for record in sweep.runs:  # the protocol: the screen seed, the tuning stream, the role
        assert record["spec"]["role"] == "screen" and record["spec"]["train"]["eval_seed"] == TUNING_STREAM
    for config in ("a", "b"):
        best = min(sweep.runs.where(method=config), key=final_error)
        assert sweep.lr[config] == best["spec"]["train"]["lr"] and sweep.chosen(config).names == [best["spec"]["name"]]
    assert sweep.table.count("| a |") == 3 and sweep.threshold == 0.0
    assert (exp.out / "data" / "rate-sweep.json").exists() and rate_choice_problems(exp.out / "data") == []
    assert "peak lr in 0.01, 0.003, 0.001 for each of 2 configurations, screen seed 7" in sweep.describe()


def test_sweep_rates_names_bad_input_before_any_training(tmp_path, monkeypatch):
    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=r"candidates=\(0.01,\) must be at least 2 distinct peak rates > 0"):
        exp.sweep_rates(["a"], spec_for, "method", [1e-2])
    with pytest.raises(ValueError, match=r"candidates=\(0.01, -0.001\) must be at least 2 distinct"):
        exp.sweep_rates(["a"], spec_for, "method", (1e-2, -1e-3))
    with pytest.raises(ValueError, match=r"rule='best' is not allowed; choose one of \('fastest', 'lowest'\)"):
        exp.sweep_rates(["a"], spec_for, "method", (1e-2, 1e-3), rule="best")
    with pytest.raises(ValueError, match=r"configs=\['a', 'a'\] must be distinct names"):
        exp.sweep_rates(["a", "a"], spec_for, "method", (1e-2, 1e-3))
    with pytest.raises(ValueError, match="spec_for must label each run with its config under 'model'"):
        exp.sweep_rates(["a"], spec_for, "model", (1e-2, 1e-3))
    unnamed = lambda config, seed, lr: dataclasses.replace(spec_for(config, seed, lr), name=f"{config}_{seed}")
    with pytest.raises(ValueError, match="spec_for gives two runs one name"):
        exp.sweep_rates(["a"], unnamed, "method", (1e-2, 1e-3))
    assert not (exp.out / "data").exists()  # nothing trained


def test_budget_ladder_climbs_each_config_until_it_passes_and_trains_the_grid_at_the_largest_need(
    tmp_path, monkeypatch
):
    exp, spec_for = _screen_experiment(tmp_path, monkeypatch)
    lr = {"a": 1e-2, "b": 3e-3}

    # "a" passes at the first rung, "b" first at 4x (as the gate would say): b climbs alone
    passes = lambda results: types.SimpleNamespace(trained=any(
        r["spec"]["labels"]["method"] == "a" or r["spec"]["train"]["steps"] >= 16 for r in results))
    monkeypatch.setattr(experiment, "verdict", lambda results, threshold, gate: passes(results))
    _gate_at(monkeypatch, 0.5)
    ladder = exp.budget_ladder(["a", "b"], spec_for, "method", lr, factors=(1, 2, 4, 8))
    assert ladder.runs.names == ["screen_a_lr0.01_7", "screen_b_lr0.003_7", "screen_b_lr0.003_x2steps_7",
                                 "screen_b_lr0.003_x4steps_7"]  # fmt: skip
    assert ladder.passed_at == {"a": 1, "b": 4} and ladder.factor == 4 and ladder.all_passed
    assert ladder.table.splitlines()[2].endswith("| - | - | - |")  # a needed no longer rung
    assert "16 steps (4x): final error (step under the gate)" in ladder.table
    assert "steps 4 (1x), 8 (2x), 16 (4x), 32 (8x)" in ladder.describe()

    monkeypatch.setattr(experiment, "verdict", lambda results, threshold, gate: types.SimpleNamespace(trained=False))
    never = exp.budget_ladder(["a"], spec_for, "method", lr, factors=(1, 2))
    assert never.passed_at == {"a": None} and never.factor == 2 and not never.all_passed  # the top rung

    with pytest.raises(ValueError, match=r"factors=\(2, 4\) must be rising integers starting at 1"):
        exp.budget_ladder(["a"], spec_for, "method", lr, factors=(2, 4))
    with pytest.raises(ValueError, match=r"factors=\(1, 4, 2\) must be rising integers starting at 1"):
        exp.budget_ladder(["a"], spec_for, "method", lr, factors=(1, 4, 2))
    with pytest.raises(ValueError, match=r"must give a peak rate > 0 for every config; missing or bad: \['c'\]"):
        exp.budget_ladder(["a", "c"], spec_for, "method", lr)


def test_heldout_baselines_are_divided_by_the_tasks_error_scale(tmp_path, monkeypatch):
    from tasks import SparseLinearRegression
    from utils import TrainConfig

    monkeypatch.setenv("PRESET", "smoke")
    exp = Experiment(9, {"smoke": {}})
    task = SparseLinearRegression(4, sparsity=2)
    (tokens, ys), errors = exp.heldout_baselines(task, TrainConfig(steps=1, n_points=6, eval_prompts=64), ["averaging"])
    # position 0 predicts 0: the error of predicting 0, divided by the sparsity (as the runs' errors are), not by d
    assert errors["averaging"][0] == pytest.approx(float(ys[:, 0].double().square().mean() / 2))


def test_the_comparison_figure_draws_training_extrapolation_and_each_loop_per_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("PRESET", "smoke")
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path))
    exp = Experiment(7, {"smoke": {}})

    def run(seed, steps=4):
        r = record("small", 2, seed)
        r["spec"]["train"]["steps"] = steps
        r["train"]["loss"] = [1.0 / (k + seed) for k in range(steps)]
        r["train"]["evals"] = [{"step": 0, "last_loop": 1.0}, {"step": steps, "last_loop": 0.1 * seed}]
        r["loop_errors"] = [0.5, 0.1 * seed]
        return r

    groups = {"a": Results([run(1), run(2)]), "a, 2x steps": Results([run(1, steps=8)])}
    for threshold in (None, 0.1):
        path = exp.comparison_figure(groups, 2, [1, 5, 10], validation_threshold=threshold, dashed=["a, 2x steps"])
        assert path == exp.out / "comparison.svg" and path.read_bytes().startswith(b"<?xml")
    assert not experiment.plots.plt.get_fignums()  # closed
