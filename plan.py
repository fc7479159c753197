"""A notebook's plan: the base model and recipe of its runs, each variant a set of overrides of them, and the
`RunSpec` of a variant at a seed, a peak rate and a budget, named by `protocol.run_name`.

Owns:
- `Variant`: what one variant changes, as overrides of the plan's base (`ModelConfig` fields, `TrainConfig`
  fields, its task where it is not the plan's, labels besides its name and seed) and the stem of its runs' names;
- `Plan`: the base `ModelConfig` and `TrainConfig` fields (`protocol.RECIPE` under them), the task, the
  evaluation and the variants; `spec(variant, seed, lr, steps_factor)` builds a run the one way every notebook
  does (the variant's name under `label` and the seed in the labels, the rate in the name only when it is not
  the shared one, `steps_factor` x the steps for a longer budget), so a notebook writes its science (the table of
  overrides, `table()`) and not the plumbing of a spec function;
- `Primaries`: a report's primary comparisons, fixed before its runs, with their questions and the seeds they add
  (new seeds, and seeds again at a multiple of the steps: the budget check).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from checks import require
from configs import TrainConfig
from plots import markdown_table
from protocol import RECIPE, run_name
from runner import EvalConfig, RunSpec
from transformer import ModelConfig

_BASE_RATE = object()  # Plan's default shared rate: the base recipe's own `lr`


@dataclass(frozen=True)
class Variant:
    """One variant of a plan: the stem of its runs' names and its overrides of the plan's base model (`model`:
    `ModelConfig` fields) and training (`train`: `TrainConfig` fields), its `task` where it is not the plan's,
    and `labels` its runs carry besides the variant's name and the seed."""

    stem: str
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)
    task: Any = None


class Plan:
    """The runs of a notebook as overrides of one base: `model` (the base `ModelConfig` fields), `train` (the
    base `TrainConfig` fields; `protocol.RECIPE` lies under them, so a plan states only what its runs add:
    steps, batch, rate, b, points, held-out prompts, device), `task` (a `tasks` object), `evaluation` (an
    `EvalConfig`) and `variants` ({name: `Variant`}). `label` is the RunSpec label that holds a variant's name;
    `shared_lr` the grid's shared peak rate, which run names leave out (default: the base's `lr`; None: no shared
    rate, every name carries its rate, as `protocol.run_name`); `role` the runs' `RunSpec.role`."""

    def __init__(
        self,
        model: Mapping[str, Any],
        train: Mapping[str, Any],
        task: Any,
        evaluation: EvalConfig,
        variants: Mapping[Any, Variant],
        label: str = "variant",
        shared_lr: Any = _BASE_RATE,
        role: str = "reported",
    ) -> None:
        bad = [name for name, variant in variants.items() if not isinstance(variant, Variant)]
        require(not bad, f"Plan: variants {bad} must be Variant(stem, model=..., train=...)")
        require(isinstance(evaluation, EvalConfig), "Plan.evaluation must be an EvalConfig")
        self.model = dict(model)
        self.train = dict(train)
        self.task = task
        self.evaluation = evaluation
        self.variants = dict(variants)
        self.label = label
        self.shared_lr = self.train.get("lr") if shared_lr is _BASE_RATE else shared_lr
        self.role = role

    def __iter__(self):
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self.variants)

    def model_config(self, variant: Any) -> ModelConfig:
        """The variant's model: the base with its overrides."""
        return ModelConfig(**{**self.model, **self.variants[variant].model})

    def spec(
        self,
        variant: Any,
        seed: int,
        lr: float | None = None,
        steps_factor: int = 1,
        *,
        stem: str | None = None,
        prefix: str = "",
        task: Any = None,
        train: Mapping[str, Any] | None = None,
        labels: Mapping[str, Any] | None = None,
        evaluation: EvalConfig | None = None,
        role: str | None = None,
    ) -> RunSpec:
        """The run of `variant` at `seed`: its model and training are the base with the variant's overrides (then
        `train`'s, for a grid dimension such as b), at peak rate `lr` (None: the rate its overrides give, left out
        of the name) and `steps_factor` x the steps. Named `protocol.run_name(prefix + (stem or the variant's stem),
        ...)` (`prefix`: a grid dimension the stems share, such as the task's name); labelled {label: the variant's
        name (", <factor>x steps" on a longer budget), the variant's labels, `labels`, "seed": seed}; `task` and
        `evaluation` replace the variant's task and the plan's evaluation for this run (a grid dimension), `role` the
        plan's role (a tuning run of a plan whose other runs are reported)."""
        require(variant in self.variants, f"Plan.spec: no variant {variant!r}; the plan has {list(self.variants)}")
        require(isinstance(steps_factor, int) and steps_factor >= 1,
                f"Plan.spec: steps_factor={steps_factor!r} must be an integer >= 1")
        chosen = self.variants[variant]
        fields = {**RECIPE, **self.train, **chosen.train, **(train or {}), "seed": seed}
        if lr is not None:
            fields["lr"] = lr
        shared = fields["lr"] if lr is None else self.shared_lr
        fields["steps"] = fields["steps"] * steps_factor
        name = variant if steps_factor == 1 else f"{variant}, {steps_factor}x steps"
        return RunSpec(
            name=run_name(prefix + (chosen.stem if stem is None else stem), seed, fields["lr"], shared, steps_factor),
            model=self.model_config(variant),
            task=next(t for t in (task, chosen.task, self.task) if t is not None).to_dict(),
            train=TrainConfig(**fields),
            evaluation=self.evaluation if evaluation is None else evaluation,
            labels={self.label: name, **chosen.labels, **(labels or {}), "seed": seed},
            role=self.role if role is None else role,
        )

    def table(self) -> str:
        """The plan as a markdown table: per variant, its runs' stem and what it changes of the base model and
        training ("-": nothing)."""
        overrides = lambda values: ", ".join(f"{key}={value!r}" for key, value in values.items()) or "-"
        rows = [[name, variant.stem, overrides(variant.model), overrides(variant.train)]
                for name, variant in self.variants.items()]
        return markdown_table([self.label, "run stem", "model (overrides)", "training (overrides)"], rows)


@dataclass(frozen=True)
class Primaries:
    """The primary comparisons a report fixes before its runs (at most three, each (a, b) or (a, b, value) as
    `verdicts.Comparisons` takes them), the question each answers (one line each), and the seeds they add
    (issue 38): every configuration in them trains `new_seeds` beside the grid's `seeds`, and its
    `longer_seeds` again from scratch with `factor` x the steps (`Experiment.primary_checks`), so that each is
    drawn on six seeds and checked at twice the budget. A notebook states these once; the grid's seeds, the
    budget check, the report's seed counts and its settings rows are read from here."""

    comparisons: tuple
    questions: tuple[str, ...]
    seeds: tuple[int, ...]
    new_seeds: tuple[int, ...] = ()
    longer_seeds: tuple[int, ...] = ()
    factor: int = 2

    def __post_init__(self) -> None:
        for name in ("comparisons", "questions", "seeds", "new_seeds", "longer_seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(len(self.comparisons) <= 3 and all(isinstance(c, tuple) and len(c) in (2, 3) for c in self.comparisons),
                f"Primaries.comparisons={self.comparisons!r} must be at most 3 entries, each (a, b) or (a, b, value)")
        require(len(self.questions) == len(self.comparisons)
                and all(isinstance(q, str) and q.strip() and "\n" not in q for q in self.questions),
                f"Primaries.questions must give one line of text per comparison ({len(self.comparisons)}); "
                f"got {self.questions!r}")
        seeds = self.seeds + self.new_seeds
        require(len(self.seeds) > 0 and all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds),
                f"Primaries: seeds={self.seeds!r} and new_seeds={self.new_seeds!r} must be distinct integers, at "
                "least one seed")
        require(set(self.longer_seeds) <= set(seeds),
                f"Primaries.longer_seeds={self.longer_seeds!r} must be among seeds and new_seeds {seeds!r}")
        require(isinstance(self.factor, int) and self.factor >= 2,
                f"Primaries.factor={self.factor!r} must be an integer >= 2")

    @property
    def configs(self) -> list:
        """Every configuration in a primary comparison, each once, in the order named."""
        return list(dict.fromkeys(key for comparison in self.comparisons for key in comparison[:2]))

    def seeds_of(self, key: Any) -> list[int]:
        """The seeds configuration `key` trains: the grid's, and the new ones when it is in a primary comparison."""
        return list(self.seeds) + (list(self.new_seeds) if key in self.configs else [])

    def longer_budgets(self, steps: int | Callable[[Any], int], name: Callable[[Any], Any] = str) -> str:
        """The budget check's steps: "5000 steps", or where the configurations train for different steps (`steps`
        a function of a configuration), "2x their steps (40000 steps for A / B; 5000 steps for C)"."""
        steps_of = steps if callable(steps) else (lambda key: steps)
        groups: dict[int, list[str]] = {}
        for key in self.configs:
            groups.setdefault(self.factor * steps_of(key), []).append(str(name(key)))
        if len(groups) == 1:
            return f"{next(iter(groups))} steps"
        return (f"{self.factor}x their steps ("
                + "; ".join(f"{total} steps for {' / '.join(keys)}" for total, keys in groups.items()) + ")")

    def seed_counts(self, steps: int | Callable[[Any], int], unit: str = "configuration", lead: str = "") -> str:
        """The report's sentence on how many seeds its means are over (`steps`: the preset's, or each
        configuration's as a function; `lead`: what replaces "<n> seeds per <unit>" where the grid's other
        configurations ran fewer)."""
        lead = lead or f"{len(self.seeds)} seeds per {unit}"
        if not self.new_seeds:
            return lead
        return (f"{lead} ({len(self.seeds) + len(self.new_seeds)} for the {unit}s of a primary comparison, whose first "
                f"{len(self.longer_seeds)} also ran at {self.longer_budgets(steps)})")

    def settings_rows(
        self, name: Callable[[Any], Any], steps: int | Callable[[Any], int], checks: Mapping[Any, Any], before: str = ""
    ) -> dict[str, str]:
        """The settings table's rows on seeds and the budget check: `name(key)` names a configuration, `steps` as in
        `seed_counts`, `checks` are `Experiment.primary_checks`' results (their run-minutes are stated), `before` what
        the seeds row says first (a tuning seed, say)."""
        joined = lambda values: ", ".join(str(v) for v in values)
        minutes = sum(check.longer_runs.run_minutes() for check in checks.values())
        added = (f"; also {joined(self.new_seeds)} for the configurations of a primary comparison "
                 f"({'; '.join(str(name(key)) for key in self.configs)})") if self.new_seeds else ""
        return {
            "seeds": f"{before}{joined(self.seeds)}{added}",
            "budget check": (f"seeds {joined(self.longer_seeds)} of the configurations of a primary comparison again "
                             f"at {self.longer_budgets(steps, name)}, each a fresh run with its own schedule; "
                             f"{minutes:.1f} run-minutes") if self.longer_seeds else "none",
        }
