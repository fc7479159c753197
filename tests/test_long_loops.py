"""Loops past training (`long_loops.py`): the field's numbers and Experiment 12's pass marks on synthetic curves (a
curve that keeps falling to 1.5 b-bar and then holds passes, a flat one and one that blows up do not), the spread
across seeds and its paired bootstrap, the traces of a trained model and halting on them, and the refusals."""

import math
import re

import numpy as np
import pytest
import torch

from long_loops import (
    PASS_MARKS,
    bootstrap_sd,
    deq_mark,
    field_numbers,
    field_table,
    halting_panel,
    halting_summary,
    loop_at,
    marks_table,
    pass_marks,
    precision_cell,
    prompt_sets,
    solve_at,
    solve_halting,
    solve_trace,
    spread_ratio,
    trace_long_loops,
    trace_precisions,
)
from plots import fmt
from tasks import LinearRegression, NoisyLinearRegression
from transformer import ModelConfig
from utils import build_model
from verdicts import Gate, verdict

SEEDS = (42, 451, 1984, 7000, 8000, 9000)
MEAN_B = 10
LOOPS = np.arange(1, 1001)


def synthetic(shape, noise=0.05, seed=0):
    """One curve per seed: a seed's own scale times `shape` (loops 1..1000) times a little noise per loop."""
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.5, 2.0, len(SEEDS))
    return [list(scale * shape * np.exp(noise * rng.standard_normal(len(LOOPS)))) for scale in scales]


FALLING = 0.1 + np.exp(-LOOPS / MEAN_B)  # keeps falling past b-bar, then holds at 0.1
FLAT = np.ones(len(LOOPS))
BLOWING_UP = LOOPS / MEAN_B  # lowest at loop 1, then grows without bound


def test_a_curve_that_keeps_falling_to_one_and_a_half_b_bar_and_holds_passes():
    numbers = field_numbers(synthetic(FALLING), SEEDS, MEAN_B)
    low, high = numbers.improvement.interval(0.95)
    assert high < 1 and numbers.keeps_improving  # err(15) / err(10) is about 0.69 on every seed
    assert numbers.improvement.geometric_mean == pytest.approx((0.1 + math.exp(-1.5)) / (0.1 + math.exp(-1)), rel=0.1)
    assert numbers.hold[10] <= PASS_MARKS["hold_10"] and numbers.hold[100] <= PASS_MARKS["hold_100"]
    assert numbers.best_loop > 50 and numbers.best_over_mean_b == numbers.best_loop / MEAN_B
    marks = pass_marks("falling", numbers)
    assert [mark.met for mark in marks] == [True, True, True] and len(marks) == 3


def test_a_flat_curve_does_not_keep_improving_and_one_that_blows_up_does_not_hold():
    flat = field_numbers(synthetic(FLAT), SEEDS, MEAN_B)
    low, high = flat.improvement.interval(0.95)
    assert low < 1 < high and not flat.keeps_improving  # the lowest loop of a flat curve is noise
    assert [mark.met for mark in pass_marks("flat", flat)] == [False, True, True]  # it holds, it does not improve
    blowing_up = field_numbers(synthetic(BLOWING_UP), SEEDS, MEAN_B)
    assert blowing_up.best_loop == 1 and blowing_up.improvement.geometric_mean == pytest.approx(1.5, rel=0.1)
    assert blowing_up.hold[10] == pytest.approx(100, rel=0.1) and blowing_up.hold[100] == pytest.approx(1000, rel=0.1)
    assert [mark.met for mark in pass_marks("blowing up", blowing_up)] == [False, False, False]


def test_a_loop_that_is_not_finite_counts_as_the_worst_error_and_a_trace_too_short_is_not_measurable():
    curves = synthetic(FALLING)
    curves[2] = curves[2][:400] + [None] * 600  # one seed blew up after loop 400
    numbers = field_numbers(curves, SEEDS, MEAN_B)
    assert numbers.hold[100] == math.inf and numbers.spread is not None  # loop 100 is still finite on every seed
    assert [mark.word for mark in pass_marks("one seed blew up", numbers)][2] == "not met"
    short = field_numbers([curve[:200] for curve in synthetic(FALLING)], SEEDS, MEAN_B)
    assert short.hold[100] is None and pass_marks("short", short)[2].word == "not measurable"
    one_seed = field_numbers(synthetic(FALLING)[:1], SEEDS[:1], MEAN_B)
    assert one_seed.spread is None and pass_marks("one seed", one_seed)[0].word == "not measurable"


def test_the_spread_across_seeds_and_its_paired_bootstrap():
    sd, (low, high) = bootstrap_sd([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert sd == pytest.approx(np.std([0, 1, 2, 3, 4, 5], ddof=1)) and low < sd < high
    assert bootstrap_sd([1.0, 2.0, 4.0]) == bootstrap_sd([1.0, 2.0, 4.0])  # a fixed seed: the interval repeats
    assert bootstrap_sd([1.0, 2.0]) == (pytest.approx(math.sqrt(0.5)), None)  # two seeds: one spread, no interval
    assert bootstrap_sd([1.0]) == (None, None) and bootstrap_sd([1.0, 2.0, math.inf]) == (None, None)
    rng = np.random.default_rng(3)
    fixed = {seed: float(np.exp(rng.normal(0, 0.4))) for seed in SEEDS}
    # half the spread of fixed b on the same seeds, seed by seed: the paired bootstrap keeps the pairing, so its
    # interval is exactly 0.5 (an unpaired one would scatter)
    halved = {seed: 2.0 * math.sqrt(error) for seed, error in fixed.items()}
    ratio = spread_ratio(halved, fixed)
    assert ratio.ratio == pytest.approx(0.5) and ratio.interval == pytest.approx((0.5, 0.5)) and ratio.resolved
    noisy = {seed: float(np.exp(rng.normal(0, 0.3))) for seed in SEEDS}
    unresolved = spread_ratio(noisy, fixed)
    assert unresolved.interval[0] < 1 < unresolved.interval[1] and not unresolved.resolved
    assert spread_ratio({1: 1.0}, {1: 2.0}).ratio is None  # one shared seed: no spread
    two = spread_ratio({1: 1.0, 2: 2.0}, {1: 1.0, 2: 4.0})
    assert two.ratio == pytest.approx(0.5) and two.interval is None and not two.resolved
    assert "no bootstrap interval; not resolved with 2 seeds" in pass_marks("two", field_numbers(
        synthetic(FALLING)[:2], SEEDS[:2], MEAN_B), two)[-1].measured  # fmt: skip
    assert spread_ratio({1: 1.0, 2: None, 3: 2.0}, {1: 1.0, 2: 4.0, 3: 3.0}).ratio is None  # beyond the trace
    numbers = field_numbers(synthetic(FALLING), SEEDS, MEAN_B)
    marks = pass_marks("half", numbers, ratio, "the same state at fixed b")
    assert marks[-1].met is True and "resolved" in marks[-1].measured
    assert pass_marks("not half", numbers, unresolved)[-1].met is (unresolved.ratio <= 0.5)
    table = marks_table(marks)
    assert table.count("\n") == 5 and "| half | keeps improving to 1.5 b-bar" in table


def test_the_field_table_names_every_number():
    table = field_table({"falling": field_numbers(synthetic(FALLING), SEEDS, MEAN_B)})
    assert "lowest loop / b-bar" in table and "err(1.5 b-bar) / err(b-bar)" in table and "| falling | 10 |" in table


def test_loop_at_and_the_refusals():
    assert loop_at(1.5, 9.71) == 15 and loop_at(100, 9.71) == 971 and loop_at(0.01, 1) == 1
    with pytest.raises(ValueError, match=re.escape("loop_at factor=0 must be a finite number > 0")):
        loop_at(0, 10)
    with pytest.raises(ValueError, match=re.escape("loop_at mean_b=0.5 must be a finite number >= 1")):
        loop_at(1, 0.5)
    with pytest.raises(ValueError, match=re.escape("the curves end at loop 12, before 1.5 x b-bar = loop 15")):
        field_numbers([[1.0] * 12] * 2, SEEDS[:2], MEAN_B)
    with pytest.raises(ValueError, match=re.escape("the curves have different lengths [20, 30]")):
        field_numbers([[1.0] * 20, [1.0] * 30], SEEDS[:2], MEAN_B)


def test_the_deep_equilibrium_mark():
    threshold, gate = 0.1, Gate()
    trained = verdict([{"train": {"status": "finished", "evals": [{"last_loop": 0.05, "step": 10}]},
                        "spec": {"train": {"steps": 10, "lr_schedule": "cosine", "warmup": 0.0}}}], threshold, gate)
    assert deq_mark("DEQ", [0.01, 0.03], trained).met is True
    assert deq_mark("DEQ", [0.01, 0.06], trained).met is False
    untrained = verdict([{"train": {"status": "finished", "evals": [{"last_loop": 0.5, "step": 10}]},
                          "spec": {"train": {"steps": 10, "lr_schedule": "cosine", "warmup": 0.0}}}], threshold, gate)
    refused = deq_mark("DEQ", [0.01], untrained)
    assert refused.met is False and "did not learn" in refused.measured
    # a configuration that did not pass the gate meets no mark, however flat its curve
    flat = pass_marks("flat, untrained", field_numbers(synthetic(FLAT), SEEDS, MEAN_B), gate=untrained)
    assert [mark.met for mark in flat] == [False] * 3 and all("did not learn" in mark.measured for mark in flat)
    assert [m.met for m in pass_marks("trained", field_numbers(synthetic(FALLING), SEEDS, MEAN_B), gate=trained)] == [
        True] * 3  # fmt: skip


SMALL = dict(n_dims=3, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=9, final_norm=True)


def contracting_model():
    model = build_model(ModelConfig(**SMALL), 1).double()
    with torch.no_grad():
        model.stack.layers[0].mlp[2].weight.mul_(0.2)  # a loop that contracts: a fixed point to find
    return model


def double(sets):
    return {name: (tokens.double(), ys.double()) for name, (tokens, ys) in sets.items()}


def test_prompt_sets_name_the_harder_and_easier_sets():
    task = LinearRegression(3)
    sets = prompt_sets(task, 8, 5, 11, short_points=3, noisy=NoisyLinearRegression(3, noise_std=0.5), few_dims=1)
    assert list(sets) == ["held-out", "N=2", "label noise 0.5", "1 active dims"]
    assert sets["N=2"][0].shape == (8, 5, 3) and (sets["1 active dims"][0][:, 0::2, 1:] == 0).all()
    assert list(prompt_sets(task, 8, 5, 11)) == ["held-out"]


def test_the_long_trace_and_halting_on_the_state_update_and_on_the_solve_residual():
    model = contracting_model()
    sets = double(prompt_sets(LinearRegression(3), 6, 5, 11, short_points=3))
    traced = trace_long_loops(model, sets, 40, (0.1, 1e-3), 3)
    held = traced["held-out"]
    assert len(held["error"]) == len(held["update"]) == 40 and held["update"][0] == pytest.approx(1.0)
    assert held["update"][-1] < held["update"][1]  # the contracting loop settles
    assert held["halting"]["0.1"]["loops"] <= held["halting"]["0.001"]["loops"] <= 40
    summary = halting_summary([traced, traced], 0.1)
    assert summary.loops == held["halting"]["0.1"]["loops"] and summary.error == held["halting"]["0.1"]["error"]
    assert summary.best == pytest.approx(min(held["error"])) and summary.frontier >= summary.best
    # the solve's trace: each evaluation's residual and prediction; its last prediction is what the solve returns
    tokens, ys = sets["held-out"]
    trace = solve_trace(model, tokens, 12)
    assert trace["updates"].shape == trace["predictions"].shape == (12, 6)
    with torch.no_grad():  # with gradient the implicit solve adds one more evaluation to reconnect the graph
        preds, info = model.equilibrium(tokens, 12, 0.0)
    torch.testing.assert_close(trace["predictions"][-1], preds[0, :, -1])
    assert float(trace["updates"][-1].max()) == pytest.approx(info["residual"])
    solved = solve_halting(model, sets, 12, (0.1, 1e-6), 3)
    assert len(solved["held-out"]["residual"]) == 12 and solved["held-out"]["residual"][-1] < 0.1
    assert solved["held-out"]["halting"]["0.1"]["loops"] < solved["held-out"]["halting"]["1e-06"]["loops"]
    at = solve_at(model, (tokens, ys), (3, 12), 1e-3, 3)
    assert set(at) == {"3", "12"} and at["12"]["residual"] <= at["3"]["residual"]


def test_a_model_is_traced_in_both_precisions_and_the_cell_says_why_a_value_is_missing():
    model = build_model(ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=9), 0)
    tokens, ys = prompt_sets(LinearRegression(2), 4, 5, 3)["held-out"]
    traced = trace_precisions(model, tokens, ys, [2, 6], 2)
    assert set(traced) == {"float32", "float16"}
    fp32 = traced["float32"]
    assert len(fp32["error"]) == len(fp32["max_abs_state"]) == 2 and all(x > 0 for x in fp32["max_abs_state"])
    assert "error" in traced["float16"] or "unsupported" in traced["float16"]  # a CPU may lack the fp16 kernel
    assert precision_cell([fp32, fp32], "error", 1) == fmt(fp32["error"][1])  # the median over runs
    assert precision_cell([{"error": [None, 1.0]}, {"error": [0.5, 2.0]}], "error", 0) == "non-finite on 1 of 2"
    assert precision_cell([{"unsupported": "no kernel"}], "error", 0) == "not run (no CPU kernel)"
    assert precision_cell([], "error", 0) == ""


def test_the_halting_panel_draws_fixed_b_and_each_tolerances_halting():
    import matplotlib

    matplotlib.use("Agg")
    from plots import plt, subplots

    def trace(scale):  # errors falling with the loop, None where one was not finite
        return {"held-out": {"error": [scale / b if b != 3 else None for b in range(1, 6)],
                             "halting": {"0.1": {"loops": 2.0 * scale, "error": 0.5 * scale},
                                         "0.01": {"loops": 4.0 * scale, "error": 0.25 * scale}}}}

    fig, axes = subplots(1, 1)
    halting_panel(axes[0, 0], [trace(1.0), trace(1.5)], (0.1, 0.01), "config", "red", linestyle="--")
    fixed, halted = axes[0, 0].get_lines()
    assert list(fixed.get_xdata()) == [1, 2, 3, 4, 5] and fixed.get_ydata()[0] == pytest.approx(1.25)
    assert math.isnan(fixed.get_ydata()[2]) and fixed.get_linestyle() == "--"  # not finite in every run
    assert list(halted.get_xdata()) == [2.5, 5.0] and list(halted.get_ydata()) == [0.625, 0.3125]
    assert halted.get_label() == "config" and fixed.get_label().startswith("_")  # one legend entry per configuration
    plt.close(fig)  # other tests check that every figure they draw is closed
