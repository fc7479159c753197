"""The convergence gate, the did-the-models-learn verdicts and paired seed comparisons."""

import numpy as np
import pytest
from conftest import tiny_specs

from plots import fmt
from tasks import LinearRegression
from utils import TrainConfig
from verdicts import (
    Comparisons,
    Gate,
    PairedTest,
    called,
    describe_test,
    holm,
    learned_table,
    paired,
    reference_errors,
    reference_names,
    steps_to_gate,
    t_quantile,
    t_two_sided_p,
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
    assert "one seed left at predicting 0 fails its configuration" in table and "still improving" in table
    decaying = {"a": [run(s, [1.0, 0.05, 0.05], schedule="cosine") for s in (1, 2)]}
    table = learned_table(decaying, references)  # no tail was judged: the clause and its column are left out
    assert "still improving" not in table and "change over the tail" not in table
    assert "| a | 0.05, 0.05 | 0.05 | 0.12 | 0.05 | 2 of 2 | trained |" in table


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
        ("c", 5): trained((0.0201, 0.0399, 0.06)),
        ("stuck", 5): trained((0.5, 0.6, 0.7)),  # mean above the gate
        ("screened", 5): [run(1, [1.0, 0.01, 0.01])],  # trained, on one seed
    }
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    compared = Comparisons(status, lambda key: groups[key], label=lambda key: f"{key[0]} at b={key[1]}",
                           excluded={("screened", 5): "screened with one seed"},
                           primary=[(("a", 5), ("b", 5)), (("stuck", 5), ("b", 5))])
    stuck = "stuck at b=5 did not learn at this budget (mean 0.6 against the gate 0.1, 0 of 3 seeds under)"
    assert compared(("stuck", 5), ("a", 5)) == f"not compared: {stuck}"  # a gate contrast says how far
    assert compared(("screened", 5), ("stuck", 5)) == f"not compared: {stuck}; screened at b=5 screened with one seed"
    assert compared(("stuck", 5), ("b", 5)).startswith("not compared")  # a primary that cannot be drawn
    assert compared.drawn == []  # nothing drawn when either side is not compared
    text = "\n".join([
        compared(("a", 5), ("b", 5)),  # primary: the same ratio on every seed, called at once
        compared(("b", 5), ("a", 5), lambda r: r["spec"]["train"]["seed"], prefix="b against a: "),  # exploratory
        compared(("c", 5), ("b", 5)),  # exploratory: a ratio within 0.5% of 1 on every seed
    ])
    assert "\u27e6verdict" in text  # placeholders until the families are complete
    lines = compared.resolve(text).split("\n")
    assert lines[0] == (
        "lower: x0.5 (95% CI 0.5 to 0.5; per seed 0.5, 0.5, 0.5; p = 0, Holm 0 in the primary family of 1)")
    assert lines[1].startswith("b against a: equal within x0.8 to x1.25: x1 (90% CI 1 to 1")
    assert lines[2].startswith("equal within x0.8 to x1.25: x1 (90% CI")
    assert compared.words() == {"primary": ["lower"], "exploratory": ["equal", "equal"]}
    with pytest.raises(ValueError, match="after resolve"):
        compared(("a", 5), ("c", 5))
    assert compared.count() == (
        "Primary comparisons, fixed before the runs: a at b=5 against b at b=5; stuck at b=5 against b at b=5. "
        "Primary comparisons not drawn: stuck at b=5 against b at b=5 (stuck at b=5 did not learn at this budget "
        "(mean 0.6 against the gate 0.1, 0 of 3 seeds under)). "
        "3 paired comparisons were drawn: 1 primary "
        "(called lower or higher: 1; equal within x0.8 to x1.25: 0; not resolved: 0); 2 exploratory (called lower or "
        "higher: 0; equal within x0.8 to x1.25: 2; not resolved: 0). The rule: a paired t-test on the per-seed log "
        "ratios, Holm-corrected within each family at 0.05; \"equal\" only when the ratio's 90% interval lies inside "
        "the margin. Every other comparison involves a configuration that did not pass the gate.")
    assert compared.count("a model that did not pass its class's gate").endswith(
        "Every other comparison involves a model that did not pass its class's gate.")
    assert compared.reference(("a", 5), "a at b=5 (the recipe's)") == (
        "- **Reference configuration** a at b=5 (the recipe's): trained, 3 of 3 seeds under the gate.")
    assert Comparisons(status, groups.get)(("a", 5), ("stuck", 5)).startswith(
        "not compared: ('stuck', 5) did not learn at this budget")  # the default label is str(key)
    with pytest.raises(ValueError, match="at most 3"):
        Comparisons(status, groups.get, primary=[(("a", 5), ("b", 5))] * 4)
    with pytest.raises(ValueError, match="no status"):
        Comparisons(status, groups.get, primary=[(("a", 5), ("z", 5))])


def test_a_claim_line_names_both_sides_and_holds_the_verdict():
    groups = {name: [run(s, [1.0, e * f, e * f]) for s, e in zip((1, 2, 3), (0.01, 0.02, 0.03), strict=True)]
              for name, f in (("a", 1), ("b", 2))}
    groups["empty"] = []
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    compared = Comparisons(status, groups.get, label=str.upper)
    line = compared.claim("A against B", "a", "b")
    assert line.startswith("- **A against B**: A (0.02) against B (0.04): \u27e6verdict")
    resolved = compared.resolve(line)
    assert resolved.startswith("- **A against B**: A (0.02) against B (0.04): lower: x0.5") and resolved.endswith(".")
    assert compared.named("empty") == "EMPTY (-)"  # no finished seed: no mean
    noted = Comparisons(status, groups.get).claim("t", "b", "a", note="(b=5)")  # the note outside the bold
    assert noted.startswith("- **t** (b=5): b (0.04) against a (0.02): ")
    assert Comparisons(status, groups.get).claim("t", "a", "empty", named=lambda k: f"<{k}>").startswith(
        "- **t**: <a> against <empty>: not compared")


def test_the_t_distribution_matches_its_tables():
    assert t_two_sided_p(2.776, 4) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(4.303, 2) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(1.0, 10) == pytest.approx(0.3409, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 5) == pytest.approx(2.5706, abs=1e-4)
    assert t_quantile(0.95, 2) == pytest.approx(2.9200, abs=1e-4)


def test_holm_adjusts_within_a_family_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.001, 0.9]) == pytest.approx([0.002, 0.9])


def test_a_paired_test_gives_the_ratio_its_interval_and_both_tests():
    test = PairedTest((1, 2, 3), (0.5, 0.6, 0.55))
    assert test.geometric_mean == pytest.approx(0.5485, abs=1e-4)
    assert test.interval() == pytest.approx((0.4373, 0.6879), abs=1e-4)
    assert test.p_value == pytest.approx(0.0076, abs=1e-4)
    assert called(test, test.p_value) == "lower" and called(test, 0.06) == "not resolved"
    near_one = PairedTest(tuple(range(6)), (1.0, 1.02, 0.98, 1.01, 0.99, 1.03))
    assert near_one.equivalence_p() < 0.05 and called(near_one, near_one.p_value) == "equal"
    wide = PairedTest((1, 2, 3), (0.7, 1.4, 1.0))  # centred on 1, but the 90% interval leaves the margin
    assert called(wide, wide.p_value) == "not resolved"
    assert not PairedTest((1,), (0.5,)).testable and PairedTest((1,), (0.5,)).p_value is None
    assert describe_test(PairedTest((1,), (0.5,)), None, "primary", 1) == "not resolved with 1 seed (a/b per seed 0.5)"


def _simulated_call_rates(n_seeds: int, spread: float, ratio: float, family: int, draws: int, seed: int) -> tuple:
    """The rule on simulated seed draws: per family of `family` comparisons, the first with a true
    ratio `ratio` and the others 1, each seed's log ratio normal with sd spread x sqrt(2) (two
    independent arms with log-error sd `spread`). Returns (the rate at which any true-null comparison
    is called lower or higher, the rate at which the first is called in its true direction)."""
    rng = np.random.default_rng(seed)
    false_calls = true_calls = 0
    for _ in range(draws):
        logs = rng.normal(0.0, spread * np.sqrt(2), size=(family, n_seeds))
        logs[0] += np.log(ratio)
        tests = [PairedTest(tuple(range(n_seeds)), tuple(np.exp(row))) for row in logs]
        words = [called(t, p) for t, p in zip(tests, holm([t.p_value for t in tests]), strict=True)]
        null = words if ratio == 1 else words[1:]
        false_calls += any(w in ("lower", "higher") for w in null)
        true_calls += ratio != 1 and words[0] == ("higher" if ratio > 1 else "lower")
    return false_calls / draws, true_calls / draws


def test_the_rule_keeps_its_false_positive_rate_and_prints_its_power(capsys):
    rows = []
    for spread in (0.19, 0.5):
        for n_seeds in (3, 6):
            null_rate, _ = _simulated_call_rates(n_seeds, spread, 1.0, 3, 3000, seed=int(100 * spread) + n_seeds)
            _, power_alone = _simulated_call_rates(n_seeds, spread, 1.5, 1, 3000, seed=10 + n_seeds)
            _, power_in_three = _simulated_call_rates(n_seeds, spread, 1.5, 3, 3000, seed=20 + n_seeds)
            rows.append((spread, n_seeds, null_rate, power_alone, power_in_three))
            assert null_rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 3000)  # Holm keeps the family's rate at 5%
    by = {(spread, n): (power_alone, power_in_three) for spread, n, _, power_alone, power_in_three in rows}
    for spread in (0.19, 0.5):  # more seeds, more power; a smaller spread, more power
        assert by[spread, 6][0] > by[spread, 3][0] and by[spread, 6][1] > by[spread, 3][1]
    assert by[0.19, 6][0] > by[0.5, 6][0]
    with capsys.disabled():
        print("\nThe verdict rule on simulated seeds (3000 families each; log ratio sd = spread x sqrt 2):")
        print("spread | seeds | false calls per family of 3 nulls | power at x1.5, alone | power at x1.5, 1 of 3")
        for spread, n_seeds, null_rate, power_alone, power_in_three in rows:
            print(f"{spread:6} | {n_seeds:5} | {null_rate:34.3f} | {power_alone:20.3f} | {power_in_three:21.3f}")


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


def test_arms_of_unequal_budgets_are_never_primary_and_say_both_budgets():
    short = [run(s, [1.0, e, e], steps=100) for s, e in ((1, 0.02), (2, 0.04), (3, 0.06))]
    long = [run(s, [1.0, e, e], steps=300) for s, e in ((1, 0.01), (2, 0.02), (3, 0.03))]
    groups = {"short": short, "long": long}
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    exploratory = Comparisons(status, groups.get)
    text = exploratory.resolve(exploratory("long", "short"))
    assert text.startswith("[unequal budgets: long at 300 steps, short at 100 steps] lower: x0.5")
    with pytest.raises(ValueError, match=r"primary comparison long against short has arms trained for different steps"):
        Comparisons(status, groups.get, primary=[("long", "short")])("long", "short")


def test_a_comparison_drawn_again_is_one_test_in_its_family():
    """A comparison drawn a second time (another table, or b against a) reads the first draw: the family counts it
    once, so Holm's correction is not made stricter by repeats, and b against a gives the inverted ratios."""
    trained = lambda errors: [run(s, [1.0, e, e]) for s, e in zip((1, 2, 3), errors, strict=True)]
    groups = {"a": trained((0.02, 0.025, 0.03)), "b": trained((0.04, 0.05, 0.06)), "c": trained((0.03, 0.05, 0.07))}
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    compared = Comparisons(status, groups.get, primary=[("a", "b")])
    first, again, reverse, other = compared("a", "b"), compared("a", "b"), compared("b", "a"), compared("c", "b")
    text = compared.resolve("\n".join([first, again, reverse, other]))
    lines = text.split("\n")
    assert lines[0] == lines[1] and lines[0].startswith("lower: x0.5") and "primary family of 1" in lines[0]
    assert lines[2].startswith("higher: x2") and "primary family of 1" in lines[2]
    assert "exploratory family of 1" in lines[3]
    assert len(compared.drawn) == 2 and compared.words() == {"primary": ["lower"], "exploratory": ["not resolved"]}
    assert compared.result("b", "a") == lines[2]
    assert compared.result("b", "c").startswith("not resolved") and len(compared.drawn) == 2  # drawn as c against b


def test_a_reports_strength_follows_its_primary_comparisons():
    trained = lambda errors: [run(s, [1.0, e, e]) for s, e in zip((1, 2, 3), errors, strict=True)]
    groups = {"base": trained((0.04, 0.05, 0.06)), "half": trained((0.02, 0.026, 0.029)),
              "near": trained((0.0399, 0.0502, 0.0601)), "noisy": trained((0.03, 0.09, 0.05)),
              "stuck": trained((0.5, 0.6, 0.7))}  # fmt: skip
    status = {key: verdict(records, 0.1) for key, records in groups.items()}

    def strength(primary):
        compared = Comparisons(status, groups.get, primary=primary)
        for a, b in primary:
            compared(a, b)
        compared.resolve("")
        return compared.strength()

    assert strength([("half", "base")]) == "strong"  # called, every seed below 1/1.5
    assert strength([("near", "base")]) == "moderate"  # equal within the margin
    assert strength([("noisy", "base")]) == "weak"  # drawn, not resolved
    assert strength([("stuck", "base")]) == "untested"  # a side failed the gate
    compared = Comparisons(status, groups.get)
    compared("half", "base")
    with pytest.raises(ValueError, match="resolve"):
        compared.result("half", "base")
    compared.resolve("")
    assert compared.result("half", "base").startswith("lower: x0.5")
    assert compared.result("stuck", "base") == "not compared"
    with pytest.raises(ValueError, match="near against base was never drawn"):
        compared.result("near", "base")


def test_a_primary_comparison_may_name_its_own_reading_and_read_the_two_sides_differently():
    from verdicts import Reading

    trained = lambda errors: [run(s, [1.0, e, e]) for s, e in zip((1, 2, 3), errors, strict=True)]
    groups = {"looped": trained((0.02, 0.04, 0.06)), "standard": trained((0.04, 0.08, 0.12)),
              "stuck": trained((0.5, 0.6, 0.7))}  # fmt: skip
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    at_k = Reading("error at k = 4", lambda r: 2 * final(r))  # a reading of its own, not final_error
    drift = {1: 1.05, 2: 1.2, 3: 0.95}  # per seed: no difference the seeds can call, inside x0.67 to x1.5
    far = Reading("at b = 300", lambda r: drift[r["spec"]["train"]["seed"]] * final(r))
    near = Reading("at b = 12", final)
    compared = Comparisons(status, groups.get, primary=[("looped", "standard", at_k), ("looped", "looped", (far, near)),
                                                        ("stuck", "standard", at_k)], margin=(0.67, 1.5))
    text = "\n".join([
        compared("standard", "looped", at_k),  # the named primary, the other way round
        compared("looped", "looped", (far, near)),  # one configuration at two loop counts
        compared("looped", "standard"),  # final_error: not the named reading, so exploratory
        compared("stuck", "standard", at_k),
    ])
    lines = compared.resolve(text).split("\n")
    assert lines[0].startswith("higher: x2 (95% CI 2 to 2") and "in the primary family of 2)" in lines[0]
    assert lines[1].startswith("equal within x0.67 to x1.5: x1.06 (90% CI")  # the margin fixed before the runs
    assert "in the exploratory family of 1" in lines[2]
    assert lines[3] == ("not compared: stuck did not learn at this budget (mean 0.6 against the gate 0.1, 0 of 3 "
                        "seeds under)")
    assert compared.words()["primary"] == ["higher", "equal"]
    assert compared.result("looped", "looped", (far, near)).startswith("equal within x0.67 to x1.5")
    count = compared.count()
    assert count.startswith(
        "Primary comparisons, fixed before the runs: looped against standard, error at k = 4; looped, at b = 300 "
        "against looped, at b = 12; stuck against standard, error at k = 4. Primary comparisons not drawn: stuck "
        "against standard, error at k = 4 (stuck did not learn at this budget")
    assert "2 primary (called lower or higher: 1; equal within x0.67 to x1.5: 1; not resolved: 0)" in count
    unequal = {"long": [run(s, [1.0, e, e], steps=300) for s, e in ((1, 0.01), (2, 0.02), (3, 0.03))], **groups}
    status["long"] = verdict(unequal["long"], 0.1)
    with pytest.raises(ValueError, match="primary comparison long against looped, error at k = 4 has arms trained"):
        Comparisons(status, unequal.get, primary=[("long", "looped", at_k)])("long", "looped", at_k)


def final(record):
    return record["train"]["evals"][-1]["last_loop"]


def test_bad_primary_entries_readings_and_margins_are_named_before_any_comparison():
    from verdicts import Reading

    status = {"a": verdict([run(1, [1.0, 0.01])], 0.1), "b": verdict([run(1, [1.0, 0.01])], 0.1)}
    with pytest.raises(ValueError, match=r"Comparisons.primary entry \('a',\) must be \(a, b\) or \(a, b, value\)"):
        Comparisons(status, lambda key: [], primary=[("a",)])
    with pytest.raises(ValueError, match="Comparisons.primary value=0.5 must be a function of one run record"):
        Comparisons(status, lambda key: [], primary=[("a", "b", 0.5)])
    with pytest.raises(ValueError, match="must be a function of one run record or a pair of them"):
        Comparisons(status, lambda key: [], primary=[("a", "b", (final, final, final))])
    with pytest.raises(ValueError, match=r"Comparisons.margin=\(1.5, 0.67\) must be \(low, high\) with 0 < low < 1"):
        Comparisons(status, lambda key: [], margin=(1.5, 0.67))
    with pytest.raises(ValueError, match="Reading.name='' must be non-empty"):
        Reading("", final)
    with pytest.raises(ValueError, match="Reading.get=3 must be a function of one run record"):
        Reading("error", 3)


def test_a_paired_test_on_a_subset_of_its_seeds_and_its_estimate():
    test = PairedTest((42, 451, 1984, 2024, 31415), (0.5, 0.6, 0.55, 0.4, 0.45))
    new = test.on_seeds((31415, 2024))
    assert new.seeds == (2024, 31415) and new.ratios == (0.4, 0.45)  # the test's own order
    assert new.estimate() == f"x{fmt(new.geometric_mean)} (95% CI {fmt(new.interval()[0])} to " \
                             f"{fmt(new.interval()[1])}; per seed 0.4, 0.45)"
    assert test.inverted().ratios == pytest.approx((2.0, 1 / 0.6, 1 / 0.55, 2.5, 1 / 0.45))
    assert PairedTest((1,), (0.5,)).estimate() == "not measurable with 1 seed (per seed 0.5)"
    allowed = r"allowed: \(42, 451, 1984, 2024, 31415\)"
    with pytest.raises(ValueError, match=r"PairedTest.on_seeds: seeds=\(7,\) must be distinct seeds .*" + allowed):
        test.on_seeds((7,))
    with pytest.raises(ValueError, match=r"seeds=\(\) must be distinct seeds"):
        test.on_seeds(())
    with pytest.raises(ValueError, match=r"seeds=\(42, 42\) must be distinct"):
        test.on_seeds((42, 42))


SIX = (1, 2, 3, 4, 5, 6)


def test_the_budget_check_calls_robust_sensitive_or_not_resolved_by_the_rule_fixed_before_the_runs():
    from verdicts import BudgetRobustness, budget_classes, budget_rule, ratio_of_ratios

    one = PairedTest(SIX, (0.45, 0.5, 0.55, 0.5, 0.48, 0.52))  # x0.5 on six seeds
    assert budget_classes() == ("budget-robust", "budget-sensitive", "not resolved at 2x")
    assert budget_classes(4)[2] == "not resolved at 4x"
    rr = ratio_of_ratios(one, PairedTest((3, 1, 2), (1.1, 0.9, 1.0)))
    assert rr.seeds == (1, 2, 3) and rr.ratios == pytest.approx((2.0, 2.0, 2.0))  # seed by seed
    # the 2x ratio on the same side, its interval holding x0.5: robust (the ratio of ratios includes 1)
    robust = BudgetRobustness(one, PairedTest((1, 2, 3), (0.4, 0.55, 0.6)))
    assert robust.kind == "budget-robust" and not robust.flips
    assert robust.describe().startswith(
        "budget-robust: the ratio at 2x the steps, x0.509 (95% CI 0.3 to 0.865; per seed 0.4, 0.55, 0.6), is on the "
        "same side of 1 as x0.499 at the preset's budget and its interval holds it; the ratio of ratios (2x / 1x, on "
        "seeds 1, 2, 3): x1.02")
    # the ratio of ratios excludes 1 (x2 on every seed), and the 2x ratio lands above 1: sensitive, a flip
    flip = BudgetRobustness(one, PairedTest((1, 2, 3), (0.9, 1.05, 1.1)))
    assert flip.kind == "budget-sensitive" and flip.flips
    assert flip.describe().startswith("budget-sensitive: the ratio of ratios (2x / 1x, on seeds 1, 2, 3): x2.03")
    assert flip.describe().endswith("; the ranking flips")
    # neither: on the other side of 1 with a wide interval, and the ratio of ratios includes 1
    wide = BudgetRobustness(one, PairedTest((1, 2, 3), (0.6, 2.5, 1.3)))
    assert wide.kind == "not resolved at 2x"
    assert "is on the other side of 1 from x0.499 at the preset's budget" in wide.describe()
    assert wide.describe().endswith(", includes 1")
    # both conditions: the ranking holds (robust, judged first) while its size moved, and it says so
    both = BudgetRobustness(PairedTest(SIX, (0.3, 0.5, 0.8, 0.5, 0.5, 0.5)), PairedTest((1, 2, 3), (0.21, 0.36, 0.55)))
    assert both.kind == "budget-robust" and both.describe().endswith("; the ranking holds and its size moved")
    # too few seeds, or a side missing: not resolved, saying why
    assert BudgetRobustness(one, PairedTest((1,), (0.5,))).describe() == (
        "not resolved at 2x: at 2x the steps not measurable with 1 seed (per seed 0.5)")
    missing = BudgetRobustness(None, PairedTest((1, 2, 3), (0.4, 0.55, 0.6)), why="c did not learn at this budget")
    assert missing.kind == "not resolved at 2x" and missing.describe().startswith(
        "not resolved at 2x: no ratio at the preset's budget to check (c did not learn at this budget); the ratio at "
        "2x the steps, x0.509")
    assert BudgetRobustness(one, None, 4).describe() == "not resolved at 4x: at 4x the steps nothing was drawn"
    rule = budget_rule(2)
    assert "\"budget-robust\" when the ratio at 2x is on the same side of 1" in rule and "otherwise \"not resolved " \
        "at 2x\"" in rule
    with pytest.raises(ValueError, match=r"BudgetRobustness.factor=1 must be an integer >= 2"):
        BudgetRobustness(one, None, 1)
    with pytest.raises(ValueError, match=r"BudgetRobustness.one=0.5 must be a PairedTest or None"):
        BudgetRobustness(0.5, None)
    with pytest.raises(ValueError, match=r"BudgetRobustness.why='a\\nb' must be one line"):
        BudgetRobustness(one, None, why="a\nb")
    with pytest.raises(ValueError, match=r"budget_classes factor=2.5 must be an integer >= 2"):
        budget_classes(2.5)


def _primary_report():
    """Six seeds at 100 steps and three at 200 of four configurations: a at half b's error, c about b's, one stuck."""
    trained = lambda errors, seeds=SIX, steps=100: [run(s, [1.0, e, e], steps=steps)
                                                    for s, e in zip(seeds, errors, strict=True)]  # fmt: skip
    groups = {"a": trained((0.01, 0.012, 0.011, 0.02, 0.018, 0.015)),
              "b": trained((0.02, 0.025, 0.02, 0.04, 0.04, 0.03)),
              "c": trained((0.02, 0.02, 0.03, 0.04, 0.035, 0.03)), "stuck": trained((0.5,) * 6)}  # fmt: skip
    longer = {"a": trained((0.005, 0.006, 0.007), (1, 2, 3), 200), "b": trained((0.01, 0.013, 0.012), (1, 2, 3), 200),
              "c": trained((0.01, 0.02, 0.014), (1, 2, 3), 200), "stuck": trained((0.05, 0.06, 0.07), (1, 2, 3), 200)}
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    return groups, longer, status


def test_a_primary_comparison_on_its_new_seeds_alone_is_described_and_stays_out_of_every_family():
    groups, _, status = _primary_report()
    compared = Comparisons(status, groups.get, primary=[("a", "b"), ("c", "b")])
    text = "\n".join([compared("a", "b"), compared("b", "c"), compared("stuck", "b")])
    new = compared.on_seeds("a", "b", (4, 5, 6))
    assert new.startswith("x0.483 (95% CI 0.415 to 0.561; per seed 0.5, 0.45, 0.5; p = 0.00232 uncorrected, "
                          "descriptive: in no family), on the same side of 1 as every seed's x0.496")
    # drawn the other way round: the subset is read as named, a against b
    assert compared.on_seeds("c", "b", (4, 5, 6)).startswith("x0.956 (95% CI 0.79 to 1.16; per seed 1, 0.88, 1;")
    assert compared.on_seeds("a", "b", (4, 5, 6, 9)).endswith("; no finished pair on seed 9")
    assert compared.on_seeds("a", "b", (4,)) == "not measurable with 1 seed (per seed 0.5)"
    assert compared.on_seeds("stuck", "b", (4, 5, 6)) == "not compared"
    # the families are what they were: two primaries, one corrected p each, no subset test among them
    assert len(compared.tests["primary"]) == 2 and compared.tests["exploratory"] == []
    lines = compared.resolve(text).split("\n")
    assert lines[0].endswith("Holm 2.99e-06 in the primary family of 2)")
    with pytest.raises(ValueError, match=r"Comparisons.on_seeds: seeds=\(4, 'x'\) must be distinct integer"):
        compared.on_seeds("a", "b", (4, "x"))
    with pytest.raises(ValueError, match=r"Comparisons.on_seeds: seeds=\(\) must be distinct integer"):
        compared.on_seeds("a", "b", ())
    with pytest.raises(ValueError, match="Comparisons.on_seeds: a against c was never drawn; draw it first"):
        compared.on_seeds("a", "c", (4, 5, 6))


def test_the_primary_section_gives_both_budgets_the_budget_class_the_new_seeds_and_an_answer():
    groups, longer, status = _primary_report()
    compared = Comparisons(status, groups.get, primary=[("a", "b"), ("c", "b"), ("stuck", "b")])
    text = "\n".join([compared("a", "b"), compared("c", "b"), compared("stuck", "b")])
    questions = ["Is a lower than b?", "Does c differ from b?", "Does stuck learn?"]
    with pytest.raises(ValueError, match="resolve"):
        compared.primary_section(questions, longer.get, (4, 5, 6))
    compared.resolve(text)
    section = compared.primary_section(questions, longer.get, (4, 5, 6))
    assert section.startswith("Fixed in the notebook before the runs;") and "The budget check, fixed before" in section
    items = section.split("\n\n", 1)[1].split("\n")
    assert items[0] == "1. **a against b.** Is a lower than b?"
    assert items[1].startswith("   - At 100 steps, 6 seeds (1, 2, 3, 4, 5, 6): lower: x0.496 (95% CI 0.463 to 0.531")
    assert items[2].startswith("   - On the new seeds alone (4, 5, 6): x0.483")
    assert items[3].startswith("   - At 200 steps (2x): budget-robust: the ratio at 2x the steps, x0.513")
    assert items[4] == ("   - **Answer.** a is lower than b at 100 steps (x0.496, Holm p = 2.99e-06); 200 steps agree "
                        "with it (budget-robust).")
    assert items[9].startswith("   - **Answer.** c and b are equal within x0.8 to x1.25 at 100 steps (x1.01)")
    assert items[11] == ("   - At 100 steps: not compared: stuck did not learn at this budget (mean 0.5 against the "
                         "gate 0.1, 0 of 6 seeds under).")
    assert items[12].startswith("   - At 200 steps (2x): not resolved at 2x: no ratio at the preset's budget to check")
    assert items[13].startswith("   - **Answer.** stuck against b is not compared at 100 steps (stuck did not learn at "
                                "this budget); at 200 steps x5.13")
    assert "at 200 steps x5.13" in items[13] and items[13].endswith("(not resolved at 2x: no ranking at 100 steps to "
                                                                      "check).")
    assert compared.budget("a", "b", longer.get).kind == "budget-robust"
    assert compared.answer("a", "b", longer.get) == "lower: x0.496 (budget-robust)"  # the report's one-line answer
    # drawn only at twice the steps (stuck failed the gate at the preset's): the answer says what 2x measured
    assert compared.answer("stuck", "b", longer.get).startswith("not compared at 100 steps; at 200 steps x5.13")
    # a side that does not pass the gate at 2x is not compared there
    failing = {**longer, "b": [run(s, [1.0, 0.5, 0.5], steps=200) for s in (1, 2, 3)]}
    check = compared.budget("a", "b", failing.get)
    assert check.longer is None and check.kind == "not resolved at 2x"
    assert check.why == ("b at 2x the steps did not learn at this budget (mean 0.5 against the gate 0.1, 0 of 3 "
                         "seeds under)")
    with pytest.raises(ValueError, match=r"questions=\['one'\] must give one line of text per primary .*\(3\)"):
        compared.primary_section(["one"], longer.get)
    with pytest.raises(ValueError, match="Comparisons.budget: no runs at the longer budget for \\['b'\\]"):
        compared.budget("a", "b", {**longer, "b": []}.get)
    with pytest.raises(ValueError, match=r"needs each side's longer runs at one multiple \(2 or more\) of its steps"):
        compared.budget("a", "b", {**longer, "b": groups["b"]}.get)  # the same budget is no longer one
    none_named = Comparisons(status, groups.get)
    none_named.resolve("")
    assert none_named.primary_section([]) == "None named: every comparison of this report is exploratory."


def test_cited_views_format_each_number_once_for_a_template():
    """A report's conclusions index `Cited`'s views by a configuration's label: its mean, seeds, status, a reading's
    mean, a loop's error, minutes, step time and the verdict of a pair (drawn either way round)."""
    from experiment import Results
    from report import Cited, fill_template

    def timed(seed, error):
        record = run(seed, [1.0, error, error])
        record["train"]["wall_time_s"] = 60.0 * seed
        record["loop_errors"] = [10 * error, error]
        return record

    groups = {("a", 5): Results([timed(s, e) for s, e in ((1, 0.02), (2, 0.025), (3, 0.03))]),
              ("b", 5): Results([timed(s, e) for s, e in ((1, 0.04), (2, 0.05), (3, 0.06))])}
    status = {key: verdict(records, 0.1) for key, records in groups.items()}
    compared = Comparisons(status, groups.get, label=lambda key: key[0])
    compared.resolve(compared(("a", 5), ("b", 5)))
    C = Cited(status, lambda key: key[0], runs=groups.get, compared=compared, references={"predicting 0": 1.0},
              readings={"seed": lambda r: r["spec"]["train"]["seed"]}, step_ms={("a", 5): 3.0, ("b", 5): 4.5})
    text = ("{C.mean[a]}; {C.seeds[a]}; {C.passed[b]}; {C.status[b]}; {C.describe[a]}; {C.named[a]}; "
            "{C.mean[a|seed]}; {C.loop[a|1]}; {C.minutes[b]}; {C.ms[b]}; x{C.ms_ratio[b|a]}; {C.ref[predicting 0]}")
    assert fill_template(text, {"C": C}) == (
        "0.025; 0.02, 0.025, 0.03; 3 of 3; trained; trained, 3 of 3 seeds under the gate; a (0.025); 2; 0.25; 2; "
        "4.5; x1.5; 1")
    assert C.mean(("a", 5)) == "0.025" and C.named(("b", 5)) == "b (0.05)"  # called with a key, as notebooks do
    assert fill_template("{C.result[b|a]}", {"C": C}) == compared.result(("b", 5), ("a", 5))
    assert fill_template("{C.result[b|a]}", {"C": C}).startswith("higher: x2")
    missing = r"placeholder \{C.mean\[z\]\} cites nothing: KeyError .*names 0 configurations"
    with pytest.raises(ValueError, match=missing):
        fill_template("{C.mean[z]}", {"C": C})
    with pytest.raises(ValueError, match=r"\{C.mean\[a\|far\]\} cites nothing: KeyError .*no reading 'far'"):
        fill_template("{C.mean[a|far]}", {"C": C})
