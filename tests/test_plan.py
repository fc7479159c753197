"""plan.py: a notebook's runs as overrides of one base, named by `protocol.run_name`."""

import pytest

from plan import Plan, Primaries, Variant
from protocol import RECIPE
from runner import EvalConfig
from tasks import LinearRegression, NoisyLinearRegression

EVALUATION = EvalConfig(launches=2, batches_per_launch=1, batch_size=8, extrapolation_b=(1, 2))
MODEL = dict(n_dims=2, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=9)
TRAIN = dict(steps=20, batch_size=8, lr=1e-2, b=4, n_points=5, eval_prompts=64)


def plan(**options):
    variants = {"base": Variant("base"), "deep": Variant("deep", model=dict(n_layers=2), train=dict(b=2)),
                "noisy": Variant("noisy", task=NoisyLinearRegression(n_dims=2, noise_std=0.5), labels={"kind": "x"})}
    return Plan(MODEL, TRAIN, LinearRegression(n_dims=2), EVALUATION, variants, **options)


def test_a_spec_is_the_base_with_the_variants_overrides():
    spec = plan().spec("deep", 42)
    assert spec.name == "deep_42"  # the shared rate stays out of the name
    assert spec.model.n_layers == 2 and spec.model.hidden_dim == 16
    assert spec.train.b == 2 and spec.train.steps == 20 and spec.train.seed == 42
    assert spec.train.warmup == RECIPE["warmup"]  # the recipe lies under the base
    assert spec.labels == {"variant": "deep", "seed": 42} and spec.role == "reported"
    assert spec.evaluation == EVALUATION and spec.task["name"] == "LinearRegression"


def test_a_rate_a_longer_budget_and_a_prefix_name_the_run():
    longer = plan().spec("base", 7, 3e-3, steps_factor=3)
    assert longer.name == "base_lr0.003_x3steps_7" and longer.train.steps == 60 and longer.train.lr == 3e-3
    assert longer.labels["variant"] == "base, 3x steps"
    assert plan().spec("base", 7, 1e-2, prefix="noisy_").name == "noisy_base_7"
    assert plan(shared_lr=None).spec("base", 7, 1e-2).name == "base_lr0.01_7"  # no shared rate: every name has its own
    tuning = plan().spec("base", 7, prefix="tune_", train=dict(eval_seed=11), role="tuning")
    assert tuning.name == "tune_base_7" and tuning.role == "tuning" and tuning.train.eval_seed == 11
    with pytest.raises(ValueError, match="steps_factor"):
        plan().spec("base", 7, steps_factor=0)
    with pytest.raises(ValueError, match="no variant"):
        plan().spec("wide", 7)


def test_a_run_task_replaces_the_variants_and_the_plans():
    assert plan().spec("noisy", 1).task["name"] == "NoisyLinearRegression"  # the variant's own task
    assert plan().spec("noisy", 1).labels == {"variant": "noisy", "kind": "x", "seed": 1}
    other = plan().spec("base", 1, task=NoisyLinearRegression(n_dims=2, noise_std=0.5), labels={"task": "noisy"})
    assert other.task["name"] == "NoisyLinearRegression"
    assert other.labels == {"variant": "base", "task": "noisy", "seed": 1}


def test_the_table_states_each_variants_overrides():
    table = plan().table()
    assert "| deep | deep | n_layers=2 | b=2 |" in table and "| base | base | - | - |" in table


def primaries(**changes):
    fields = dict(comparisons=[("a", "ref"), ("b", "ref", len)], questions=["Is a lower?", "Is b lower?"],
                  seeds=(42, 451, 1984), new_seeds=(2024, 31415, 271828), longer_seeds=(42, 451, 1984))
    return Primaries(**{**fields, **changes})


def test_primaries_add_seeds_only_to_the_configurations_they_compare():
    fixed = primaries()
    assert fixed.configs == ["a", "ref", "b"]  # each once, in the order named
    assert fixed.seeds_of("ref") == [42, 451, 1984, 2024, 31415, 271828]
    assert fixed.seeds_of("other") == [42, 451, 1984]
    assert fixed.seed_counts(2500, "objective") == ("3 seeds per objective (6 for the objectives of a primary "
                                                    "comparison, whose first 3 also ran at 5000 steps)")
    assert primaries(new_seeds=(), longer_seeds=()).seed_counts(2500) == "3 seeds per configuration"
    # configurations at different budgets: each group's twice the steps is named
    steps_of = lambda key: 20000 if key == "ref" else 2500
    assert fixed.longer_budgets(steps_of) == "2x their steps (5000 steps for a / b; 40000 steps for ref)"
    assert fixed.seed_counts(steps_of, lead="3 seeds, 1 for the others").startswith("3 seeds, 1 for the others (6 ")


@pytest.mark.parametrize("changes, field", [
    (dict(comparisons=[("a", "b")] * 4, questions=["q"] * 4), "Primaries.comparisons"),
    (dict(comparisons=[("a",)], questions=["q"]), "Primaries.comparisons"),
    (dict(questions=["Is a lower?"]), "Primaries.questions"),
    (dict(questions=["Is a lower?", "two\nlines"]), "Primaries.questions"),
    (dict(new_seeds=(42,)), "new_seeds"),
    (dict(longer_seeds=(7,)), "Primaries.longer_seeds"),
    (dict(factor=1), "Primaries.factor"),
])
def test_primaries_refuse_bad_input_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        primaries(**changes)
