"""What a report may conclude: the convergence gate and paired comparisons across seeds.

Owns the rule "trained before compared":
- `Gate`: fixed before the runs. A configuration is *trained* when its held-out last-loop
  error at the query, mean over its seeds, is at most `fraction` of a reference error on the
  same prompts (linear regression: a tenth of predicting 0, which with unit-variance inputs is
  about a quarter of the averaging estimator's), and no seed is still improving over a
  constant-learning-rate tail. A configuration above the gate "did not learn at this budget":
  that is a finding about it, and it is never ranked by its error against trained ones.
- `reference_errors`: least squares, averaging (or other named estimators) and predicting 0
  at the query of a run's held-out prompt set.
- `final_error`, `steps_to_gate`, `tail_change`: one run's numbers, from its level-1
  validations (the fixed held-out set at 0%, every `eval_every` and 100% of training).
- `verdict`: one configuration's seeds against the gate; `learned_table`: the "did the models
  learn?" table every report opens its results with.
- `reference_names`: the estimators a gate needs beside least squares and averaging;
  `tune_rates`: the one rule that picks a peak learning rate from tuning runs.
- `paired`: two configurations compared on the seeds they share (the same seed draws the same
  training data, so a per-seed difference removes the data stream's share of the spread).
- `Comparisons`: a report's paired verdicts, drawn only between trained configurations, with its
  reference configuration's line and the count of verdicts drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from baselines import BASELINES, baseline_position_errors
from checks import require, require_choice, require_real
from configs import TrainConfig
from evaluation import error_scale, heldout_prompts
from plots import fmt, markdown_table

ZERO = "predicting 0"


@dataclass(frozen=True)
class Gate:
    """The convergence gate, fixed before the runs.

    reference: the error the gate is a fraction of, measured at the query of the held-out set:
               "predicting 0" or a `baselines.BASELINES` name.
    fraction:  a configuration passes when its mean error over seeds is at most fraction x
               the reference.
    tail, improving: a run whose error fell by more than `improving` (relative) over the last
               `tail` of its training, with a constant learning rate there, is still
               improving: "not trained". Under a decaying schedule the tail always looks flat,
               so it is not judged (`tail_change` gives None) and a longer run must decide.
    """

    reference: str = ZERO
    fraction: float = 0.1
    tail: float = 0.2
    improving: float = 0.1

    def __post_init__(self) -> None:
        choices = (ZERO, *BASELINES)
        require(self.reference in choices, f"Gate.reference={self.reference!r} is not allowed; choose one of {choices}")
        require_real("Gate.fraction", self.fraction, 0, 1, strict=True)
        require_real("Gate.tail", self.tail, 0, 1, strict=True)
        require_real("Gate.improving", self.improving, 0, 1, strict=True)

    def threshold(self, references: Mapping[str, float]) -> float:
        """The error a configuration must reach: fraction x references[reference]."""
        require(
            self.reference in references,
            f"the gate's reference {self.reference!r} is not among the reference errors {list(references)}",
        )
        return self.fraction * references[self.reference]

    def describe(self, references: Mapping[str, float]) -> str:
        """One line for a report: the threshold and what it is a fraction of."""
        return (
            f"mean held-out last-loop error over seeds at most {fmt(self.threshold(references))} "
            f"({self.fraction:g} x {self.reference}, {fmt(references[self.reference])}); a seed still "
            f"improving by more than {self.improving:.0%} over the last {self.tail:.0%} of training at a "
            "constant learning rate is not trained"
        )


def reference_errors(
    task, train: TrainConfig, names: Sequence[str] = ("least squares", "averaging")
) -> dict[str, float]:
    """Each named estimator's error and predicting 0's at the query of `train`'s held-out set
    (squared error / the task's error scale, as the runs' errors are)."""
    tokens, ys = heldout_prompts(task, train.eval_prompts, train.n_points, train.eval_seed)
    scale = error_scale(task)
    errors = {name: values[-1] for name, values in baseline_position_errors(tokens, ys, tuple(names), scale).items()}
    errors[ZERO] = float(ys[:, -1].square().mean() / scale)
    return errors


def reference_names(gate: Gate, names: Sequence[str] = ("least squares", "averaging")) -> tuple[str, ...]:
    """The estimators for `reference_errors` that a report shows beside `gate`: `names`, plus the
    gate's own reference when it is a named estimator not among them."""
    names = tuple(names)
    return names + ((gate.reference,) if gate.reference not in (*names, ZERO) else ())


TUNE_RULES = ("fastest", "lowest")


def tune_rates(
    groups: Mapping[str, Iterable[dict]],
    threshold: float,
    validated_on: str = "tuning stream",
    rule: str = "fastest",
) -> tuple[dict[str, float], str]:
    """Pick each model's peak learning rate from its tuning runs (one per candidate rate), the same
    way for every model. rule "fastest": the fewest steps to `threshold`; ties, and models where no
    candidate reaches it, by the lower final error. rule "lowest": the lower final error alone (for
    ranking at convergence, where a rate that is fast to the gate but ends higher must not win). A
    diverged run comes last either way. Returns ({model: chosen lr}, the table of every candidate
    tried, chosen or dropped); `validated_on` names, in its header, the prompts the runs were
    validated on."""
    require_choice("tune_rates rule", rule, TUNE_RULES)

    def rank(record: dict) -> tuple:
        error = final_error(record)
        if rule == "lowest":
            return (error is None, np.inf if error is None else error)
        step = None if error is None else steps_to_gate(record, threshold)
        return (error is None, step is None, step or 0, np.inf if error is None else error)

    groups = {model: list(records) for model, records in groups.items()}
    chosen = {model: min(records, key=rank)["spec"]["train"]["lr"] for model, records in groups.items()}
    rows = []
    for model, records in groups.items():
        for r in records:
            error = final_error(r)
            rows.append([
                model,
                f"{r['spec']['train']['lr']:g}",
                "diverged" if error is None else steps_to_gate(r, threshold) or "not reached",
                "" if error is None else fmt(error),
                "yes" if r["spec"]["train"]["lr"] == chosen[model] else "",
            ])
    header = ["model", "peak lr", "steps to the gate", f"final error ({validated_on})", "chosen"]
    return chosen, markdown_table(header, rows)


def final_error(record: dict) -> float | None:
    """The held-out last-loop error at the query after the last training step (None: the run
    did not finish)."""
    if record["train"]["status"] != "finished":
        return None
    return float(record["train"]["evals"][-1]["last_loop"])


def steps_to_gate(record: dict, threshold: float) -> int | None:
    """The first validated step whose held-out last-loop error is at most `threshold` (None:
    never, within the validations the run made)."""
    for entry in record["train"]["evals"]:
        if entry["last_loop"] <= threshold:
            return int(entry["step"])
    return None


def tail_change(record: dict, tail: float = 0.2) -> float | None:
    """The relative fall of the held-out last-loop error over the last `tail` of training:
    (error at the last validation at or before (1 - tail) x steps - final error) / the former.
    None when it cannot say: the run did not finish, or the learning rate was not constant
    over that tail (a decaying schedule always looks flat at the end)."""
    error = final_error(record)
    if error is None:
        return None
    config = TrainConfig(**record["spec"]["train"])
    start = (1 - tail) * config.steps
    if config.lr_schedule != "constant" or config.warmup_steps() > start:
        return None
    before = [entry for entry in record["train"]["evals"] if entry["step"] <= start]
    if not before:
        return None
    return (before[-1]["last_loop"] - error) / before[-1]["last_loop"]


@dataclass(frozen=True)
class Verdict:
    """One configuration against the gate. status: "trained", "not trained (still improving)",
    "did not learn at this budget" or "no finished run"."""

    errors: tuple[float, ...]  # each finished seed's final error, in order
    seeds: int  # runs, finished or not
    passed: int  # seeds whose own error is under the threshold
    mean: float | None
    tail: tuple[float | None, ...]  # each finished seed's tail change
    status: str

    @property
    def trained(self) -> bool:
        return self.status == "trained"

    def describe(self) -> str:
        """'trained, 3 of 3 seeds under the gate'."""
        return f"{self.status}, {self.passed} of {self.seeds} seeds under the gate"


def verdict(records: Iterable[dict], threshold: float, gate: Gate | None = None) -> Verdict:
    """The verdict of one configuration (its seeds' records) at `threshold`."""
    gate = Gate() if gate is None else gate
    records = list(records)
    finished = [r for r in records if final_error(r) is not None]
    errors = tuple(final_error(r) for r in finished)
    tails = tuple(tail_change(r, gate.tail) for r in finished)
    passed = sum(e <= threshold for e in errors)
    mean = float(np.mean(errors)) if errors else None
    if mean is None:
        status = "no finished run"
    elif mean > threshold:
        status = "did not learn at this budget"
    elif any(t is not None and t > gate.improving for t in tails):
        status = "not trained (still improving)"
    else:
        status = "trained"
    return Verdict(errors, len(records), passed, mean, tails, status)


def learned_table(
    groups: Mapping[str, Iterable[dict]], references: Mapping[str, float], gate: Gate | None = None
) -> str:
    """The "did the models learn?" table: per configuration, each seed's held-out last-loop
    error, their mean against averaging and predicting 0, how many seeds passed, the tail change
    and the verdict; a first line states the gate and the reference errors on the same prompts."""
    gate = Gate() if gate is None else gate
    threshold = gate.threshold(references)
    rows = []
    for label, records in groups.items():
        v = verdict(records, threshold, gate)
        tails = [t for t in v.tail if t is not None]
        rows.append(
            [
                label,
                ", ".join(fmt(e) for e in v.errors) or "-",
                fmt(v.mean) if v.mean is not None else "-",
                _ratio(v.mean, references.get("averaging")),
                _ratio(v.mean, references[ZERO]),
                f"{v.passed} of {v.seeds}",
                ", ".join(f"{0.0 - t:+.0%}" for t in tails) if tails else "not judged (decaying lr)",
                v.status,
            ]
        )
    header = ["configuration", "error per seed", "mean", "/ averaging", f"/ {ZERO}", "seeds under gate",
              "change over the tail", "verdict"]  # fmt: skip
    refs = ", ".join(f"{name} {fmt(value)}" for name, value in references.items())
    return f"Gate: {gate.describe(references)}. On the same prompts: {refs}.\n\n" + markdown_table(header, rows)


def trained_groups(
    groups: Mapping[str, Iterable[dict]], references: Mapping[str, float], gate: Gate | None = None
) -> list[str]:
    """The labels of the configurations that pass the gate (those a verdict may rank)."""
    gate = Gate() if gate is None else gate
    threshold = gate.threshold(references)
    return [label for label, records in groups.items() if verdict(records, threshold, gate).trained]


@dataclass(frozen=True)
class Paired:
    """a - b on the seeds both have (`paired`)."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]  # a - b, one per shared seed
    ratios: tuple[float, ...]  # a / b, one per shared seed

    @property
    def lower(self) -> int:
        """Seeds on which a is lower than b."""
        return sum(d < 0 for d in self.differences)

    @property
    def unanimous(self) -> bool:
        """At least 3 shared seeds, and a is lower on all of them or higher on all of them."""
        n = len(self.seeds)
        return n >= 3 and (self.lower == n or all(d > 0 for d in self.differences))

    def describe(self) -> str:
        """'a/b per seed 0.52, 0.61, 0.48 (a lower on 3 of 3 seeds)'."""
        if not self.seeds:
            return "no shared seeds"
        ratios = ", ".join(fmt(r, 2) for r in self.ratios)
        return f"a/b per seed {ratios} (a lower on {self.lower} of {len(self.seeds)} seeds)"

    def verdict(self) -> str:
        """'lower' / 'higher' only when every shared seed (at least 3) agrees; else 'too close
        to tell'. With 3 seeds a sign test cannot do better than 1 in 8 by chance, so a
        unanimous split is the weakest claim made, and it is stated with its seed count."""
        n = len(self.seeds)
        if self.unanimous:
            return f"{'lower' if self.lower else 'higher'} on all {n} seeds"
        return f"too close to tell ({self.lower} of {n} seeds lower)"


def paired(a: Iterable[dict], b: Iterable[dict], value=final_error) -> Paired:
    """Configuration a against b on the training seeds both finished: `value(record)` per run
    (default `final_error`), matched by `TrainConfig.seed`."""

    def by_seed(records: Iterable[dict]) -> dict[int, float]:
        return {
            r["spec"]["train"]["seed"]: value(r)
            for r in records
            if r["train"]["status"] == "finished" and value(r) is not None
        }

    left, right = by_seed(a), by_seed(b)
    seeds = tuple(sorted(set(left) & set(right)))
    return Paired(
        seeds,
        tuple(left[s] - right[s] for s in seeds),
        tuple(left[s] / right[s] if right[s] else float("inf") for s in seeds),
    )


K = TypeVar("K", bound=Hashable)


class Comparisons(Generic[K]):
    """A report's paired verdicts, each drawn only between two trained configurations.

    status:   each configuration's `Verdict`, by key (any hashable: a name, or a tuple such as
              (model, b_train)).
    runs:     a key's records, its seeds (for tuple keys, e.g. `lambda key: runs(*key)`).
    label:    how a key is named when it is not compared (default `str`).
    excluded: {key: reason} for configurations that pass the gate but are still not compared,
              e.g. "screened with one seed".

    `compared(a, b, value)` is "verdict (per-seed ratios)" of a against b (`paired`), or
    "not compared: <label> <why>; ..." naming each of the two that did not pass the gate
    (its status), then each that passed but is excluded. Every verdict drawn is kept in `drawn`,
    in order, for `count`.
    """

    def __init__(
        self,
        status: Mapping[K, Verdict],
        runs: Callable[[K], Iterable[dict]],
        label: Callable[[K], str] = str,
        excluded: Mapping[K, str] | None = None,
    ) -> None:
        self.status = status
        self.runs = runs
        self.label = label
        self.excluded = dict(excluded or {})
        self.drawn: list[Paired] = []

    def __call__(self, a: K, b: K, value: Callable[[dict], float | None] = final_error, prefix: str = "") -> str:
        """a against b on `value` per run (default `final_error`): prefix + "lower on all 3 seeds
        (a/b per seed ...)", or "not compared: ..." (no prefix) when either did not pass the gate
        or is excluded; only a drawn verdict is kept in `drawn`."""
        why = [f"{self.label(k)} {self.status[k].status}" for k in (a, b) if not self.status[k].trained]
        why += [f"{self.label(k)} {self.excluded[k]}" for k in (a, b) if k in self.excluded and self.status[k].trained]
        if why:
            return "not compared: " + "; ".join(why)
        result = paired(self.runs(a), self.runs(b), value)
        self.drawn.append(result)
        return f"{prefix}{result.verdict()} ({result.describe()})"

    def reference(self, key: K, note: str) -> str:
        """The report's line on its reference configuration, which must pass the gate for the recipe
        to count as working: "- **Reference configuration** <note>: trained, 3 of 3 seeds under the
        gate."."""
        return f"- **Reference configuration** {note}: {self.status[key].describe()}."

    def count(self, others: str = "a configuration that did not pass the gate") -> str:
        """The sentence after the verdicts: how many were drawn, how many unanimous across seeds,
        and what `others`, every comparison not drawn, involved."""
        unanimous = sum(p.unanimous for p in self.drawn)
        return (f"{len(self.drawn)} paired verdicts were drawn ({unanimous} of them unanimous across seeds); "
                f"every other comparison involves {others}.")


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return fmt(value / reference, 2)
