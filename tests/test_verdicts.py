"""The convergence gate, the did-the-models-learn verdicts and paired seed comparisons."""

import pytest
from conftest import tiny_specs

from tasks import LinearRegression
from utils import TrainConfig
from verdicts import (
    Comparisons,
    Gate,
    learned_table,
    paired,
    reference_errors,
    reference_names,
    steps_to_gate,
    tail_change,
    trained_groups,
    tune_rates,
    verdict,
)


def run(seed, errors, schedule="constant", status="finished", steps=100):
    """A record whose held-out last-loop error is `errors[k]` at step k * steps / (len - 1)."""
    spec = tiny_specs([seed], steps=steps)[0].to_dict()
    spec["train"]["lr_schedule"] = schedule
    last = max(1, len(errors) - 1)
    evals = [{"step": round(k * steps / last), "reference": e, "last_loop": e} for k, e in enumerate(errors)]
    return {"spec": spec, "train": {"status": status, "evals": evals, "loss": [1.0]}}


def test_gate_settings_are_checked_by_name():
    with pytest.raises(ValueError, match=r"Gate.reference='median' is not allowed; choose one of \('predicting 0'"):
        Gate(reference="median")
    with pytest.raises(ValueError, match=r"Gate.fraction"):
        Gate(fraction=0)
    with pytest.raises(ValueError, match=r"Gate.tail"):
        Gate(tail=1.5)
    with pytest.raises(ValueError, match=r"the gate's reference 'averaging' is not among"):
        Gate(reference="averaging").threshold({"predicting 0": 1.0})
    assert Gate().threshold({"predicting 0": 2.0}) == pytest.approx(0.2)


def test_reference_errors_on_unit_variance_linear_regression():
    train = TrainConfig(steps=1, n_points=12, eval_prompts=2048)
    errors = reference_errors(LinearRegression(4), train)
    assert errors["least squares"] < 1e-6  # 11 noiseless examples determine w in 4 dimensions
    assert errors["predicting 0"] == pytest.approx(1.0, abs=0.1)  # E[y^2] / d = 1
    # averaging (w estimated by mean of y x) is biased by the spread of the sample covariance
    assert 0.25 < errors["averaging"] / errors["predicting 0"] < 0.6


def test_steps_to_gate_and_the_tail():
    record = run(1, [1.0, 0.5, 0.2, 0.08, 0.05, 0.04])
    assert steps_to_gate(record, 0.1) == 60 and steps_to_gate(record, 0.01) is None
    assert tail_change(record) == pytest.approx(0.2)  # 0.05 at step 80 -> 0.04 at 100
    assert tail_change(run(1, [1.0, 0.5, 0.04], schedule="cosine")) is None  # a decaying tail always looks flat
    assert tail_change(run(1, [1.0, 0.5], status="diverged")) is None


def test_verdicts():
    threshold = 0.1
    flat = [run(s, [1.0, 0.5, 0.2, 0.06, 0.05, 0.05]) for s in (1, 2, 3)]
    assert verdict(flat, threshold).status == "trained" and verdict(flat, threshold).passed == 3
    improving = flat[:2] + [run(3, [1.0, 0.5, 0.2, 0.1, 0.09, 0.06])]
    assert verdict(improving, threshold).status == "not trained (still improving)"
    split = [run(1, [1.0, 0.02]), run(2, [1.0, 0.02]), run(3, [1.0, 0.5])]  # mean 0.18: one seed stayed
    result = verdict(split, threshold)
    assert (result.status, result.passed, result.errors) == ("did not learn at this budget", 2, (0.02, 0.02, 0.5))
    cosine = [run(s, [1.0, 0.5, 0.2, 0.05], schedule="cosine") for s in (1, 2)]
    assert verdict(cosine, threshold).trained
    assert verdict([run(1, [1.0], status="diverged")], threshold).status == "no finished run"


def test_learned_table_lists_every_seed_and_the_references():
    references = {"least squares": 0.0, "averaging": 0.4, "predicting 0": 1.0}
    groups = {"a": [run(s, [1.0, 0.05, 0.05]) for s in (1, 2)], "b": [run(1, [1.0, 0.5, 0.45])]}
    table = learned_table(groups, references)
    assert table.startswith("Gate: mean held-out last-loop error over seeds at most 0.1 (0.1 x predicting 0, 1)")
    assert "On the same prompts: least squares 0, averaging 0.4, predicting 0 1.\n" in table
    assert "| a | 0.05, 0.05 | 0.05 | 0.12 | 0.05 | 2 of 2 | +0%, +0% | trained |" in table
    assert "| b | 0.45 | 0.45 | 1.1 | 0.45 | 0 of 1 | -10% | did not learn at this budget |" in table
    assert trained_groups(groups, references) == ["a"]


def test_paired_comparisons_match_seeds_and_need_every_seed_to_agree():
    a = [run(s, [1.0, e]) for s, e in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4))]
    b = [run(s, [1.0, e]) for s, e in ((1, 0.2), (2, 0.4), (3, 0.6))]  # seed 4 missing: left out
    result = paired(a, b)
    assert result.seeds == (1, 2, 3) and result.ratios == pytest.approx((0.5, 0.5, 0.5))
    assert result.verdict() == "lower on all 3 seeds"
    assert paired(b, a).verdict() == "higher on all 3 seeds"
    mixed = [run(s, [1.0, e]) for s, e in ((1, 0.1), (2, 0.5), (3, 0.3))]
    assert paired(mixed, b).verdict() == "too close to tell (2 of 3 seeds lower)"
    assert paired(a[:2], b[:2]).verdict() == "too close to tell (2 of 2 seeds lower)"  # 2 seeds never suffice


def test_comparisons_draw_verdicts_only_between_trained_configurations():
    trained = lambda errors: [run(s, [1.0, e, e]) for s, e in zip((1, 2, 3), errors, strict=True)]
    groups = {
        ("a", 5): trained((0.01, 0.02, 0.03)),
        ("b", 5): trained((0.02, 0.04, 0.06)),
        ("stuck", 5): trained((0.5, 0.6, 0.7)),  # mean above the gate
        ("screened", 5): [run(1, [1.0, 0.01, 0.01])],  # trained, on one seed
    }
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    compared = Comparisons(status, lambda key: groups[key], label=lambda key: f"{key[0]} at b={key[1]}",
                           excluded={("screened", 5): "screened with one seed"})
    assert compared(("stuck", 5), ("a", 5)) == "not compared: stuck at b=5 did not learn at this budget"
    assert compared(("screened", 5), ("stuck", 5)) == (
        "not compared: stuck at b=5 did not learn at this budget; screened at b=5 screened with one seed")
    assert compared.drawn == []  # nothing drawn when either side is not compared
    assert compared(("a", 5), ("b", 5)) == (
        "lower on all 3 seeds (a/b per seed 0.5, 0.5, 0.5 (a lower on 3 of 3 seeds))")
    assert compared(("b", 5), ("a", 5), lambda r: r["spec"]["train"]["seed"], prefix="b against a: ") == (
        "b against a: too close to tell (0 of 3 seeds lower) (a/b per seed 1, 1, 1 (a lower on 0 of 3 seeds))")
    assert [p.verdict() for p in compared.drawn] == ["lower on all 3 seeds", "too close to tell (0 of 3 seeds lower)"]
    assert compared.count() == ("2 paired verdicts were drawn (1 of them unanimous across seeds); every other "
                                "comparison involves a configuration that did not pass the gate.")
    assert compared.count("a model that did not pass its class's gate").endswith(
        "every other comparison involves a model that did not pass its class's gate.")
    assert compared.reference(("a", 5), "a at b=5 (the recipe's)") == (
        "- **Reference configuration** a at b=5 (the recipe's): trained, 3 of 3 seeds under the gate.")
    assert Comparisons(status, groups.get)(("a", 5), ("stuck", 5)) == (
        "not compared: ('stuck', 5) did not learn at this budget")  # the default label is str(key)


def test_paired_unanimity_and_a_verdicts_line():
    a = [run(s, [1.0, e, e]) for s, e in ((1, 0.1), (2, 0.2), (3, 0.3))]
    b = [run(s, [1.0, e]) for s, e in ((1, 0.2), (2, 0.4), (3, 0.6))]
    assert paired(a, b).unanimous and paired(b, a).unanimous
    assert not paired(a, a).unanimous  # equal on every seed: neither lower nor higher
    assert not paired(a[:2], b[:2]).unanimous  # 2 seeds never suffice
    assert verdict(a, 0.5).describe() == "trained, 3 of 3 seeds under the gate"
    assert verdict(a, 0.15).describe() == "did not learn at this budget, 1 of 3 seeds under the gate"


def test_reference_names_add_the_gates_own_estimator_once():
    assert reference_names(Gate()) == ("least squares", "averaging")
    assert reference_names(Gate(reference="averaging", fraction=0.5)) == ("least squares", "averaging")
    assert reference_names(Gate(reference="3-nearest neighbours", fraction=0.5)) == (
        "least squares", "averaging", "3-nearest neighbours")


def test_tune_rates_takes_the_fewest_steps_then_the_lower_error_and_lists_every_candidate():
    def tuning_run(lr, errors, status="finished"):
        record = run(42, errors, status=status)
        record["spec"]["train"]["lr"] = lr
        return record

    fast = tuning_run(1e-2, [1.0, 0.05, 0.04])  # under 0.1 at step 50
    slow = tuning_run(3e-3, [1.0, 0.5, 0.01])  # under 0.1 at step 100, with a lower final error
    flat = tuning_run(1e-3, [1.0, 0.6, 0.5])
    lower = tuning_run(3e-4, [1.0, 0.6, 0.4])
    diverged = tuning_run(3e-2, [1.0, 0.01], status="diverged")
    chosen, table = tune_rates({"a": [slow, fast, diverged], "b": [flat, lower, diverged]}, 0.1)
    assert chosen == {"a": 1e-2, "b": 3e-4}
    assert "| a | 0.01 | 50 | 0.04 | yes |" in table and "| a | 0.003 | 100 | 0.01 |  |" in table
    assert "| b | 0.001 | not reached | 0.5 |  |" in table and "| b | 0.0003 | not reached | 0.4 | yes |" in table
    assert "| a | 0.03 | diverged |  |  |" in table
    assert "final error (tuning stream)" in table
    assert "final error (held-out set)" in tune_rates({"a": [fast]}, 0.1, validated_on="held-out set")[1]


def test_tune_rates_lowest_rule_ranks_by_the_final_error_alone():
    def tuning_run(lr, errors, status="finished"):
        record = run(42, errors, status=status)
        record["spec"]["train"]["lr"] = lr
        return record

    fast = tuning_run(1e-2, [1.0, 0.05, 0.04])  # under the gate first, ends higher
    slow = tuning_run(3e-3, [1.0, 0.5, 0.01])
    diverged = tuning_run(3e-2, [1.0, 0.001], status="diverged")
    assert tune_rates({"a": [fast, slow, diverged]}, 0.1)[0] == {"a": 1e-2}
    chosen, table = tune_rates({"a": [fast, slow, diverged]}, 0.1, rule="lowest")
    assert chosen == {"a": 3e-3}
    assert "| a | 0.003 | 100 | 0.01 | yes |" in table


def test_tune_rates_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="tune_rates rule.*'fastest', 'lowest'"):
        tune_rates({}, 0.1, rule="best")
