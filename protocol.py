"""The protocol every experiment notebook follows when it chooses a setting: which prompts and which
seed a choice is made on, and the record of every choice.

Owns:
- `TUNING_STREAM`: the seed of the prompt set every tuning and screen run is validated on
  (Experiment 0's validation stream). The reports' held-out prompts use `TrainConfig.eval_seed`'s
  default; a setting is never chosen on them, so a reported number is never the one that chose.
- `SCREEN_SEED`: the training seed of rate screens, outside every preset's reported seeds, so a
  screen run is never also a reported seed.
- `RECIPE`: Experiment 0's training recipe (Adam with 5% warm-up, cosine decay, clipping at 1.0,
  a validation every 5% of training), and `recipe`, the recipe with some of its fields changed: the one
  way a notebook whose science is a recipe variant (Experiments 0 and 8) writes one.
- `run_name`: the one naming rule of a grid's runs (a rate other than the shared one, a longer
  budget and the seed in the name).
- `longer_twin`: a run again from scratch with a multiple of its steps (the budget check: how far
  from converged a preset's numbers are).
- `screen_twin`: the screen run of a configuration (its spec at `SCREEN_SEED`, validated on the
  tuning stream, evaluated cheaply, named `screen_<name>`, role "screen").
- `SCREEN_RULE`: the rate screen in one paragraph, which every screened report cites (`{screen_rule}`).
- `choose_rates`: `verdicts.tune_rates` over tuning or screen runs, with the choice written to
  `data/rate choices.json` (the rule, the threshold, and per configuration the rate and the runs
  it was chosen from), which `rate_choice_problems` checks against the runs' own records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from checks import require
from runner import EvalConfig, RunSpec
from storage import read_json, write_json
from verdicts import tune_rates

TUNING_STREAM = 20261126
SCREEN_SEED = 7
RECIPE = dict(lr_schedule="cosine", warmup=0.05, clip_grad_norm=1.0, eval_every=0.05)
RATE_CHOICES = "rate choices.json"
CHOOSING_ROLES = ("tuning", "screen")
SCREEN_RULE = (
    f"How each configuration's peak rate was chosen (`protocol.py`, the same for every screened report): the screen "
    f"seed ({SCREEN_SEED}, a seed no report uses) trained at the shared peak rate and was validated on the tuning "
    f"stream ({TUNING_STREAM}), never on this report's held-out prompts; a configuration it left above the tuning "
    "stream's gate trained that seed again at the lower rate, and the rate was chosen between the two (the fewer steps "
    "to the gate; where neither reached it, the lower final error). The screen runs are not reported seeds: the "
    "reported seeds then trained at the chosen rates, and the results table names each configuration's rate."
)


def recipe(**changes) -> dict:
    """`RECIPE` with `changes` (only its own fields: `lr_schedule`, `warmup`, `clip_grad_norm`, `eval_every`), for a
    variant whose science is the recipe (a constant rate, no clipping): a notebook never writes these fields
    otherwise (`tests/test_notebooks.py` checks it), so every run trains with the one recipe unless it says why not."""
    unknown = sorted(set(changes) - set(RECIPE))
    require(not unknown, f"recipe: {unknown} are not recipe fields; the recipe's fields are {sorted(RECIPE)}")
    return {**RECIPE, **changes}


def run_name(stem: str, seed: int, lr: float, shared_lr: float | None, steps_factor: int = 1) -> str:
    """The one naming rule of a grid's runs: `<stem>[_lr<rate>][_x<factor>steps]_<seed>`, the rate
    only when it is not the grid's shared rate (`shared_lr` None: the grid has none, each
    configuration its own, so every name carries its rate) and the factor only for a longer budget
    (a budget probe or a longer stage), so every run keeps the name it was committed under."""
    rate = "" if lr == shared_lr else f"_lr{lr:g}"
    longer = "" if steps_factor == 1 else f"_x{steps_factor}steps"
    return f"{stem}{rate}{longer}_{seed}"


def longer_twin(spec: RunSpec, factor: int) -> RunSpec:
    """The same run trained from scratch with `factor` times the steps (its schedule stretched with
    it, so warm-up and decay keep their shares): named by `run_name`'s rule, `..._x<factor>steps_<seed>`,
    and labelled "budget": "x<factor>"."""
    require(isinstance(factor, int) and factor > 1, f"longer_twin: factor={factor!r} must be an integer above 1")
    stem, _, seed = spec.name.rpartition("_")
    require(seed == str(spec.train.seed), f"longer_twin: {spec.name!r} does not end with its seed {spec.train.seed}")
    return replace(
        spec,
        name=f"{stem}_x{factor}steps_{seed}",
        train=replace(spec.train, steps=spec.train.steps * factor),
        labels={**spec.labels, "budget": f"x{factor}"},
    )


def screen_twin(spec: RunSpec) -> RunSpec:
    """The screen run of the configuration `spec` describes: `spec` must be built at `SCREEN_SEED`
    (by the notebook's own spec function, so its name and labels follow the notebook's rule); it is
    validated on the tuning stream with a one-launch evaluation at its own b, named
    `screen_<name>`, and has the role "screen"."""
    require(
        spec.train.seed == SCREEN_SEED,
        f"screen_twin: spec {spec.name!r} has seed {spec.train.seed}; build it at protocol.SCREEN_SEED={SCREEN_SEED}",
    )
    return replace(
        spec,
        name=f"screen_{spec.name}",
        train=replace(spec.train, eval_seed=TUNING_STREAM),
        evaluation=EvalConfig(launches=1, batches_per_launch=1, batch_size=16, extrapolation_b=(spec.train.b,)),
        role="screen",
    )


def choose_rates(
    out: Path,
    groups: Mapping[str, Iterable[dict]],
    threshold: float,
    rule: str = "fastest",
    validated_on: str = "tuning stream",
) -> tuple[dict[str, float], str]:
    """`verdicts.tune_rates` over each configuration's tuning or screen runs, and the choice kept
    in `<out>/data/rate choices.json` (merged with the choices already there, so a notebook that
    chooses in two places keeps both). Returns (rates, the table of every candidate tried)."""
    groups = {config: list(records) for config, records in groups.items()}
    chosen, table = tune_rates(groups, threshold, validated_on=validated_on, rule=rule)
    path = Path(out) / "data" / RATE_CHOICES
    kept = read_json(path)["choices"] if path.exists() else {}
    choices = {
        config: {"lr": chosen[config], "runs": [record["spec"]["name"] for record in records]}
        for config, records in groups.items()
    }
    write_json(path, {"rule": rule, "threshold": threshold, "choices": {**kept, **choices}})
    return chosen, table


def rate_choice_problems(data_dir: Path) -> list[str]:
    """What is wrong with the rate choices recorded in `data_dir` (empty: nothing): a choice made
    from a run that is missing, that is not a tuning or screen run, or that was validated on
    other prompts than the tuning stream; a tuning or screen run that trained on a seed some reported
    run of the same folder trained on (its choice would favour that seed)."""
    data_dir = Path(data_dir)
    path = data_dir / RATE_CHOICES
    if not path.exists():
        return [f"{path} is missing: no record says which runs chose the rates"]
    records = {}
    for file in data_dir.glob("*.json"):
        record = read_json(file)
        if isinstance(record, dict) and "spec" in record:
            records[record["spec"]["name"]] = record
    reported_seeds = {
        r["spec"]["train"]["seed"] for r in records.values() if r["spec"].get("role", "reported") == "reported"
    }
    problems = []
    for config, choice in read_json(path)["choices"].items():
        for name in choice["runs"]:
            record = records.get(name)
            if record is None:
                problems.append(f"{config}: its rate was chosen from run {name!r}, which is not in {data_dir}")
                continue
            spec = record["spec"]
            role = spec.get("role", "reported")
            if role not in CHOOSING_ROLES:
                problems.append(f"{config}: its rate was chosen from {name!r}, a {role} run")
            if spec["train"]["eval_seed"] != TUNING_STREAM:
                problems.append(
                    f"{config}: its rate was chosen from {name!r}, validated on prompts of seed "
                    f"{spec['train']['eval_seed']}, not the tuning stream {TUNING_STREAM}"
                )
            if spec["train"]["seed"] in reported_seeds:
                seed = spec["train"]["seed"]
                problems.append(f"{config}: {role} run {name!r} trained on seed {seed}, a reported seed")
    return problems
