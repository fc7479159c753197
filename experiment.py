"""One experiment notebook's scaffolding: settings, the grid, named look-ups, figures and the report.

Owns what every notebook did by hand:
- `Experiment`: the preset (`PRESET`), backend (`BACKEND`), device (`DEVICE`) and output folder
  (`runner.results_dir`, which honours `LOOPED_RESULTS_ROOT`) read from the environment; `run`,
  the grid of runs (`runner.run_grid_timed`: finished runs are read from the cache); `figure`,
  which saves an SVG atomically, closes the figure and shows it; `comparison_figure` and
  `final_errors_figure`, the figures comparison reports share; `step_times`, what a training step
  of each variant costs, measured once and kept beside the runs; `screen_rates`, the protocol's
  rate screen (`protocol.py`: a screen seed no report uses, scored on the tuning stream) of a lower
  peak rate for the configurations the shared rate leaves above the gate (`RateScreen`); `sweep_rates`,
  the protocol's full sweep (every configuration at every candidate rate, `RateSweep`); `budget_ladder`,
  the budget chosen the same way (each configuration's screen run at 1x, 2x, ... the steps until it passes
  the gate, `BudgetLadder`); `per_run`,
  a value computed from each run's saved model, kept beside the runs the same way; `budget_check`,
  a configuration's seeds again with a multiple of the steps (how far from converged its numbers
  are; `budget_checks`: several configurations in one sitting, the runs a report's primary comparisons
  are checked on at twice the steps); and `write_report`, which fills the notebook's markdown report templates in
  `experiments/reports/` (the filling, the report's cells and sections and its answer are `report.py`'s).
- `Results`: the records of a grid with named look-ups (`where(model="small", b=5)`,
  `extrapolation(at=20)`, `level2_median()`, `finished`/`diverged`), so a notebook never indexes
  the nested record dicts itself; `loop_error_at` and `far_over_train`, the per-run readings a comparison
  draws on (one function per loop count, so a verdict is found again by its reading).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import plots
from baselines import baseline_position_errors
from checks import is_int, is_real, require
from configs import TrainConfig
from evaluation import error_scale, heldout_prompts
from protocol import SCREEN_SEED, TUNING_STREAM, choose_rates, longer_twin, screen_twin
from report import (
    Answer,
    divergence_section,
    evaluation_rows,
    hardware_cell,
    joined,
    learned_section,
    render_report,
    run_minutes,
    settings_cells,
    wall_time_cell,
)
from runner import ROOT, RunSpec, choose_preset, hardware, results_dir, run_grid_timed
from storage import atomic_write_bytes, load_run, read_json, save_svg, write_json
from tasks import task_from_dict
from tracking import tracking_from_env
from training import step_times
from verdicts import (
    TUNE_RULES,
    Gate,
    PairedTest,
    final_error,
    paired,
    reference_errors,
    reference_names,
    steps_to_gate,
    verdict,
)

REPORTS = ROOT / "experiments" / "reports"


class Results(Sequence):
    """The records of a grid (or of part of it), in grid order, with look-ups by label.

    Every per-run look-up returns a numpy array with one value per run, in order, so that
    `plots.mean_pm_std` takes it directly."""

    def __init__(self, records: Iterable[dict]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Results(self.records[index])
        return self.records[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"Results({self.names})"

    # selection

    def where(self, **labels: Any) -> Results:
        """The runs whose labels (RunSpec.labels) equal every given value."""
        return Results(r for r in self.records if all(r["spec"]["labels"].get(k) == v for k, v in labels.items()))

    def one(self, **labels: Any) -> dict:
        """The single run with these labels (raises unless exactly one matches)."""
        matches = self.where(**labels)
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} runs match {labels}, expected exactly one")
        return matches[0]

    @property
    def finished(self) -> Results:
        """The runs that trained to the end (a diverged run has no evaluation)."""
        return Results(r for r in self.records if r["train"]["status"] == "finished")

    @property
    def diverged(self) -> Results:
        """The runs that did not finish training."""
        return Results(r for r in self.records if r["train"]["status"] != "finished")

    @property
    def names(self) -> list[str]:
        return [r["spec"]["name"] for r in self.records]

    def configurations(self, exclude: Sequence[str] = ("seed",)) -> dict[str, Results]:
        """The runs grouped into configurations, by every label but `exclude` (a configuration
        and its seeds), in grid order: {"b=10, model=small": Results, ...}. The labels are named in
        sorted order for every run, as a run read back from its JSON has them, so that a report
        reads the same whether a run was trained in this sitting or read from the cache."""
        order = sorted({key for record in self.records for key in record["spec"]["labels"]})
        groups: dict[str, list[dict]] = {}
        for record in self.records:
            labels = record["spec"]["labels"]
            name = ", ".join(f"{key}={labels[key]}" for key in order if key in labels and key not in exclude)
            groups.setdefault(name, []).append(record)
        return {name: Results(records) for name, records in groups.items()}

    def labels(self, key: str) -> list:
        """The distinct values of one label, in grid order."""
        return list(dict.fromkeys(r["spec"]["labels"][key] for r in self.records))

    @property
    def parameters(self) -> int | None:
        """The parameter count shared by these runs (None without runs)."""
        counts = {r["parameters"] for r in self.records}
        if len(counts) > 1:
            raise ValueError(f"these runs have different parameter counts: {sorted(counts)}")
        return counts.pop() if counts else None

    def run_minutes(self) -> float:
        """The runs' own time added up, in minutes. A record's `wall_time_s` is the sitting that
        wrote it; a run resumed from a checkpoint trained partly in earlier sittings, which its
        `train.wall_time_s` (accumulated across sittings) counts, so each run counts the larger."""
        return run_minutes(self.records)

    # per-run values (finished runs only, so that a diverged run never raises)

    def values(self, get: Callable[[dict], Any]) -> np.ndarray:
        """`get(record)` for every finished run, as an array."""
        return np.array([get(r) for r in self.finished], dtype=float)

    def final_errors(self) -> np.ndarray:
        """Each run's held-out last-loop error at the query after training (`verdicts.final_error`, the gate's)."""
        return self.values(final_error)

    def train_minutes(self) -> np.ndarray:
        """Each run's training time (with its level-1 validations), in minutes."""
        return self.values(lambda r: r["train"]["wall_time_s"] / 60)

    def extrapolation(self, at: int | None = None, metric: str = "reference") -> np.ndarray:
        """Held-out error at eval loop count `at` (default: each run's own b_train): one value
        per run. metric: "reference" (the study's mean over loops 1..b) or "last_loop"."""

        def get(r: dict) -> float:
            if "level2" not in r:
                raise KeyError(f"run {r['spec']['name']!r} finished but has no evaluation (level2); delete its record")
            table = r["level2"]["extrapolation"]
            b = r["spec"]["train"]["b"] if at is None else at
            if b not in table["b"]:
                raise KeyError(f"run {r['spec']['name']!r} was not evaluated at b={b}; it has {table['b']}")
            return table[metric][table["b"].index(b)]

        return self.values(get)

    def curves(self, metric: str = "reference") -> list[list[float]]:
        """Each run's extrapolation curve over `EvalConfig.extrapolation_b`: rows [runs, eval b]."""
        return [r["level2"]["extrapolation"][metric] for r in self.finished]

    def level2(self, metric: str = "reference", relative: bool = False) -> list[float]:
        """Every level-2 launch of every run, pooled (the boxplots' values); `relative`: each
        launch divided by its test variance (`level2_launches`)."""
        return [v for r in self.finished for v in level2_launches(r, metric, relative)]

    def level2_median(self, metric: str = "reference", relative: bool = False) -> np.ndarray:
        """Each run's median over its level-2 launches (the study's summary; `relative`: of the
        launches divided by their test variance, `level2_launches`)."""
        return self.values(lambda r: level2_median(r, metric, relative))

    def final_loss(self, last: int) -> np.ndarray:
        """Each run's mean training loss over its last `last` steps (at least one)."""
        return self.values(lambda r: np.mean(r["train"]["loss"][-max(1, last) :]))

    def position_errors(self, kind: str = "last_loop") -> list[list[float | None]]:
        """Each run's held-out error at every position: rows [runs, P] (None: never predicted)."""
        return [r["position_errors"][kind] for r in self.finished]

    def label_sensitivity(self, kind: str = "own") -> np.ndarray:
        """Each run's mean label sensitivity over positions (`EvalConfig.label_sensitivity`):
        kind "own" (label leakage) or "later" (the control)."""
        return self.values(lambda r: np.mean(r["label_sensitivity"][kind]))

    def mean_std(self, values: Sequence[float] | None = None, **look_up: Any) -> str:
        """'mean ± std' for a report: of `values`, or of `extrapolation(**look_up)`."""
        return plots.mean_pm_std(self.extrapolation(**look_up) if values is None else values)


@dataclass
class RateScreen:
    """What `Experiment.screen_rates` found: stage 1 (`shared`: the screen run of every
    configuration at the shared peak rate), stage 2 (`screen`: that seed again at the lower rate, or at each
    lower rate in turn, for the configurations stage 1 left above the gate, listed in `untrained`),
    the rate chosen per configuration (`lr`), the table of every candidate tried (`table`) and each
    stage's sitting (wall time, hardware, backend; stage 2's wall time sums its lower rates)."""

    shared: Results
    screen: Results
    untrained: list[str]
    lr: dict[str, float]
    table: str
    shared_sitting: dict
    screen_sitting: dict | None
    label: str = "config"  # the RunSpec label that holds a configuration's name
    threshold: float = float("nan")  # the gate on the tuning stream, which every screen run is scored against

    def chosen(self, config: str) -> Results:
        """`config`'s screen run at the rate chosen for it: stage 2's where that rate was a lower one, else stage 1's
        (what decides whether a configuration runs every seed)."""
        screened = self.screen.where(**{self.label: config})
        screened = Results(r for r in screened if r["spec"]["train"]["lr"] == self.lr[config])
        return screened if screened else self.shared.where(**{self.label: config})

    def stages(self) -> str:
        """The report's settings cell for the two stages: their wall times and run-minutes."""
        screen_minutes = self.screen_sitting["wall_time_s"] / 60 if self.screen_sitting else 0.0
        return (
            f"screen seed {SCREEN_SEED} on the tuning stream at the shared rate: "
            f"{self.shared_sitting['wall_time_s'] / 60:.1f} min; rate screen: "
            f"{screen_minutes:.1f} min ({len(self.screen.names)} runs); "
            f"{(self.shared.run_minutes() + self.screen.run_minutes()):.1f} run-minutes"
        )


@dataclass
class RateSweep:
    """What `Experiment.sweep_rates` found: every configuration's screen run at every candidate rate
    (`runs`), the rate chosen per configuration (`lr`), the table of every candidate (`table`), the gate
    on the tuning stream every run was scored against (`threshold`) and the sitting (wall time,
    hardware, backend)."""

    runs: Results
    lr: dict[str, float]
    table: str
    threshold: float
    sitting: dict
    candidates: tuple[float, ...]
    label: str = "config"

    def chosen(self, config: str) -> Results:
        """`config`'s screen run at the rate chosen for it."""
        runs = self.runs.where(**{self.label: config})
        return Results(r for r in runs if r["spec"]["train"]["lr"] == self.lr[config])

    def describe(self) -> str:
        """The report's settings cell: the candidates, the seed and prompts, the sitting and the run-minutes."""
        configs = len(self.lr)
        return (
            f"peak lr in {joined(f'{lr:g}' for lr in self.candidates)} for each of {configs} configurations, "
            f"screen seed {SCREEN_SEED} on the tuning stream; {len(self.runs)} runs, sitting "
            f"{self.sitting['wall_time_s'] / 60:.1f} min ({self.sitting['backend']} backend); "
            f"{self.runs.run_minutes():.1f} run-minutes"
        )


@dataclass
class BudgetLadder:
    """What `Experiment.budget_ladder` found: every rung's screen run (`runs`, the "budget" label
    "x<factor>" on rungs above the first), each configuration's first factor whose screen run passed
    the gate on the tuning stream (`passed_at`, None: none did), the factor the grid trains at
    (`factor`: the largest first passing factor, or the top one when some configuration passed at
    none), the table of every rung, the gate and the summed sittings."""

    runs: Results
    factors: tuple[int, ...]
    steps: int  # the steps of the first rung; rung f trains f x steps
    passed_at: dict[str, int | None]
    factor: int
    table: str
    threshold: float
    sitting: dict
    label: str = "config"

    @property
    def all_passed(self) -> bool:
        """Every configuration passed the gate at some rung (so the grid's budget takes each past it)."""
        return all(factor is not None for factor in self.passed_at.values())

    def describe(self) -> str:
        """The report's settings cell: the rungs, the seed and prompts, the sitting and the run-minutes."""
        rungs = joined(f"{f * self.steps} ({f}x)" for f in self.factors)
        return (
            f"steps {rungs}, each configuration until its screen run passes the gate, screen seed {SCREEN_SEED} on "
            f"the tuning stream; {len(self.runs)} runs, sittings {self.sitting['wall_time_s'] / 60:.1f} min; "
            f"{self.runs.run_minutes():.1f} run-minutes"
        )


class Experiment:
    """One notebook's experiment: number, preset and where its runs and report go.

    `presets` maps preset names to the notebook's parameters; `PRESET` picks one (default
    "cpu"), and `exp.p` holds it. `BACKEND` (default "auto"), `DEVICE` (default "cpu") and
    `TRACK` (default "off"; "wandb": one wandb run per training run, `tracking.py`) come from
    the environment as well."""

    def __init__(self, number: int, presets: Mapping[str, Any], default: str = "cpu"):
        self.number = number
        self.preset, self.p = choose_preset(dict(presets), default)
        self.backend = os.environ.get("BACKEND", "auto")
        self.device = os.environ.get("DEVICE", "cpu")
        self.out = results_dir(number, self.preset)
        self.tracking = tracking_from_env(f"experiment {number} {self.preset}", self.out)
        self.grid: dict = {}
        self.results = Results([])
        self.computed: dict[str, dict] = {}  # every record of this sitting's run() calls, by run name
        tracked = (
            f"; tracking runs in wandb project {self.tracking.project!r} ({self.tracking.mode})"
            if self.tracking
            else ""
        )
        print(f"experiment {number}, preset {self.preset}: writing to {self.out}{tracked}")

    def run(self, specs: list[RunSpec], **options: Any) -> Results:
        """Run the grid (`runner.run_grid_timed`; finished runs come from the cache) and return
        its records. `self.grid` keeps the wall time, hardware and backend of the sitting that
        computed them."""
        options.setdefault("tracking", self.tracking)
        records, self.grid = run_grid_timed(specs, self.out, backend=self.backend, **options)
        self.results = Results(records)
        self.computed |= {record["spec"]["name"]: record for record in records}
        diverged = self.results.diverged.names
        print(
            f"{len(specs)} runs; grid wall time {self.grid['wall_time_s'] / 60:.1f} min on {self.grid['hardware']}; "
            f"diverged: {diverged or 'none'}"
        )
        for record in self.results.diverged:
            print(f"  {record['spec']['name']}: {record['train']['message']}")
        return self.results

    def screen_rates(
        self,
        configs: Sequence[str],
        spec_for: Callable[[str, int, float], RunSpec],
        label: str,
        lr: float,
        screen_lr: float | Sequence[float],
        gate: Gate | None = None,
        sittings: str = "",
    ) -> RateScreen:
        """The rate screen of a grid whose variants may need a lower peak rate than the reference,
        run by the protocol (`protocol.py`): each config's screen run (`protocol.screen_twin` of
        `spec_for(config, SCREEN_SEED, rate)`: a seed no report uses, validated on the tuning stream)
        at the shared `lr` (sitting "shared-rate"); the configs that rate leaves above the gate on the
        tuning stream run again at `screen_lr` (sitting "rate-screen"). `screen_lr` may be a sequence
        of rates, tried in order: each one only for the configs that every rate before it left above
        the gate (sittings "rate-screen", "rate-screen-2", ...). `protocol.choose_rates` then picks
        each config's rate among the rates it ran and writes `data/rate choices.json`; a config the
        shared rate trained keeps it. `label` is the RunSpec label that holds the config's name. The
        reported seeds at the chosen rates are the notebook's own `run`. `sittings`: a prefix of the
        sittings' names, so that one notebook may screen two groups of configurations from different
        shared rates (each group's wall times kept apart; the choices share one record)."""
        gate = gate or Gate()
        lower_rates = [screen_lr] if isinstance(screen_lr, (int, float)) else list(screen_lr)
        require(len(lower_rates) > 0, "screen_lr is empty; give one lower rate or a sequence of them")
        twin = lambda config, rate: screen_twin(spec_for(config, SCREEN_SEED, rate))
        threshold = tuning_threshold(twin(configs[0], lr), gate)
        shared = self.run([twin(config, lr) for config in configs], sitting=f"{sittings}shared-rate")
        shared_sitting = dict(self.grid)
        above = lambda results, config: not verdict(results.where(**{label: config}), threshold, gate).trained
        untrained = [c for c in configs if above(shared, c)]
        print(f"above the tuning stream's gate ({plots.fmt(threshold)}) at the shared rate {lr:g}:", untrained or '-')
        screened, screen_sitting, still_above = [], None, list(untrained)
        for stage, rate in enumerate(lower_rates, start=1):
            if stage > 1 and not still_above:
                break
            sitting = f"{sittings}rate-screen" if stage == 1 else f"{sittings}rate-screen-{stage}"
            stage_runs = self.run([twin(config, rate) for config in still_above], sitting=sitting)
            screened += list(stage_runs)
            screen_sitting = dict(self.grid) if screen_sitting is None else {
                **screen_sitting, "wall_time_s": screen_sitting["wall_time_s"] + self.grid["wall_time_s"]}
            still_above = [c for c in still_above if above(stage_runs, c)]
            if stage < len(lower_rates):
                print(f"above the gate at {rate:g}:", still_above or "none")
        screen = Results(screened)
        candidates = {c: [*shared.where(**{label: c}), *screen.where(**{label: c})] for c in configs}
        rates, table = choose_rates(self.out, candidates, threshold)
        return RateScreen(shared, screen, untrained, rates, table, shared_sitting, screen_sitting, label, threshold)

    def sweep_rates(
        self,
        configs: Sequence[str],
        spec_for: Callable[[str, int, float], RunSpec],
        label: str,
        candidates: Sequence[float],
        gate: Gate | None = None,
        rule: str = "fastest",
        sitting: str = "rate-sweep",
    ) -> RateSweep:
        """The protocol's full rate sweep: every config at every candidate peak rate, each run
        `protocol.screen_twin(spec_for(config, SCREEN_SEED, rate))` (a seed no report uses, validated on
        the tuning stream), in one sitting; `protocol.choose_rates` then picks each config's rate by
        `rule` (`verdicts.TUNE_RULES`) against the gate on the tuning stream and writes
        `data/rate choices.json`. Unlike `screen_rates`, which tries lower rates only where a shared
        one fails, every config runs every candidate, so each one's rate is the best of the same
        candidates. Every config must be the same task on the same prompts (one gate scores them all),
        and `spec_for` must label each run with its config under `label` and name runs apart by rate
        (`protocol.run_name`); all of it is checked before any training."""
        gate = gate or Gate()
        configs = list(configs)
        require(len(configs) > 0 and all(isinstance(c, str) for c in configs) and len(set(configs)) == len(configs),
                f"sweep_rates: configs={configs!r} must be distinct names, at least one")
        candidates = tuple(candidates)
        require(
            len(candidates) >= 2 and all(is_real(lr) and lr > 0 for lr in candidates)
            and len(set(candidates)) == len(candidates),
            f"sweep_rates: candidates={candidates!r} must be at least 2 distinct peak rates > 0",
        )
        require(rule in TUNE_RULES, f"sweep_rates: rule={rule!r} is not allowed; choose one of {TUNE_RULES}")
        specs = [screen_twin(spec_for(config, SCREEN_SEED, lr)) for config in configs for lr in candidates]
        self._check_screen_specs(specs, configs, candidates, label)
        threshold = tuning_threshold(specs[0], gate)
        runs = self.run(specs, sitting=sitting)
        lr, table = choose_rates(self.out, {c: runs.where(**{label: c}) for c in configs}, threshold, rule)
        return RateSweep(runs, lr, table, threshold, dict(self.grid), candidates, label)

    def budget_ladder(
        self,
        configs: Sequence[str],
        spec_for: Callable[[str, int, float], RunSpec],
        label: str,
        lr: Mapping[str, float],
        factors: Sequence[int] = (1, 2, 4, 8),
        gate: Gate | None = None,
        sitting: str = "budget-ladder",
    ) -> BudgetLadder:
        """The budget chosen by the protocol, on the screen seed and the tuning stream: each config's
        screen run at its rate `lr[config]` (the rate sweep's run, read from the cache) and, while it is
        above the gate, again from scratch with each larger factor of the steps in turn
        (`protocol.longer_twin`, sittings "<sitting>-x<factor>"). The grid's budget is the largest
        factor some config needed to pass, so every config passes at it; when a config passed at no
        rung, the top factor, and the steps each config needs to reach the gate are then the answer a
        report can give. `factors` start at 1 and rise; checked, with `lr`, before any training."""
        gate = gate or Gate()
        configs = list(configs)
        factors = tuple(factors)
        require(
            len(factors) > 0 and factors[0] == 1 and all(is_int(f) for f in factors)
            and all(a < b for a, b in zip(factors, factors[1:], strict=False)),
            f"budget_ladder: factors={factors!r} must be rising integers starting at 1 (the base budget)",
        )
        missing = [c for c in configs if c not in lr or not (is_real(lr[c]) and lr[c] > 0)]
        require(len(configs) > 0 and not missing,
                f"budget_ladder: lr={dict(lr)!r} must give a peak rate > 0 for every config; missing or bad: {missing}")
        base = {c: spec_for(c, SCREEN_SEED, lr[c]) for c in configs}
        rung = lambda c, f: screen_twin(base[c] if f == 1 else longer_twin(base[c], f))
        self._check_screen_specs([rung(c, f) for c in configs for f in factors], configs, (), label)
        threshold = tuning_threshold(rung(configs[0], 1), gate)
        passed_at: dict[str, int | None] = {c: None for c in configs}
        runs: list[dict] = []
        wall, sittings = 0.0, {}
        for factor in factors:
            climbing = [c for c in configs if passed_at[c] is None]
            if not climbing:
                break
            results = self.run([rung(c, factor) for c in climbing], sitting=f"{sitting}-x{factor}")
            runs += list(results)
            wall += self.grid["wall_time_s"]
            sittings = self.grid
            for c in climbing:
                if verdict(results.where(**{label: c}), threshold, gate).trained:
                    passed_at[c] = factor
        chosen = factors[-1] if None in passed_at.values() else max(passed_at.values())
        steps = base[configs[0]].train.steps
        ladder = Results(runs)
        table = ladder_table(ladder, configs, factors, steps, threshold, label)
        return BudgetLadder(ladder, factors, steps, passed_at, chosen, table, threshold,
                            {**sittings, "wall_time_s": wall}, label)

    def _check_screen_specs(
        self, specs: Sequence[RunSpec], configs: Sequence[str], candidates: Sequence[float], label: str
    ) -> None:
        """What `sweep_rates` and `budget_ladder` need of `spec_for`, checked before any training: each run
        labelled with its config under `label`, distinct names, and one task on one prompt set."""
        names = [spec.name for spec in specs]
        require(len(set(names)) == len(names),
                f"spec_for gives two runs one name ({sorted({n for n in names if names.count(n) > 1})}); name them "
                f"apart by rate and budget (protocol.run_name)")
        unlabelled = [spec.name for spec in specs if spec.labels.get(label) not in configs]
        require(not unlabelled, f"spec_for must label each run with its config under {label!r}; {unlabelled} do not")
        prompts = {json.dumps([spec.task, spec.train.n_points, spec.train.eval_prompts], sort_keys=True)
                   for spec in specs}
        require(len(prompts) == 1, f"one gate scores every run, so every config must be one task on one prompt set; "
                f"got {len(prompts)}")

    def budget_check(self, specs: Sequence[RunSpec], longer: Sequence[RunSpec] | int = 2) -> BudgetCheck:
        """What the budget does to a configuration's numbers: `specs` (one configuration's seeds, as
        the grid ran them; read from the cache) and each again from scratch with more steps, in sitting
        "budget-check": `longer` gives those runs (the notebook's own specs, so that a longer run it
        also makes for another stage is the same run), or an integer factor (`protocol.longer_twin`).
        Returns a `BudgetCheck`: the held-out last-loop error per seed at both budgets and the paired
        ratio longer / preset with its interval (`verdicts.PairedTest`), so a reader sees how far from
        converged the numbers are. `results` and `grid` stay the grid's (`budget_checks`)."""
        specs = list(specs)
        longer = [longer_twin(spec, longer) for spec in specs] if isinstance(longer, int) else list(longer)
        return self._budget_checks({None: (specs, longer)})[None]

    def budget_checks(
        self, groups: Mapping[Any, Sequence[RunSpec]], factor: int = 2, sitting: str = "budget-check"
    ) -> dict[Any, BudgetCheck]:
        """`budget_check` of several configurations in one sitting: `groups` maps a key (a configuration) to
        its seeds as the grid ran them (read from the cache), and each spec trains again from scratch with
        `factor` x the steps (`protocol.longer_twin`: named `<stem>_x<factor>steps_<seed>`, labelled "budget":
        "x<factor>"). Returns {key: `BudgetCheck`}, whose `longer_runs` are what `verdicts.Comparisons.budget`
        compares (the budget check of a report's primary comparisons, issue 38). `results` and `grid` stay the
        grid's (the sitting before this call), so the report's tables and wall time are the grid's; the longer
        runs are in the checks and in `computed`."""
        require(is_int(factor) and factor >= 2, f"budget_checks: factor={factor!r} must be an integer >= 2")
        groups = {key: list(specs) for key, specs in groups.items()}
        empty = [key for key, specs in groups.items() if not specs]
        require(len(groups) > 0 and not empty,
                f"budget_checks: groups must map each configuration to its seeds' specs, at least one; empty: {empty}")
        pairs = {key: (specs, [longer_twin(spec, factor) for spec in specs]) for key, specs in groups.items()}
        return self._budget_checks(pairs, sitting)

    def primary_checks(
        self,
        primaries: Any,
        spec_for: Callable[[Any, int], RunSpec],
        longer: Callable[[Any, int], RunSpec] | None = None,
    ) -> dict[Any, BudgetCheck]:
        """The budget check of a report's primary comparisons (`plan.Primaries`): each configuration's
        `longer_seeds`, `spec_for(key, seed)` as the grid ran them, again with `factor` x the steps
        (in a sitting of its own, `data/primary-checks.json`, so that a reference's budget
        check keeps its record). `longer(key, seed)` gives those runs where the notebook names its own longer
        runs (as `budget_check`'s `longer`: a budget check or probe it committed before under its own name and
        labels is then the same run, read and not trained again); by default `protocol.longer_twin`."""
        require(len(primaries.configs) > 0 and len(primaries.longer_seeds) > 0,
                "primary_checks: the primaries name no configuration or no longer_seeds; there is nothing to check")
        factor = primaries.factor
        longer = longer or (lambda key, seed: longer_twin(spec_for(key, seed), factor))
        pairs = {key: ([spec_for(key, seed) for seed in primaries.longer_seeds],
                       [longer(key, seed) for seed in primaries.longer_seeds]) for key in primaries.configs}
        wrong = [twin.name for specs, twins in pairs.values() for spec, twin in zip(specs, twins, strict=True)
                 if twin.train.steps != factor * spec.train.steps]  # fmt: skip
        require(not wrong, f"primary_checks: {wrong} do not train {factor}x their run's steps (Primaries.factor)")
        return self._budget_checks(pairs, "primary-checks")

    def _budget_checks(
        self, pairs: Mapping[Any, tuple[list[RunSpec], list[RunSpec]]], sitting: str = "budget-check"
    ) -> dict[Any, BudgetCheck]:
        """The budget checks of `pairs` ({key: (the grid's specs, their longer runs)}): each longer run checked to
        be its spec with only more steps, then the grid's specs (cache) and every longer run in one sitting."""
        factors = {}
        for key, (specs, longer) in pairs.items():
            require(len(specs) > 0 and len(longer) == len(specs),
                    f"budget_check: {len(specs)} specs and {len(longer)} longer runs; give one longer run per spec")
            factor = longer[0].train.steps // specs[0].train.steps
            for spec, twin in zip(specs, longer, strict=True):
                same = (twin.model == spec.model and twin.task == spec.task
                        and replace(twin.train, steps=spec.train.steps) == spec.train)
                require(same and twin.train.steps == factor * spec.train.steps and factor > 1,
                        f"budget_check: {twin.name!r} is not {spec.name!r} with {factor}x the steps "
                        "(only steps may differ)")
            factors[key] = factor
        results, grid = self.results, self.grid
        base = self.run([spec for specs, _ in pairs.values() for spec in specs], sitting="grid")
        base_grid = dict(self.grid)
        longer_runs = self.run([twin for _, longer in pairs.values() for twin in longer], sitting=sitting)
        # The grid's tables and wall time stay the report's (the base's, when no grid ran before); the longer runs
        # are returned in the checks.
        self.results, self.grid = (results, grid) if grid else (base, base_grid)
        last_loop = lambda results: results.values(lambda r: r["loop_errors"][-1])
        pick = lambda results, specs: Results(r for r in results if r["spec"]["name"] in {s.name for s in specs})
        checks = {}
        for key, (specs, longer) in pairs.items():
            mine, theirs = pick(base, specs), pick(longer_runs, longer)
            checks[key] = BudgetCheck(specs[0].train.steps, factors[key], last_loop(mine), last_loop(theirs),
                                      paired(theirs, mine).test(), theirs)
        return checks

    def step_times(self, runs: Mapping[str, RunSpec], steps: int = 20, warmup: int = 3) -> dict:
        """What one CPU training step of each of `runs` ({label: spec}) costs (`utils.step_times`:
        timed round-robin in this process), measured once and kept in `data/step times.json`; a
        later sitting reads that file, so re-rendering a report does not change its numbers. Measured
        again only when the labels differ. Returns {"hardware", "steps", "warmup", "ms per step":
        {label: ms}}."""
        path = self.out / "data" / "step times.json"
        kept = read_json(path) if path.exists() else None
        if kept is not None and sorted(kept["ms per step"]) == sorted(runs):
            return kept
        ms = step_times(
            {label: (spec.model, spec.train, task_from_dict(spec.task)) for label, spec in runs.items()}, steps, warmup
        )
        measured = {"hardware": hardware(), "steps": steps, "warmup": warmup, "ms per step": ms}
        write_json(path, measured)
        return read_json(path)  # as a later sitting will read it (JSON's key order and floats), so reports agree

    def per_run(self, name: str, records: Iterable[dict], compute: Callable[[dict], Any]) -> dict[str, Any]:
        """`compute(record)` for each of `records`, kept in `data/<name>.json` ({run name: value}):
        what is read from a run's saved model (which stays local) is computed in the sitting that
        trained it, and every later sitting, on any clone, reads the committed file. Only the runs
        the file lacks are computed; the file is written after each, so an interrupted sitting keeps
        what it had, and each write merges the file as it is then, so a second sitting on the same
        folder loses none of the first's values. Returns {run name: value} for `records`, as JSON
        reads it back."""
        path = self.out / "data" / f"{name}.json"
        read = lambda: read_json(path) if path.exists() else {}
        kept = read()
        records = list(records)
        for record in records:
            run = record["spec"]["name"]
            if run not in kept:
                value = compute(record)
                with exclusive(path.with_name(path.name + ".lock")):  # read, merge and write as one step
                    write_json(path, {**read(), run: value})
                kept = read()  # as a later sitting will read it (lists, JSON's floats), so reports agree
        return {record["spec"]["name"]: kept[record["spec"]["name"]] for record in records}

    def model(self, record: Mapping[str, Any]):
        """The trained model of a run of this experiment, rebuilt from its saved weights (`storage.load_run`): what
        `per_run` computations read."""
        return load_run(self.out / "models" / record["spec"]["name"])[0]

    def figure(self, fig, name: str) -> Path:
        """Save `fig` as `<out>/<name>.svg` (atomic, byte-stable; integer ticks on an axis of integers,
        `plots.integer_ticks`), close it and show it."""
        path = self.out / (name if name.endswith(".svg") else f"{name}.svg")
        plots.integer_ticks(fig)
        save_svg(fig, path)
        plots.plt.close(fig)
        try:
            from IPython.display import display

            display(fig)
        except ImportError:  # outside IPython there is nothing to show
            pass
        return path

    def heldout_baselines(self, task, train: TrainConfig, names: Sequence[str] | None = None) -> tuple:
        """The held-out prompts of `train` (tokens, ys) and the classical estimators' error at
        every position on them ({name: [P]}; `names` picks estimators), divided by the task's error
        scale as the runs' errors are (d for linear regression, the sparsity for sparse regression)."""
        heldout = heldout_prompts(task, train.eval_prompts, train.n_points, train.eval_seed)
        chosen = {} if names is None else {"names": tuple(names)}
        return heldout, baseline_position_errors(*heldout, scale=error_scale(task), **chosen)

    def error_vs_examples(
        self,
        groups: Mapping[str, Results],
        baselines: Mapping[str, Sequence[float]],
        width: float = 7,
        height: float = 4.5,
        legend_size: float = 6,
        name: str = "error vs examples",
    ) -> Path:
        """The one-panel error-against-examples figure: each group's last-loop error at every
        position beside the classical estimators (`heldout_baselines`)."""
        fig, axes = plots.subplots(1, 1, width=width, height=height)
        curves = {label: results.position_errors() for label, results in groups.items()}
        plots.error_vs_examples(axes[0, 0], curves, baselines)
        axes[0, 0].set_ylabel("squared error / d (last loop)")
        axes[0, 0].legend(fontsize=legend_size)
        return self.figure(fig, name)

    def comparison_figure(
        self,
        groups: Mapping[str, Results],
        b_train: int,
        extrapolation_b: Sequence[int],
        validation_threshold: float | None = None,
        dashed: Iterable[str] = (),
        name: str = "comparison",
    ) -> Path:
        """The three panels of a comparison across variants, each variant a band over its seeds (`plots.band`, in
        `COLORS` order): training (the training loss; with `validation_threshold`, the held-out validations during
        training with the gate dotted, for objectives whose losses are not comparable), the last loop's error
        over eval b (`extrapolation_b`, b_train dotted) and the query error of each loop 1..b_train. `dashed`:
        the variants drawn dashed (a budget probe)."""
        validation = validation_threshold is not None
        fig, axes = plots.subplots(1, 3, width=5, height=4.2)
        for ax in axes[0, 0 if validation else 1 :]:
            ax.set_yscale("log")  # before the bands, so that they are clipped for a log axis
        every = max(1, min(r["spec"]["train"]["steps"] for runs in groups.values() for r in runs) // 100)
        for i, (label, runs) in enumerate(groups.items()):
            line = dict(color=plots.COLORS[i % len(plots.COLORS)], linestyle="--" if label in dashed else "-")
            done = runs.finished
            if validation:
                steps = [e["step"] for e in done[0]["train"]["evals"]] if done else []
                rows = [[e["last_loop"] for e in r["train"]["evals"]] for r in done]
            else:  # every `every`-th step's loss, over each run's own steps (a budget probe's are longer)
                steps = range(0, max(r["spec"]["train"]["steps"] for r in runs), every)
                rows = [r["train"]["loss"][::every] for r in done]
            plots.band(axes[0, 0], steps, rows, label, **line)
            plots.band(axes[0, 1], extrapolation_b, runs.curves("last_loop"), label, **line)
            plots.band(axes[0, 2], range(1, b_train + 1), [r["loop_errors"] for r in done], label, **line)
        if validation:
            axes[0, 0].axhline(validation_threshold, color="gray", linestyle=":", linewidth=1)
            axes[0, 0].set_ylabel(f"held-out query error, loop {b_train}")
        else:  # the loss band's lower edge is drawn as computed, unclipped
            axes[0, 0].set_yscale("log")
        axes[0, 0].set_xlabel("step")
        axes[0, 0].set_title("validation during training" if validation else "training loss")
        axes[0, 1].axvline(b_train, color="gray", linestyle=":")
        axes[0, 1].set_xlabel("eval b")
        axes[0, 1].set_title("extrapolation (last loop)")
        axes[0, 2].set_xlabel("loop")
        axes[0, 2].set_title(f"query error of each loop 1..{b_train}")
        axes[0, 2].legend(fontsize=6)
        return self.figure(fig, name)

    def final_errors_figure(
        self,
        groups: Sequence[Results],
        labels: Sequence[str],
        colors: Sequence[str],
        threshold: float,
        title: str = "",
        width: float = 12,
        height: float = 4.5,
        labelsize: float | None = None,
        ylabel: str = "held-out query error, last loop (dotted: the gate)",
        name: str = "performance 1",
    ) -> Path:
        """The one-panel figure every comparison report opens its results with: each group's final held-out errors,
        one dot per seed (`plots.final_errors_panel`: a box plot on a log axis with the gate dotted), `labelsize`
        the x labels' size where they are long."""
        fig, axes = plots.subplots(1, 1, width=width, height=height)
        plots.final_errors_panel(axes[0, 0], [group.final_errors() for group in groups], labels, colors, threshold)
        axes[0, 0].set_ylabel(ylabel)
        if title:
            axes[0, 0].set_title(title)
        if labelsize is not None:
            axes[0, 0].tick_params(axis="x", labelsize=labelsize)
        return self.figure(fig, name)

    def wall_time(self) -> str:
        """The report's wall-time cell of the grid (`report.wall_time_cell`)."""
        return wall_time_cell(self.grid, self.results.records)

    def hardware(self) -> str:
        """The report's hardware cell of the grid (`report.hardware_cell`)."""
        return hardware_cell(self.grid, self.results.records)

    def settings(self, rows: Mapping[str, Any]) -> str:
        """The design section's settings table: the preset, then `rows`, then the hardware
        and wall time of the grid (`report.settings_cells`)."""
        return settings_cells(self.preset, rows, self.grid, self.results.records)

    def divergence_section(self) -> str:
        """The report's closing section: which runs of the grid diverged and why (`report.divergence_section`)."""
        return divergence_section(self.results.records)

    @staticmethod
    def evaluation_rows(evaluation, extrapolation_note: str = "") -> dict[str, str]:
        """The settings rows every report shares for level 2 and the extrapolation (`report.evaluation_rows`)."""
        return evaluation_rows(evaluation, extrapolation_note)

    def learned_section(self, gate: Gate | Mapping[str, Gate] | None = None) -> tuple[str, str | None]:
        """The "did the models learn?" subsection of the grid's configurations (`report.learned_section`)."""
        return learned_section(self.results.configurations(), gate)

    def template(self, part: str | None = None) -> Path:
        """The report template (`part=None`) or one of its optional parts."""
        name = f"experiment {self.number}" + ("" if part is None else f" - {part}")
        return REPORTS / f"{name}.md"

    def write_report(
        self,
        values: Mapping[str, Any],
        parts: Sequence[str] = (),
        learned: bool = True,
        gate: Gate | Mapping[str, Gate] | None = None,
        answer: Answer | None = None,
    ) -> Path:
        """Fill the report template and the named optional parts (appended in order) with
        `values` and write `<out>/README.md`. Every placeholder must have a value and every
        value a placeholder (`fill_template`); `SHARED_TEXTS` fill the placeholders a template uses of
        them (`{verdict_rule}`: how a verdict is computed; `{screen_rule}`: how a rate screen chose).
        With `learned`, the "did the models learn?" subsection (`learned_section`) opens the
        template's "## Results" section and, when some
        configuration did not pass the gate, its verdict is repeated under every heading that
        draws conclusions ("## ... against these numbers", "## Conclusions ..."); `gate` as in
        `learned_section`. `answer`: the report's one-line answer, its strength and budget, placed
        under the title (`Answer`). Returns the path written."""
        texts = [self.template().read_text()] + [self.template(part).read_text() for part in parts]
        path = self.out / "README.md"
        report = render_report("".join(texts), values, (lambda: self.learned_section(gate)) if learned else None,
                               self.divergence_section(), answer, self.template().name)
        atomic_write_bytes(path, report.encode())
        print(f"wrote {path}")
        self.compare_with_committed()
        return path

    def compare_with_committed(self, committed_root: str | Path = ROOT) -> str | None:
        """When this sitting wrote somewhere else than the committed results under
        `committed_root` (a re-training with `LOOPED_RESULTS_ROOT`), compare its runs with the
        committed runs of the same names: print the table, write it to `<out>/reproduction.md`
        and return it. None otherwise (and for `smoke`, whose runs are never committed)."""
        committed_dir = results_dir(self.number, self.preset, root=committed_root)
        if self.preset == "smoke" or committed_dir.resolve() == self.out.resolve():
            return None
        committed = []
        for name in self.computed:
            path = committed_dir / "data" / f"{name}.json"
            if path.exists():
                committed.append(read_json(path))
        if not committed:
            return None
        table = reproduction_table(Results(committed), Results(list(self.computed.values())))
        text = (
            f"## Re-trained against the committed runs\n\nThis sitting ({self.out}) against the committed runs "
            f"in {committed_dir}, run by run (same names and seeds): {REPRODUCTION_METRIC}.\n\n{table}\n"
        )
        atomic_write_bytes(self.out / "reproduction.md", text.encode())
        print(text)
        return text


@dataclass(frozen=True)
class BudgetCheck:
    """A configuration's held-out last-loop error per seed after `steps` and after `factor` times
    them (each a fresh run with its own schedule), the paired test of longer / preset, and the longer
    runs themselves (`longer_runs`, for `verdicts.Comparisons.budget`)."""

    steps: int
    factor: int
    errors: list[float]
    longer_errors: list[float]
    test: PairedTest
    longer_runs: Results = field(default_factory=lambda: Results([]), compare=False, repr=False)  # the longer runs

    def ratio(self) -> str:
        """'x0.52 (95% CI 0.41 to 0.66; per seed 0.48, 0.52, 0.57)', or why it is not measurable."""
        if not self.test.testable:
            return "not measurable (fewer than 2 finished seeds)"
        return self.test.estimate()

    def short(self) -> str:
        """For a one-line answer: '2x the steps: x0.52 (95% CI 0.41 to 0.66)'."""
        if not self.test.testable:
            return f"{self.factor}x the steps: {self.ratio()}"
        low, high = self.test.interval()
        return (f"{self.factor}x the steps: x{plots.fmt(self.test.geometric_mean)} "
                f"(95% CI {plots.fmt(low)} to {plots.fmt(high)})")

    def __str__(self) -> str:
        errors = lambda values: ", ".join(plots.fmt(e) for e in values)
        return (f"held-out last-loop error after {self.steps} steps {errors(self.errors)}, after "
                f"{self.steps * self.factor} steps {errors(self.longer_errors)}: {self.factor}x the steps multiply "
                f"it by {self.ratio()}")


REPRODUCTION_METRIC = "held-out query error of the last loop at the trained b, per configuration over its seeds"


def reproduction_table(committed: Results, retrained: Results) -> str:
    """Per configuration: whether the runs paired by name have the same spec (else the fields that
    differ, committed -> re-trained: a notebook edited since the commit compares other runs), the
    committed and the re-trained error (mean ± std over seeds, finished runs), the largest
    difference between the two runs of one seed, and whether every seed's training losses are
    bit-identical (as on one machine with the CPU's deterministic kernels)."""
    by_name = {record["spec"]["name"]: record for record in committed}
    rows = []
    for configuration, runs in retrained.configurations().items():
        pairs = [(by_name[name], record) for name, record in zip(runs.names, runs, strict=True) if name in by_name]
        if not pairs:
            continue
        old = Results([a for a, _ in pairs])
        new = Results([b for _, b in pairs])
        error = lambda record: record["loop_errors"][-1]
        finished = [(a, b) for a, b in pairs if a["train"]["status"] == b["train"]["status"] == "finished"]
        gap = max((abs(error(a) - error(b)) / max(abs(error(a)), 1e-12) for a, b in finished), default=float("nan"))
        identical = all(a["train"]["loss"] == b["train"]["loss"] for a, b in pairs)
        differences = sorted({field for a, b in pairs for field in spec_differences(a["spec"], b["spec"])})
        rows.append(
            [
                configuration,
                str(len(pairs)),
                "same" if not differences else "differs: " + "; ".join(differences),
                plots.mean_pm_std(old.values(error)),
                plots.mean_pm_std(new.values(error)),
                f"{gap:.2%}" if np.isfinite(gap) else "-",
                "yes" if identical else "no",
            ]
        )
    return plots.markdown_table(
        [
            "configuration",
            "seeds",
            "spec (committed -> re-trained)",
            "committed, mean ± std",
            "re-trained, mean ± std",
            "largest per-seed difference",
            "training losses bit-identical",
        ],
        rows,
    )


def spec_differences(committed: Mapping, retrained: Mapping, prefix: str = "") -> list[str]:
    """The fields in which two runs' spec dicts differ, as 'train.steps 3000 -> 20' (nested dicts by
    dotted path; a field one side lacks shows as '-'); the empty list when the specs are the same."""
    out = []
    for key in sorted(set(committed) | set(retrained)):
        a, b = committed.get(key, "-"), retrained.get(key, "-")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a} -> {b}")
    return out


@contextlib.contextmanager
def exclusive(lock: Path, timeout_s: float = 60.0):
    """Hold `lock` (a file created exclusively) for the `with` block, so that two sittings' read-merge-
    write of one side file cannot interleave; a lock older than `timeout_s` is a crashed writer's and
    is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            try:
                stale = time.time() - lock.stat().st_mtime > timeout_s
            except FileNotFoundError:
                continue
            if stale or time.monotonic() > deadline:
                lock.unlink(missing_ok=True)
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def tuning_threshold(spec: RunSpec, gate: Gate) -> float:
    """The gate a screen or tuning run is scored against: `gate` over the reference errors on the
    prompts `spec` validates on (the tuning stream)."""
    require(spec.train.eval_seed == TUNING_STREAM,
            f"run {spec.name!r} is validated on seed {spec.train.eval_seed}, not the tuning stream {TUNING_STREAM}")
    return gate.threshold(reference_errors(task_from_dict(spec.task), spec.train, reference_names(gate)))


def ladder_table(
    runs: Results, configs: Sequence[str], factors: Sequence[int], steps: int, threshold: float, label: str
) -> str:
    """The budget ladder's table: per config, at each rung the final error on the tuning stream and the
    first validated step under the gate ("-": the rung was not needed)."""
    rows = []
    for config in configs:
        cells = []
        for factor in factors:
            rung = [r for r in runs.where(**{label: config}) if r["spec"]["train"]["steps"] == factor * steps]
            if not rung:
                cells.append("-")
                continue
            error = final_error(rung[0])
            reached = steps_to_gate(rung[0], threshold) if error is not None else None
            cells.append("diverged" if error is None else f"{plots.fmt(error)} ({reached or 'not reached'})")
        rows.append([config, *cells])
    header = ["config", *(f"{f * steps} steps ({f}x): final error (step under the gate)" for f in factors)]
    return plots.markdown_table(header, rows)


@functools.cache
def loop_error_at(b: int, metric: str = "last_loop") -> Callable[[dict], float]:
    """The per-run reading "held-out error at eval loop count `b`" (`metric` as in `Results.extrapolation`): one
    function per (b, metric), so that a verdict drawn on it is found again by `Comparisons.result`."""

    def read(record: dict) -> float:
        table = record["level2"]["extrapolation"]
        return table[metric][table["b"].index(b)]

    return read


@functools.cache
def far_over_train(at: int, metric: str = "last_loop") -> Callable[[dict], float]:
    """The per-run reading "error at eval loop count `at` over the error at the run's own b_train" (how much worse
    a model gets far beyond its trained loops): one function per (at, metric), as `loop_error_at`."""

    def read(record: dict) -> float:
        table = record["level2"]["extrapolation"]
        trained = table["b"].index(record["spec"]["train"]["b"])
        return float(table[metric][table["b"].index(at)] / table[metric][trained])

    return read


def level2_launches(record: dict, metric: str = "reference", relative: bool = False) -> np.ndarray:
    """One run's level-2 launch errors. Each launch draws its test std from U(0, 2), so its error
    scales with std^2 as much as with the model: `relative` divides each launch by std^2, which
    for linear regression with unit-variance weights is the expected error of predicting 0 on
    that launch, and so removes the spread that comes from the draw of the test std."""
    launches = record["level2"]["launches"]
    errors = np.asarray(launches[metric], dtype=float)
    return errors / np.square(np.asarray(launches["std"], dtype=float)) if relative else errors


def level2_median(record: dict, metric: str = "reference", relative: bool = False) -> float:
    """The median of one run's level-2 launches (`level2_launches`): a value for `verdicts.paired`."""
    return float(np.median(level2_launches(record, metric, relative)))
