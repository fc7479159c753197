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
  training data, so a per-seed difference removes the data stream's share of the spread); `Reading`,
  a named per-run value to compare on (an error at k examples, at an eval loop count).
- `Comparisons`: a report's paired verdicts, drawn only between trained configurations, with its
  reference configuration's line and the count of verdicts drawn; for its primary comparisons, the test on
  the seeds added after they were fixed (`on_seeds`, descriptive), the budget check (`budget`) and the
  report's "Primary comparisons" section (`primary_section`).
- `BudgetRobustness` (`budget_rule`, `budget_classes`, `ratio_of_ratios`): whether a ranking survives twice
  the steps, by the rule fixed before the runs: budget-robust, budget-sensitive or not resolved at 2x.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from baselines import BASELINES, baseline_position_errors
from checks import is_int, is_real, require, require_choice, require_int, require_real
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

    def describe(self, references: Mapping[str, float], tail_judged: bool = True) -> str:
        """One line for a report: the threshold, what it is a fraction of, and how a seed stuck at
        predicting 0 counts. `tail_judged`: some run had a constant-rate tail, so the "still improving"
        clause was evaluated; when no run had one (every run on a decaying schedule) the clause is left
        out, since it decided nothing."""
        line = (
            f"mean held-out last-loop error over seeds at most {fmt(self.threshold(references))} "
            f"({self.fraction:g} x {self.reference}, {fmt(references[self.reference])}); the mean counts every "
            "seed, so one seed left at predicting 0 fails its configuration whatever the others reach (the "
            "table gives k of n seeds under the gate)"
        )
        if tail_judged:
            line += (
                f"; a seed still improving by more than {self.improving:.0%} over the last {self.tail:.0%} of "
                "training at a constant learning rate is not trained"
            )
        return line


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
    threshold: float | None = None  # the gate it was judged against

    @property
    def trained(self) -> bool:
        return self.status == "trained"

    def distance(self) -> str:
        """How far from the gate, for a gate contrast: 'mean 0.117 against the gate 0.103, 1 of 3 seeds
        under'."""
        if self.mean is None or self.threshold is None:
            return f"{self.passed} of {self.seeds} seeds under the gate"
        gate = f"mean {fmt(self.mean)} against the gate {fmt(self.threshold)}"
        return f"{gate}, {self.passed} of {self.seeds} seeds under"

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
    return Verdict(errors, len(records), passed, mean, tails, status, threshold)


def learned_table(
    groups: Mapping[str, Iterable[dict]], references: Mapping[str, float], gate: Gate | None = None
) -> str:
    """The "did the models learn?" table: per configuration, each seed's held-out last-loop
    error, their mean against averaging and predicting 0, how many seeds passed, the tail change
    and the verdict; a first line states the gate and the reference errors on the same prompts."""
    gate = Gate() if gate is None else gate
    threshold = gate.threshold(references)
    verdicts = {label: verdict(records, threshold, gate) for label, records in groups.items()}
    tail_judged = any(t is not None for v in verdicts.values() for t in v.tail)
    rows = []
    for label, v in verdicts.items():
        tails = [t for t in v.tail if t is not None]
        tail = [", ".join(f"{0.0 - t:+.0%}" for t in tails) if tails else "not judged (decaying lr)"]
        rows.append(
            [
                label,
                ", ".join(fmt(e) for e in v.errors) or "-",
                fmt(v.mean) if v.mean is not None else "-",
                _ratio(v.mean, references.get("averaging")),
                _ratio(v.mean, references[ZERO]),
                f"{v.passed} of {v.seeds}",
                *(tail if tail_judged else []),
                v.status,
            ]
        )
    header = ["configuration", "error per seed", "mean", "/ averaging", f"/ {ZERO}", "seeds under gate",
              *(["change over the tail"] if tail_judged else []), "verdict"]  # fmt: skip
    refs = ", ".join(f"{name} {fmt(value)}" for name, value in references.items())
    gate_line = gate.describe(references, tail_judged)
    return f"Gate: {gate_line}. On the same prompts: {refs}.\n\n" + markdown_table(header, rows)


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

    def test(self) -> PairedTest:
        """The verdict rule's paired test of these per-seed ratios."""
        return PairedTest(self.seeds, self.ratios)

    def describe(self) -> str:
        """'a/b per seed 0.52, 0.61, 0.48 (a lower on 3 of 3 seeds)'."""
        if not self.seeds:
            return "no shared seeds"
        ratios = ", ".join(fmt(r, 2) for r in self.ratios)
        return f"a/b per seed {ratios} (a lower on {self.lower} of {len(self.seeds)} seeds)"

    def verdict(self) -> str:
        """The earlier rule, kept for the reports not yet re-rendered: 'lower' / 'higher' when every
        shared seed (at least 3) agrees, else 'too close to tell'. With no difference, 3 seeds agree by
        chance one time in four (two-sided), so this is no test: new verdicts use `Comparisons`."""
        n = len(self.seeds)
        if self.unanimous:
            return f"{'lower' if self.lower else 'higher'} on all {n} seeds"
        return f"too close to tell ({self.lower} of {n} seeds lower)"


@dataclass(frozen=True)
class Reading:
    """A named per-run value to compare on, e.g. Reading("error at k = 4", lambda r: ...): called like the
    function it wraps, and named where a report lists its primary comparisons. Hashable, so that a
    comparison keyed by its value is found again (`Comparisons.result`)."""

    name: str
    get: Callable[[dict], float | None]

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and self.name.strip() != "", f"Reading.name={self.name!r} must be non-empty")
        require(callable(self.get), f"Reading.get={self.get!r} must be a function of one run record")

    def __call__(self, record: dict) -> float | None:
        return self.get(record)


# What a comparison reads per run: one function for both sides, or (a's, b's) when the two sides are read
# differently (one configuration at two loop counts; a model against an estimator on the same prompts).
Value = Callable[[dict], float | None] | tuple[Callable[[dict], float | None], Callable[[dict], float | None]]


def _sides(value: Value, field: str = "value") -> tuple[Callable[[dict], float | None], Callable[[dict], float | None]]:
    """(a's reading, b's reading) of a `Value`; ValueError naming `field` for anything else."""
    if isinstance(value, tuple):
        require(
            len(value) == 2 and all(callable(v) for v in value),
            f"{field}={value!r} must be a function of one run record or a pair of them (a's, b's)",
        )
        return value
    require(callable(value), f"{field}={value!r} must be a function of one run record or a pair of them (a's, b's)")
    return value, value


def paired(a: Iterable[dict], b: Iterable[dict], value: Value = final_error) -> Paired:
    """Configuration a against b on the training seeds both finished: `value(record)` per run
    (default `final_error`; a pair (read_a, read_b) reads each side its own way), matched by
    `TrainConfig.seed`."""
    read_a, read_b = _sides(value)

    def by_seed(records: Iterable[dict], read: Callable[[dict], float | None]) -> dict[int, float]:
        return {
            r["spec"]["train"]["seed"]: read(r)
            for r in records
            if r["train"]["status"] == "finished" and read(r) is not None
        }

    left, right = by_seed(a, read_a), by_seed(b, read_b)
    seeds = tuple(sorted(set(left) & set(right)))
    return Paired(
        seeds,
        tuple(left[s] - right[s] for s in seeds),
        tuple(left[s] / right[s] if right[s] else float("inf") for s in seeds),
    )


# The verdict rule. With 3 to 6 seeds a sign test cannot call anything at a corrected 5% (its smallest
# two-sided p is 2/2^n: 0.25 with 3 seeds, 0.031 with 6), so a paired comparison is a t-test on the
# per-seed log ratios (log error is roughly normal across seeds; a ratio is what a reader compares),
# corrected by Holm within its family; "equal" needs two one-sided tests inside a margin fixed before
# the runs. tests/test_verdicts.py simulates the rule's false-positive rate and power.
ALPHA = 0.05
EQUIVALENCE_MARGIN = (0.8, 1.25)
STRONG_RATIO = 1.5  # "strong": every seed beyond this ratio, besides the corrected test
STRENGTHS = ("strong", "moderate", "weak", "untested")


VERDICT_RULE = (
    "How a verdict is computed: two configurations are compared only when both passed the gate (the table \"Did "
    "the models learn?\" above), on the seeds they share (the same seed draws the same training data). Each "
    "comparison gives the ratio a/b per seed, its geometric mean with a 95% t interval over seeds, and the p-value "
    "of a paired t-test on the per-seed log ratios. \"Lower\" or \"higher\" is said only when that p-value, "
    "Holm-corrected within its family, is below 0.05: the primary family holds the at most three comparisons the "
    "notebook names before its runs (they answer the study's question), and every other comparison is "
    "exploratory, a family of its own. \"Equal within x0.8 to x1.25\" is said only when the ratio's 90% interval "
    "lies inside that margin (two one-sided tests at 5%); anything else is \"not resolved with n seeds\". A "
    "comparison between arms trained for different steps states both budgets and is never primary. A "
    "configuration that did not pass is not ranked; its status is stated instead."
)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean: use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * result


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(probability: float, df: int) -> float:
    """The `probability` quantile of Student's t (0.5 < probability < 1), by bisection."""
    require(0.5 < probability < 1, f"t_quantile: probability={probability} must lie in (0.5, 1)")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 2 * (1 - probability):
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > 2 * (1 - probability) else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of configuration a against b across seeds: the per-seed ratios a / b and
    the t-test on their logs. Undefined (None) with fewer than 2 seeds or a ratio that is not finite
    and positive."""

    seeds: tuple[int, ...]
    ratios: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def testable(self) -> bool:
        return self.n >= 2 and all(math.isfinite(r) and r > 0 for r in self.ratios)

    def _log_moments(self) -> tuple[float, float]:
        logs = np.log(np.asarray(self.ratios, dtype=float))
        return float(logs.mean()), float(logs.std(ddof=1))

    @property
    def geometric_mean(self) -> float | None:
        """The geometric mean of the per-seed ratios (None when not testable)."""
        return math.exp(self._log_moments()[0]) if self.testable else None

    def interval(self, level: float = 0.95) -> tuple[float, float] | None:
        """The ratio's t interval over seeds at `level` (None when not testable)."""
        if not self.testable:
            return None
        mean, sd = self._log_moments()
        half = t_quantile((1 + level) / 2, self.n - 1) * sd / math.sqrt(self.n)
        return math.exp(mean - half), math.exp(mean + half)

    def _t(self, shift: float = 0.0) -> float:
        mean, sd = self._log_moments()
        if sd == 0.0:  # every seed gives the same ratio: no spread to test against
            return 0.0 if mean == shift else math.copysign(math.inf, mean - shift)
        return (mean - shift) / (sd / math.sqrt(self.n))

    @property
    def p_value(self) -> float | None:
        """The two-sided paired t-test of "the ratio is 1" on the per-seed log ratios."""
        return t_two_sided_p(self._t(), self.n - 1) if self.testable else None

    def estimate(self, note: str = "") -> str:
        """'x0.52 (95% CI 0.41 to 0.66; per seed 0.48, 0.52, 0.57<note>)': the geometric mean, its 95% interval
        and every seed's ratio, as each report writes a ratio; 'not measurable with n seeds (per seed ...)' when
        not testable."""
        per_seed = ", ".join(fmt(r, 2) for r in self.ratios)
        if not self.testable:
            return f"not measurable with {self.n} seed{'s' if self.n != 1 else ''} (per seed {per_seed or '-'})"
        low, high = self.interval(0.95)
        return f"x{fmt(self.geometric_mean)} (95% CI {fmt(low)} to {fmt(high)}; per seed {per_seed}{note})"

    def on_seeds(self, seeds: Iterable[int]) -> PairedTest:
        """The same comparison on `seeds` alone (each one of this test's seeds, in this test's order), e.g. the
        seeds added after the comparison was fixed. A view for a report to describe, never a second verdict:
        `Comparisons.on_seeds` says why."""
        seeds = tuple(seeds)
        require(
            len(seeds) > 0 and len(set(seeds)) == len(seeds) and all(s in self.seeds for s in seeds),
            f"PairedTest.on_seeds: seeds={seeds!r} must be distinct seeds of this test, at least one; "
            f"allowed: {self.seeds}",
        )
        kept = [i for i, s in enumerate(self.seeds) if s in seeds]
        return PairedTest(tuple(self.seeds[i] for i in kept), tuple(self.ratios[i] for i in kept))

    def inverted(self) -> PairedTest:
        """b against a: every ratio inverted (the same test, the other way round)."""
        return PairedTest(self.seeds, tuple(1 / r if r else math.inf for r in self.ratios))

    def equivalence_p(self, margin: tuple[float, float] = EQUIVALENCE_MARGIN) -> float | None:
        """Two one-sided t-tests that the ratio lies inside `margin` (the larger of the two p-values:
        below 0.05 exactly when the ratio's 90% interval lies inside the margin)."""
        if not self.testable:
            return None
        lower, upper = (self._t(math.log(bound)) for bound in margin)
        one_sided = lambda t: t_two_sided_p(t, self.n - 1) / 2 if t > 0 else 1 - t_two_sided_p(t, self.n - 1) / 2
        return max(one_sided(lower), one_sided(-upper))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of one family (None stays None and does not count):
    reject where the adjusted p is below alpha, and the family's error rate is at most alpha."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted


def called(test: PairedTest, adjusted_p: float | None, margin=EQUIVALENCE_MARGIN, alpha: float = ALPHA) -> str:
    """The rule's word for one comparison: "lower" or "higher" (Holm-adjusted p below alpha),
    "equal" (the ratio's 90% interval inside `margin`), else "not resolved"."""
    if adjusted_p is not None and adjusted_p < alpha:
        return "lower" if test.geometric_mean < 1 else "higher"
    equivalence = test.equivalence_p(margin)
    if equivalence is not None and equivalence < alpha:
        return "equal"
    return "not resolved"


def short_verdict(text: str) -> str:
    """The head of a verdict text for a one-line answer: its word and ratio ("lower: x0.52",
    "not resolved with 3 seeds: x0.85", "[unequal budgets: ...] lower: x0.4"), or "not compared"."""
    match = re.match(r"^(\[[^\]]*\] )?([^:]+)(: x[^ ;]+)?", text)
    return "".join(part or "" for part in match.groups()) if match else text


def describe_test(test: PairedTest, adjusted_p: float | None, family: str, size: int, margin=EQUIVALENCE_MARGIN) -> str:
    """The rule's verdict with its numbers, for a report: 'lower: x0.52 (95% CI 0.41 to 0.66; per
    seed 0.48, 0.52, 0.57; p = 0.003, Holm 0.009 in the primary family of 3)'."""
    per_seed = ", ".join(fmt(r, 2) for r in test.ratios)
    if not test.testable:
        return f"not resolved with {test.n} seed{'s' if test.n != 1 else ''} (a/b per seed {per_seed or '-'})"
    word = called(test, adjusted_p, margin)
    numbers = test.estimate(f"; p = {fmt(test.p_value)}, Holm {fmt(adjusted_p)} in the {family} family of {size}")
    if word == "equal":
        low90, high90 = test.interval(0.90)
        return (f"equal within x{margin[0]:g} to x{margin[1]:g}: x{fmt(test.geometric_mean)} (90% CI "
                f"{fmt(low90)} to {fmt(high90)}; per seed {per_seed}; equivalence p = "
                f"{fmt(test.equivalence_p(margin), 2)})")
    if word == "not resolved":
        return f"not resolved with {test.n} seeds: {numbers}"
    return f"{word}: {numbers}"


# The budget check of a primary comparison (issue 38), fixed before the runs. Three seeds at twice the steps
# cannot re-prove a difference that six seeds at the preset's budget called, so the check asks less of them: that
# they do not contradict it. The level is the verdict rule's.
BUDGET_LEVEL = 0.95


def budget_classes(factor: int = 2) -> tuple[str, str, str]:
    """The three answers of the budget check at `factor` x the steps: ("budget-robust", "budget-sensitive",
    "not resolved at <factor>x")."""
    require_int("budget_classes factor", factor, 2)
    return ("budget-robust", "budget-sensitive", f"not resolved at {factor}x")


def budget_rule(factor: int = 2) -> str:
    """The budget check in one paragraph, for a report."""
    robust, sensitive, unresolved = budget_classes(factor)
    return (
        f"The budget check, fixed before the runs: the first seeds trained again from scratch with {factor}x the "
        "steps (each a fresh run with its own, longer schedule, at the same peak rate). Too few seeds to re-prove a "
        f"difference, they are read for whether they contradict it: \"{robust}\" when the ratio at {factor}x is on "
        f"the same side of 1 as the estimate on every seed at the preset's budget (their geometric mean) and its 95% "
        f"interval holds that estimate; \"{sensitive}\" when the 95% t interval of the ratio of ratios ({factor}x "
        f"/ 1x, seed by seed on the seeds both budgets share, a t-test on its logs) excludes 1; otherwise "
        f"\"{unresolved}\". A side that does not pass the gate at {factor}x is not compared there."
    )


def ratio_of_ratios(one: PairedTest, longer: PairedTest) -> PairedTest:
    """`longer`'s ratio over `one`'s, seed by seed, on the seeds both have (in `one`'s order): how much the
    ratio moved with the budget, each seed its own control (the same seed draws the same data at both budgets)."""
    require(isinstance(one, PairedTest) and isinstance(longer, PairedTest),
            f"ratio_of_ratios: one={one!r} and longer={longer!r} must be PairedTests")  # fmt: skip
    at_one = dict(zip(one.seeds, one.ratios, strict=True))
    at_longer = dict(zip(longer.seeds, longer.ratios, strict=True))
    seeds = tuple(s for s in one.seeds if s in at_longer)
    return PairedTest(seeds, tuple(at_longer[s] / at_one[s] if at_one[s] else math.inf for s in seeds))


@dataclass(frozen=True)
class BudgetRobustness:
    """Whether a primary comparison's ranking survives `factor` x the steps (issue 38), by the rule fixed before
    the runs (`budget_rule`):

    one:    the comparison's test at the preset's budget, on every seed (six), or None when it was not drawn;
    longer: the same comparison at `factor` x the steps (three seeds), or None when it could not be drawn;
    factor: the multiple of the steps, an integer >= 2;
    why:    why a side is missing (a side that did not pass the gate, at either budget), "" otherwise.

    `kind` is "budget-robust" when `longer`'s geometric mean lies on the same side of 1 as `one`'s and `longer`'s
    95% interval holds `one`'s geometric mean; else "budget-sensitive" when the 95% interval of the ratio of
    ratios (`ratio_of_ratios`) excludes 1; else "not resolved at <factor>x" (also whenever either test is missing
    or has fewer than 2 seeds). Robust is judged first: a ranking that holds while its size moves (both
    conditions) is robust, and `describe` says that the size moved. Where the ranking flips, `describe` says so:
    that is the finding."""

    one: PairedTest | None
    longer: PairedTest | None
    factor: int = 2
    why: str = ""

    def __post_init__(self) -> None:
        for name in ("one", "longer"):
            value = getattr(self, name)
            require(value is None or isinstance(value, PairedTest),
                    f"BudgetRobustness.{name}={value!r} must be a PairedTest or None")  # fmt: skip
        require_int("BudgetRobustness.factor", self.factor, 2)
        require(isinstance(self.why, str) and "\n" not in self.why,
                f"BudgetRobustness.why={self.why!r} must be one line of text")  # fmt: skip

    @property
    def measurable(self) -> bool:
        """Both tests are there and testable (at least 2 seeds, finite positive ratios)."""
        return self.one is not None and self.one.testable and self.longer is not None and self.longer.testable

    @property
    def ratio_of_ratios(self) -> PairedTest | None:
        """`longer` / `one` per shared seed (None when either is missing)."""
        return None if self.one is None or self.longer is None else ratio_of_ratios(self.one, self.longer)

    def _moved(self) -> bool:
        """The ratio of ratios' 95% interval excludes 1."""
        rr = self.ratio_of_ratios
        if rr is None or not rr.testable:
            return False
        low, high = rr.interval(BUDGET_LEVEL)
        return low > 1 or high < 1

    def _same_side(self) -> bool:
        return math.log(self.one.geometric_mean) * math.log(self.longer.geometric_mean) > 0

    @property
    def flips(self) -> bool:
        """Both tests measurable and their geometric means on opposite sides of 1: the ranking flips."""
        return self.measurable and not self._same_side()

    @property
    def kind(self) -> str:
        """"budget-robust", "budget-sensitive" or "not resolved at <factor>x" (the rule in the class docstring)."""
        robust, sensitive, unresolved = budget_classes(self.factor)
        if not self.measurable:
            return unresolved
        low, high = self.longer.interval(BUDGET_LEVEL)
        if self._same_side() and low <= self.one.geometric_mean <= high:
            return robust
        return sensitive if self._moved() else unresolved

    def describe(self) -> str:
        """The class with its numbers, one sentence for a report: 'budget-robust: the ratio at 2x the steps,
        x0.2 (95% CI ...; per seed ...), is on the same side of 1 as x0.14 at the preset's budget, and its
        interval holds it; the ratio of ratios (2x / 1x on seeds 42, 451, 1984): x1.4 (95% CI ...)'."""
        kind, f = self.kind, self.factor
        at_longer = f"the ratio at {f}x the steps, {self.longer.estimate() if self.longer else 'not drawn'}"
        if not self.measurable:
            if self.one is None:
                missing = "no ratio at the preset's budget to check"
            elif not self.one.testable:
                missing = f"at the preset's budget {self.one.estimate()}"
            else:
                missing = f"at {f}x the steps " + (self.longer.estimate() if self.longer else "nothing was drawn")
            reason = f" ({self.why})" if self.why else ""
            drawn = f"; {at_longer}" if self.longer is not None and self.longer.testable else ""
            return f"{kind}: {missing}{reason}{drawn}"
        rr = self.ratio_of_ratios
        seeds = ", ".join(map(str, rr.seeds))
        moved = f"the ratio of ratios ({f}x / 1x, on seeds {seeds}): {rr.estimate()}"
        one = f"x{fmt(self.one.geometric_mean)}"
        if kind == budget_classes(f)[0]:
            size = "; the ranking holds and its size moved" if self._moved() else ""
            return f"{kind}: {at_longer}, is on the same side of 1 as {one} at the preset's budget and its interval " \
                   f"holds it; {moved}{size}"
        if kind == budget_classes(f)[1]:
            flips = "; the ranking flips" if self.flips else ""
            return f"{kind}: {moved}, excludes 1: {one} at the preset's budget, {at_longer}{flips}"
        side = "is on the other side of 1 from" if not self._same_side() else "has an interval that leaves out"
        return f"{kind}: {at_longer}, {side} {one} at the preset's budget, and {moved}, includes 1"


K = TypeVar("K", bound=Hashable)


_TOKENS = itertools.count()


def named_with_mean(label: str, status: Verdict) -> str:
    """A configuration as a report names it beside a verdict: its label and mean final error, 'looped L2 (0.0123)'
    ('-' for the mean where no seed finished)."""
    return f"{label} ({fmt(status.mean) if status.mean is not None else '-'})"


class Comparisons(Generic[K]):
    """A report's paired verdicts, each drawn only between two trained configurations, by the rule
    (`PairedTest`, `holm`, `called`).

    status:   each configuration's `Verdict`, by key (any hashable: a name, or a tuple such as
              (model, b_train)).
    runs:     a key's records, its seeds (for tuple keys, e.g. `lambda key: runs(*key)`).
    label:    how a key is named when it is not compared (default `str`).
    excluded: {key: reason} for configurations that pass the gate but are still not compared,
              e.g. "screened with one seed".
    primary:  at most three comparisons, fixed in the notebook before its runs: the comparisons that
              answer the study's question, each (a, b) on the default value (`final_error`) or
              (a, b, value) on its own `Value` (a `Reading` names it in the report; a pair
              (read_a, read_b) reads the two sides differently, and a may then be b: one configuration
              at two loop counts). They form the primary family; every other comparison drawn is
              exploratory, a family of its own. A primary comparison needs arms trained for the same
              steps (else ValueError); an exploratory one between unequal budgets states both in its
              verdict.
    margin:   the equivalence margin (low, high) on the ratio, 0 < low < 1 < high, fixed before the runs.

    For the primary comparisons: `on_seeds(a, b, seeds)` describes a drawn comparison on a subset of its seeds
    (the seeds added after it was fixed; in no family), `budget(a, b, longer)` is its `BudgetRobustness` against
    the same configurations at a multiple of the steps, and `primary_section(questions, longer, new_seeds)` the
    report's section with all of it and a one-sentence answer each.

    `compared(a, b, value)` returns a placeholder for "verdict: numbers" of a against b, or the text
    "not compared: <label> <why>; ..." naming each of the two that did not pass the gate (its status
    and how far from the gate it is: a gate contrast is a finding of its own),
    then each that passed but is excluded. Holm's correction needs the whole family, so the
    placeholders are filled in by `resolve(text)` once every comparison is drawn; after that no
    comparison may be added. `count()` is the sentence on how many were drawn and called.
    """

    def __init__(
        self,
        status: Mapping[K, Verdict],
        runs: Callable[[K], Iterable[dict]],
        label: Callable[[K], str] = str,
        excluded: Mapping[K, str] | None = None,
        primary: Sequence[tuple[K, K] | tuple[K, K, Value]] = (),
        margin: tuple[float, float] = EQUIVALENCE_MARGIN,
    ) -> None:
        require(len(primary) <= 3, f"Comparisons.primary names {len(primary)} comparisons; a report fixes at most 3")
        for entry in primary:
            require(
                isinstance(entry, tuple) and len(entry) in (2, 3),
                f"Comparisons.primary entry {entry!r} must be (a, b) or (a, b, value)",
            )
        self.primary = [(entry[0], entry[1], entry[2] if len(entry) == 3 else final_error) for entry in primary]
        for _, _, value in self.primary:
            _sides(value, "Comparisons.primary value")
        unknown = [key for a, b, _ in self.primary for key in (a, b) if key not in status]
        require(not unknown, f"Comparisons.primary names configurations with no status: {unknown}")
        require(
            isinstance(margin, tuple) and len(margin) == 2 and all(is_real(m) for m in margin)
            and 0 < margin[0] < 1 < margin[1],
            f"Comparisons.margin={margin!r} must be (low, high) with 0 < low < 1 < high",
        )
        self.status = status
        self.runs = runs
        self.label = label
        self.excluded = dict(excluded or {})
        self.margin = margin
        self.drawn: list[Paired] = []
        self.tests: dict[str, list[tuple[str, PairedTest]]] = {"primary": [], "exploratory": []}
        self.tokens: dict[tuple, str] = {}  # (a, b, value): its placeholder
        self.places: dict[tuple, tuple[str, int]] = {}  # (a, b, value): its family and index there
        # A comparison drawn again (in a second table, or b against a) is the same test: its placeholder reads the
        # first draw's entry, so a family counts each test once and Holm's correction is not made stricter by repeats.
        self.again: dict[str, tuple[str, int, str, bool]] = {}  # placeholder: (family, index, prefix, inverted)
        self.resolved = False
        self._id = next(_TOKENS)

    def _token(self, family: str, index: int) -> str:
        return f"\u27e6verdict {self._id}:{family}:{index}\u27e7"

    def __call__(self, a: K, b: K, value: Value = final_error, prefix: str = "") -> str:
        """a against b on `value` per run (default `final_error`; a pair reads each side its own way):
        a placeholder for prefix + the rule's verdict with its numbers (`resolve` fills it in), or
        "not compared: ..." (no prefix) when either did not pass the gate or is excluded. Primary when
        (a, b, value) is a named primary comparison, in either orientation. Drawn again, in either orientation, it
        is the same test (one entry in its family; b against a reads the inverted ratios)."""
        require(not self.resolved, "a comparison was drawn after resolve(): Holm's correction needs the whole family")
        _sides(value)
        family = "primary" if self._is_primary(a, b, value) else "exploratory"
        why = self._not_compared(a, b)
        if why:
            return "not compared: " + "; ".join(why)
        budgets = self._budgets(a, b)
        if budgets:  # arms trained for different budgets: never primary, and said in the verdict
            require(
                family == "exploratory",
                f"primary comparison {self.describe(a, b, value)} has arms trained for different steps "
                f"({budgets[0]} against {budgets[1]}); a primary comparison needs equal budgets",
            )
            prefix += self._unequal(a, b, budgets)
        earlier = self._place(a, b, value)
        if earlier is not None:  # drawn before (perhaps the other way round): the same test, once in its family
            family, index, invert = earlier
            token = f"\u27e6verdict {self._id}:{family}:{index}:again {len(self.again)}\u27e7"
            self.again[token] = (family, index, prefix, invert)
            self.tokens.setdefault((a, b, value), token)
            return token
        result = paired(self.runs(a), self.runs(b), value)
        self.drawn.append(result)
        self.tests[family].append((prefix, result.test()))
        self.places[a, b, value] = (family, len(self.tests[family]) - 1)
        self.tokens[a, b, value] = self._token(*self.places[a, b, value])
        return self.tokens[a, b, value]

    def _budgets(self, a: K, b: K) -> tuple[list[int], list[int]] | None:
        """The steps each side trained for, when they differ (None: equal budgets)."""
        budgets = [sorted({r["spec"]["train"]["steps"] for r in self.runs(k)}) for k in (a, b)]
        return None if budgets[0] == budgets[1] else (budgets[0], budgets[1])

    def _unequal(self, a: K, b: K, budgets: tuple[list[int], list[int]]) -> str:
        """The prefix a verdict between arms of unequal budgets opens with, naming both."""
        steps = lambda k, values: f"{self.label(k)} at {' / '.join(map(str, values))} steps"
        return f"[unequal budgets: {steps(a, budgets[0])}, {steps(b, budgets[1])}] "

    def _place(self, a: K, b: K, value: Value) -> tuple[str, int, bool] | None:
        """Where a against b was first drawn, in either orientation: (family, index, inverted); None if never."""
        for key, invert in (((a, b, value), False), ((b, a, _swapped(value)), True)):
            if key in self.places:
                return (*self.places[key], invert)
        return None

    def _not_compared(self, a: K, b: K) -> list[str]:
        """Why a against b cannot be drawn: each side that did not pass the gate (its status and how far
        from the gate it is), then each that passed but is excluded; empty when it can be drawn."""
        sides = list(dict.fromkeys((a, b)))  # one configuration read two ways is named once
        why = [f"{self.label(k)} {self.status[k].status} ({self.status[k].distance()})"
               for k in sides if not self.status[k].trained]  # fmt: skip
        excluded = [k for k in sides if k in self.excluded and self.status[k].trained]
        return why + [f"{self.label(k)} {self.excluded[k]}" for k in excluded]

    def _is_primary(self, a: K, b: K, value: Value) -> bool:
        """A named primary comparison, in either orientation (b against a is the same test, ratios inverted)."""
        return (a, b, value) in self.primary or (b, a, _swapped(value)) in self.primary

    def describe(self, a: K, b: K, value: Value = final_error) -> str:
        """How a report names the comparison: "<a> against <b>", each side followed by its `Reading`'s name
        where the value names one ("looped on sparse, error at k = 4 against standard on sparse, error at
        k = 4"; for a pair, each side its own)."""
        read_a, read_b = _sides(value)
        name = lambda read: f", {read.name}" if isinstance(read, Reading) else ""
        if read_a is read_b:
            return f"{self.label(a)} against {self.label(b)}{name(read_a)}"
        return f"{self.label(a)}{name(read_a)} against {self.label(b)}{name(read_b)}"

    def result(self, a: K, b: K, value: Value = final_error) -> str:
        """The resolved verdict of a comparison drawn before `resolve` (for a report's conclusions,
        which cite verdicts already in their families; drawn as b against a, its ratios inverted), or "not
        compared" when it could not be drawn."""
        require(self.resolved, "Comparisons.result: resolve() the families first (Holm needs every comparison)")
        if (a, b, value) not in self.tokens and self._place(a, b, value) is not None:  # drawn as b against a
            family = self._place(a, b, value)[0]
            test, adjusted = self._drawn(a, b, value)  # the same test, its ratios inverted
            budgets = self._budgets(a, b)
            return (self._unequal(a, b, budgets) if budgets else "") + describe_test(
                test, adjusted, family, len(self.tests[family]), self.margin)
        if (a, b, value) not in self.tokens:
            require(
                bool(self._not_compared(a, b)),
                f"Comparisons.result: {self.describe(a, b, value)} was never drawn; draw it before resolve",
            )
            return "not compared"
        return self.texts()[self.tokens[a, b, value]]

    def _adjusted(self, family: str) -> list[tuple[str, PairedTest, float | None]]:
        """Each comparison of `family`, in the order drawn: (prefix, test, its Holm-adjusted p)."""
        entries = self.tests[family]
        adjusted = holm([test.p_value for _, test in entries])
        return [(prefix, test, p) for (prefix, test), p in zip(entries, adjusted, strict=True)]

    def texts(self) -> dict[str, str]:
        """Every placeholder drawn so far and its verdict, Holm-corrected within its family."""
        adjusted = {family: self._adjusted(family) for family in self.tests}
        describe = lambda family, test, p: describe_test(test, p, family, len(self.tests[family]), self.margin)
        texts = {
            self._token(family, index): prefix + describe(family, test, p)
            for family in self.tests
            for index, (prefix, test, p) in enumerate(adjusted[family])
        }
        for token, (family, index, prefix, invert) in self.again.items():
            _, test, p = adjusted[family][index]
            texts[token] = prefix + describe(family, test.inverted() if invert else test, p)
        return texts

    def resolve(self, text: str) -> str:
        """`text` with every placeholder of this report's comparisons replaced by its verdict; the
        families are closed from here on."""
        self.resolved = True
        for token, verdict_text in self.texts().items():
            text = text.replace(token, verdict_text)
        return text

    def words(self) -> dict[str, list[str]]:
        """Per family, the rule's word for each comparison drawn ("lower", "higher", "equal", "not resolved")."""
        return {
            family: [called(test, p, self.margin) for _, test, p in self._adjusted(family)] for family in self.tests
        }

    def strength(self) -> str:
        """The strength of the answer the primary comparisons give (`STRENGTHS`, the rule the README
        states once): "strong", a primary comparison called lower or higher with every seed's ratio
        beyond x1.5 in that direction; "moderate", one called otherwise, or found equal within the
        margin; "weak", primary comparisons drawn but none resolved; "untested", none drawn (a side
        failed the gate or ran one seed, or none was named)."""
        entries = self.tests["primary"]
        if not entries:
            return "untested"
        words = self.words()["primary"]
        if any(
            word in ("lower", "higher")
            and all((r < 1 / STRONG_RATIO) if word == "lower" else (r > STRONG_RATIO) for r in test.ratios)
            for word, (_, test) in zip(words, entries, strict=True)
        ):
            return "strong"
        if any(word != "not resolved" for word in words):
            return "moderate"
        return "weak"

    def _drawn(self, a: K, b: K, value: Value) -> tuple[PairedTest, float | None] | None:
        """The test of a against b as drawn (in either orientation: b against a gives the inverted ratios) and
        its p-value Holm-adjusted within its family as drawn so far; None when it was never drawn."""
        place = self._place(a, b, value)
        if place is None:
            return None
        family, index, invert = place
        _, test, adjusted = self._adjusted(family)[index]
        return (test.inverted() if invert else test), adjusted

    def _steps(self, key: K, runs: Callable[[K], Iterable[dict]] | None = None) -> str:
        """The steps `key`'s runs trained for ("3000"; "3000 / 6000" if they differ)."""
        steps = sorted({r["spec"]["train"]["steps"] for r in (runs or self.runs)(key)})
        return " / ".join(map(str, steps)) or "no"

    def on_seeds(self, a: K, b: K, seeds: Sequence[int], value: Value = final_error) -> str:
        """a against b, already drawn, on `seeds` alone (the seeds added after the comparison was fixed), described
        beside its verdict on every seed: "x0.13 (95% CI 0.08 to 0.2; per seed ...; p = 0.004 uncorrected,
        descriptive: in no family), on the same side of 1 as every seed's x0.14". A seed of `seeds` with no finished
        pair is named; "not compared" when the comparison could not be drawn.

        Descriptive, never a verdict, and in no family, by design. The comparison was fixed after its first seeds
        had been seen, so its test on every seed may be flattered by that choice (the seeds that suggested it are
        in it); the seeds added afterwards are the only ones the choice could not have favoured, so a reader should
        see them alone. But they are a subset of the same data testing the same question, not a new question:
        adding their test to the primary family would make Holm's correction of the primaries stricter without
        adding a hypothesis, and calling it in a family of its own would give one question two verdicts that can
        disagree, with no rule for which stands. The primary verdict stays the one on every seed, corrected in its
        family as fixed; this test shows whether the unseen seeds point the same way and how far, with its p-value
        uncorrected and said to be so. Three seeds have little power (`tests/test_verdicts.py` prints the rule's
        power), so a subset that is not resolved is no evidence against the verdict; one that points the other
        way is stated."""
        seeds = tuple(seeds)
        require(
            len(seeds) > 0 and all(is_int(s) for s in seeds) and len(set(seeds)) == len(seeds),
            f"Comparisons.on_seeds: seeds={seeds!r} must be distinct integer training seeds, at least one",
        )
        drawn = self._drawn(a, b, value)
        if drawn is None:
            require(bool(self._not_compared(a, b)),
                    f"Comparisons.on_seeds: {self.describe(a, b, value)} was never drawn; draw it first")  # fmt: skip
            return "not compared"
        test, _ = drawn
        kept = [s for s in seeds if s in test.seeds]
        missing = [s for s in seeds if s not in test.seeds]
        subset = test.on_seeds(kept) if kept else PairedTest((), ())
        if subset.testable:
            text = subset.estimate(f"; p = {fmt(subset.p_value)} uncorrected, descriptive: in no family")
            if test.testable and subset.geometric_mean != 1 and test.geometric_mean != 1:
                same = math.log(subset.geometric_mean) * math.log(test.geometric_mean) > 0
                side = "on the same side of 1 as" if same else "on the other side of 1 from"
                text += f", {side} every seed's x{fmt(test.geometric_mean)}"
        else:
            text = subset.estimate()
        if missing:
            text += f"; no finished pair on seed{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
        return text

    def budget(
        self, a: K, b: K, longer: Callable[[K], Iterable[dict]], value: Value = final_error, gate: Gate | None = None
    ) -> BudgetRobustness:
        """The budget check of a against b (`BudgetRobustness`): its test as drawn at the preset's budget against
        the same comparison on `longer(key)`, each side's runs at a multiple of the steps (`Experiment.budget_checks`),
        drawn only when both sides pass `gate` there (the same threshold as at the preset's budget; `why` names a side
        that does not; why a side was not compared at the preset's budget is the comparison's own text)."""
        gate = Gate() if gate is None else gate
        drawn = self._drawn(a, b, value)
        if drawn is None:
            require(bool(self._not_compared(a, b)),
                    f"Comparisons.budget: {self.describe(a, b, value)} was never drawn; draw it first")  # fmt: skip
        sides = list(dict.fromkeys((a, b)))
        runs = {k: list(longer(k)) for k in sides}
        empty = [self.label(k) for k in sides if not runs[k]]
        require(not empty, f"Comparisons.budget: no runs at the longer budget for {empty}")
        steps = {k: sorted({r["spec"]["train"]["steps"] for r in runs[k]}) for k in sides}
        base = {k: sorted({r["spec"]["train"]["steps"] for r in self.runs(k)}) for k in sides}
        single = all(len(steps[k]) == 1 and len(base[k]) == 1 for k in sides)
        ratios = {steps[k][0] / base[k][0] for k in sides} if single else set()
        factor = ratios.pop() if len(ratios) == 1 else 0.0
        require(
            factor.is_integer() and factor >= 2 and len({steps[k][0] for k in sides}) == 1,
            f"Comparisons.budget: {self.describe(a, b, value)} needs each side's longer runs at one multiple (2 or "
            f"more) of its steps, the same for both sides; got {[steps[k] for k in sides]} against "
            f"{[base[k] for k in sides]}",
        )
        at_longer = {k: verdict(runs[k], self.status[k].threshold, gate) for k in sides}
        failed = [f"{self.label(k)} at {int(factor)}x the steps {at_longer[k].status} ({at_longer[k].distance()})"
                  for k in sides if not at_longer[k].trained]  # fmt: skip
        longer_test = None
        if not failed:
            longer_test = paired(runs[a], runs[b], value).test()
        return BudgetRobustness(drawn[0] if drawn else None, longer_test, int(factor), "; ".join(failed))

    def primary_section(
        self,
        questions: Sequence[str],
        longer: Callable[[K], Iterable[dict]] | None = None,
        new_seeds: Sequence[int] = (),
        gate: Gate | None = None,
    ) -> str:
        """The report's "Primary comparisons" section (after `resolve`: it cites corrected verdicts): for each
        primary comparison, in the order fixed, its question (`questions`, one line each, fixed with them), its
        verdict on every seed at the preset's budget (per-seed ratios, interval, Holm-corrected p), its test on
        `new_seeds` alone (`on_seeds`: descriptive), its budget check on `longer` (`budget`) and a one-sentence
        answer built from those; a first paragraph states how the section reads and the budget rule."""
        require(self.resolved, "Comparisons.primary_section: resolve() the families first (it cites corrected p)")
        questions = list(questions)
        require(
            len(questions) == len(self.primary)
            and all(isinstance(q, str) and q.strip() and "\n" not in q for q in questions),
            f"Comparisons.primary_section: questions={questions!r} must give one line of text per primary "
            f"comparison ({len(self.primary)})",
        )
        if not self.primary:
            return "None named: every comparison of this report is exploratory."
        new_seeds = tuple(new_seeds)
        lines, factors = [], []
        for number, ((a, b, value), question) in enumerate(zip(self.primary, questions, strict=True), start=1):
            steps = self._steps(a)
            drawn = self._drawn(a, b, value)
            lines.append(f"{number}. **{self.describe(a, b, value)}.** {question}")
            if drawn is None:
                why = "; ".join(self._not_compared(a, b)) or "not drawn"
                lines.append(f"   - At {steps} steps: not compared: {why}.")
            else:
                test, adjusted = drawn
                size = len(self.tests["primary"])
                seeds = ", ".join(map(str, test.seeds))
                lines.append(f"   - At {steps} steps, {test.n} seeds ({seeds}): "
                             f"{describe_test(test, adjusted, 'primary', size, self.margin)}.")  # fmt: skip
                if new_seeds:
                    new = ", ".join(map(str, new_seeds))
                    lines.append(f"   - On the new seeds alone ({new}): {self.on_seeds(a, b, new_seeds, value)}.")
            check = None
            if longer is not None:
                check = self.budget(a, b, longer, value, gate)
                factors.append(check.factor)
                lines.append(f"   - At {self._steps(a, longer)} steps ({check.factor}x): {check.describe()}.")
            lines.append(f"   - **Answer.** {self._answer(a, b, value, check, longer)}")
        intro = (
            "Fixed in the notebook before the runs; each is drawn on every seed at the preset's budget and "
            "Holm-corrected within the primary family (the verdict rule, stated below with every comparison)."
            + (" The first seeds had been seen when the comparisons were fixed, so each also gives its test on the "
               "seeds added since, alone: descriptive and in no family, so it neither adds to nor relaxes the "
               "primary family's correction; it shows whether the seeds the choice could not have favoured point "
               "the same way." if new_seeds else "")
            + "".join(f" {budget_rule(factor)}" for factor in dict.fromkeys(factors))
        )
        return intro + "\n\n" + "\n".join(lines)

    def answer(
        self, a: K, b: K, longer: Callable[[K], Iterable[dict]], value: Value = final_error, gate: Gate | None = None
    ) -> str:
        """A primary comparison for a report's one-line answer: the head of its verdict and its budget check's
        class, "lower: x0.52 (budget-robust)"; where a side failed the gate at the preset's budget and both pass
        at the longer one, what the longer budget measured: "not compared at 2500 steps; at 5000 steps x0.61 (95% CI
        ...)" (its few seeds describe, they do not call)."""
        check = self.budget(a, b, longer, value, gate)
        head = short_verdict(self.result(a, b, value))
        if self._drawn(a, b, value) is None and check.longer is not None and check.longer.testable:
            return f"{head} at {self._steps(a)} steps; at {self._steps(a, longer)} steps {check.longer.estimate()}"
        return f"{head} ({check.kind})"

    def _answer(
        self, a: K, b: K, value: Value, check: BudgetRobustness | None, longer: Callable[[K], Iterable[dict]] | None
    ) -> str:
        """One sentence: what the primary comparison says at the preset's budget and what the budget check adds."""
        read_a, read_b = _sides(value)
        name = lambda key, read: self.label(key) + (f" ({read.name})" if isinstance(read, Reading) else "")
        first, second = name(a, read_a), name(b, read_b)
        steps = self._steps(a)
        drawn = self._drawn(a, b, value)
        if drawn is None:
            sides = list(dict.fromkeys((a, b)))
            why = [f"{self.label(k)} {self.status[k].status}" for k in sides if not self.status[k].trained]
            why += [f"{self.label(k)} {self.excluded[k]}" for k in sides
                    if k in self.excluded and self.status[k].trained]  # fmt: skip
            core = f"{first} against {second} is not compared at {steps} steps ({'; '.join(why)})"
        elif not drawn[0].testable:
            core = f"{first} against {second} is not resolved with {drawn[0].n} seed{'s' if drawn[0].n != 1 else ''}"
        else:
            test, adjusted = drawn
            word = called(test, adjusted, self.margin)
            ratio = f"x{fmt(test.geometric_mean)}"
            core = {
                "lower": f"{first} is lower than {second} at {steps} steps ({ratio}, Holm p = {fmt(adjusted)})",
                "higher": f"{first} is higher than {second} at {steps} steps ({ratio}, Holm p = {fmt(adjusted)})",
                "equal": f"{first} and {second} are equal within x{self.margin[0]:g} to x{self.margin[1]:g} at "
                         f"{steps} steps ({ratio})",
                "not resolved": f"{first} against {second} is not resolved with {test.n} seeds at {steps} steps "
                                f"({ratio})",
            }[word]
        if check is None:
            return core + "."
        robust, sensitive, _ = budget_classes(check.factor)
        at = f"{self._steps(a, longer)} steps"
        if check.kind == robust:
            tail = f"; {at} agree with it ({robust})"
        elif check.kind == sensitive:
            flips = ", the ranking flips" if check.flips else ""
            tail = f"; at {at} the ratio moves to x{fmt(check.longer.geometric_mean)} ({sensitive}{flips})"
        elif check.longer is not None and check.longer.testable and drawn is None:
            tail = f"; at {at} {check.longer.estimate()} ({check.kind}: no ranking at {steps} steps to check)"
        else:
            tail = f"; at {at}: {check.kind}" + (" (a side did not pass the gate there)" if check.why else "")
        return core + tail + "."

    def named(self, key: K) -> str:
        """A configuration as a verdict's line names it (`named_with_mean`)."""
        return named_with_mean(self.label(key), self.status[key])

    def claim(
        self, title: str, a: K, b: K, value: Value = final_error, named: Callable[[K], str] | None = None,
        note: str = "",
    ) -> str:
        """The report's line on one comparison: "- **<title>** <note>: <a named> against <b named>: <verdict>." with
        the verdict's placeholder (`__call__`; `resolve` fills it in). `named`: how a side is named (default `named`:
        label and mean), for a report that states more of it, such as its rate; `note`: what the title leaves out
        (the setting, the metric), outside the bold."""
        name = self.named if named is None else named
        return f"- **{title}**{f' {note}' if note else ''}: {name(a)} against {name(b)}: {self(a, b, value)}."

    def reference(self, key: K, note: str) -> str:
        """The report's line on its reference configuration, which must pass the gate for the recipe
        to count as working: "- **Reference configuration** <note>: trained, 3 of 3 seeds under the
        gate."."""
        return f"- **Reference configuration** {note}: {self.status[key].describe()}."

    def count(self, others: str = "a configuration that did not pass the gate") -> str:
        """The sentence after the verdicts: the primary comparisons fixed before the runs, how many
        comparisons each family drew, how many the rule called (lower or higher after Holm within the
        family) or found equal within the margin, and what `others`, every comparison not drawn, involved."""
        words = self.words()
        parts = []
        for family in ("primary", "exploratory"):
            w = words[family]
            if w:
                parts.append(
                    f"{len(w)} {family} (called lower or higher: {sum(x in ('lower', 'higher') for x in w)}; "
                    f"equal within x{self.margin[0]:g} to x{self.margin[1]:g}: {w.count('equal')}; "
                    f"not resolved: {w.count('not resolved')})"
                )
        primaries = "; ".join(self.describe(*entry) for entry in self.primary) or "none named"
        drawn = {key for (a, b, value) in self.tokens for key in ((a, b, value), (b, a, _swapped(value)))}
        why = lambda a, b: "; ".join(self._not_compared(a, b)) or "not drawn here"
        not_drawn = [f"{self.describe(a, b, value)} ({why(a, b)})"
                     for a, b, value in self.primary if (a, b, value) not in drawn]  # fmt: skip
        missing = f" Primary comparisons not drawn: {'; '.join(not_drawn)}." if not_drawn else ""
        families = "; ".join(parts) if parts else "none"
        return (
            f"Primary comparisons, fixed before the runs: {primaries}.{missing} {len(self.drawn)} paired comparisons "
            f"were drawn: {families}. The rule: a paired t-test on the per-seed log ratios, Holm-corrected within "
            f"each family at {ALPHA:g}; \"equal\" only when the ratio's 90% interval lies inside the margin. Every "
            f"other comparison involves {others}."
        )


def _swapped(value: Value) -> Value:
    """The value of b against a for a's against b: a pair swaps its sides, one function stays."""
    return (value[1], value[0]) if isinstance(value, tuple) else value


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return fmt(value / reference, 2)
