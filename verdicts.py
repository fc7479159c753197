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

import itertools
import math
import re
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
    low, high = test.interval(0.95)
    numbers = (f"x{fmt(test.geometric_mean)} (95% CI {fmt(low)} to {fmt(high)}; per seed {per_seed}; "
               f"p = {fmt(test.p_value)}, Holm {fmt(adjusted_p)} in the {family} family of {size})")
    if word == "equal":
        low90, high90 = test.interval(0.90)
        return (f"equal within x{margin[0]:g} to x{margin[1]:g}: x{fmt(test.geometric_mean)} (90% CI "
                f"{fmt(low90)} to {fmt(high90)}; per seed {per_seed}; equivalence p = "
                f"{fmt(test.equivalence_p(margin), 2)})")
    if word == "not resolved":
        return f"not resolved with {test.n} seeds: {numbers}"
    return f"{word}: {numbers}"


K = TypeVar("K", bound=Hashable)


_TOKENS = itertools.count()


class Comparisons(Generic[K]):
    """A report's paired verdicts, each drawn only between two trained configurations, by the rule
    (`PairedTest`, `holm`, `called`).

    status:   each configuration's `Verdict`, by key (any hashable: a name, or a tuple such as
              (model, b_train)).
    runs:     a key's records, its seeds (for tuple keys, e.g. `lambda key: runs(*key)`).
    label:    how a key is named when it is not compared (default `str`).
    excluded: {key: reason} for configurations that pass the gate but are still not compared,
              e.g. "screened with one seed".
    primary:  at most three (a, b) pairs, fixed in the notebook before its runs: the comparisons that
              answer the study's question, on `primary_value`. They form the primary family; every
              other comparison drawn is exploratory, a family of its own.
    primary_value: the per-run value the primary comparisons are drawn on, fixed before the runs:
              `final_error` (the held-out error at the validation b) unless a study's question is
              another number (Experiment 12's: the error far past the trained loop count).
              A primary comparison needs arms trained for the same steps (else ValueError); an
              exploratory one between unequal budgets states both in its verdict.
    margin:   the equivalence margin on the ratio, fixed before the runs.

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
        primary: Sequence[tuple[K, K]] = (),
        margin: tuple[float, float] = EQUIVALENCE_MARGIN,
        primary_value: Callable[[dict], float | None] = final_error,
    ) -> None:
        require(len(primary) <= 3, f"Comparisons.primary names {len(primary)} comparisons; a report fixes at most 3")
        unknown = [key for pair in primary for key in pair if key not in status]
        require(not unknown, f"Comparisons.primary names configurations with no status: {unknown}")
        self.status = status
        self.runs = runs
        self.label = label
        self.excluded = dict(excluded or {})
        self.primary = [tuple(pair) for pair in primary]
        self.margin = margin
        self.primary_value = primary_value
        self.drawn: list[Paired] = []
        self.tests: dict[str, list[tuple[str, PairedTest]]] = {"primary": [], "exploratory": []}
        self.tokens: dict[tuple, str] = {}  # (a, b, value): its placeholder
        self.resolved = False
        self._id = next(_TOKENS)

    def _token(self, family: str, index: int) -> str:
        return f"\u27e6verdict {self._id}:{family}:{index}\u27e7"

    def __call__(self, a: K, b: K, value: Callable[[dict], float | None] = final_error, prefix: str = "") -> str:
        """a against b on `value` per run (default `final_error`): a placeholder for prefix + the
        rule's verdict with its numbers (`resolve` fills it in), or "not compared: ..." (no prefix)
        when either did not pass the gate or is excluded."""
        require(not self.resolved, "a comparison was drawn after resolve(): Holm's correction needs the whole family")
        family = "primary" if self._is_primary(a, b) and value is self.primary_value else "exploratory"
        why = self._not_compared(a, b)
        if why:
            return "not compared: " + "; ".join(why)
        budgets = [sorted({r["spec"]["train"]["steps"] for r in self.runs(k)}) for k in (a, b)]
        if budgets[0] != budgets[1]:  # arms trained for different budgets: never primary, and said in the verdict
            require(
                family == "exploratory",
                f"primary comparison {self.label(a)} against {self.label(b)} has arms trained for different steps "
                f"({budgets[0]} against {budgets[1]}); a primary comparison needs equal budgets",
            )
            steps = lambda k, values: f"{self.label(k)} at {' / '.join(map(str, values))} steps"
            prefix = f"{prefix}[unequal budgets: {steps(a, budgets[0])}, {steps(b, budgets[1])}] "
        result = paired(self.runs(a), self.runs(b), value)
        self.drawn.append(result)
        self.tests[family].append((prefix, PairedTest(result.seeds, result.ratios)))
        self.tokens[a, b, value] = self._token(family, len(self.tests[family]) - 1)
        return self.tokens[a, b, value]

    def _not_compared(self, a: K, b: K) -> list[str]:
        """Why a against b cannot be drawn: each side that did not pass the gate (its status and how far
        from the gate it is), then each that passed but is excluded; empty when it can be drawn."""
        why = [f"{self.label(k)} {self.status[k].status} ({self.status[k].distance()})"
               for k in (a, b) if not self.status[k].trained]  # fmt: skip
        excluded = [k for k in (a, b) if k in self.excluded and self.status[k].trained]
        return why + [f"{self.label(k)} {self.excluded[k]}" for k in excluded]

    def _is_primary(self, a: K, b: K) -> bool:
        """A named primary comparison, in either orientation (b against a is the same test, ratios inverted)."""
        return (a, b) in self.primary or (b, a) in self.primary

    def result(self, a: K, b: K, value: Callable[[dict], float | None] = final_error) -> str:
        """The resolved verdict of a comparison drawn before `resolve` (for a report's conclusions,
        which cite verdicts already in their families), or "not compared" when it could not be drawn."""
        require(self.resolved, "Comparisons.result: resolve() the families first (Holm needs every comparison)")
        if (a, b, value) not in self.tokens:
            require(
                bool(self._not_compared(a, b)),
                f"Comparisons.result: {self.label(a)} against {self.label(b)} was never drawn; draw it before resolve",
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
        return {
            self._token(family, index): prefix + describe_test(test, p, family, len(self.tests[family]), self.margin)
            for family in self.tests
            for index, (prefix, test, p) in enumerate(self._adjusted(family))
        }

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
        primaries = "; ".join(f"{self.label(a)} against {self.label(b)}" for a, b in self.primary) or "none named"
        drawn_primary = {
            pair for (a, b, value) in self.tokens if value is self.primary_value for pair in ((a, b), (b, a))
        }
        why = lambda a, b: "; ".join(self._not_compared(a, b)) or "not drawn here"
        not_drawn = [f"{self.label(a)} against {self.label(b)} ({why(a, b)})"
                     for a, b in self.primary if (a, b) not in drawn_primary]  # fmt: skip
        missing = f" Primary comparisons not drawn: {'; '.join(not_drawn)}." if not_drawn else ""
        drawn = "; ".join(parts) if parts else "none"
        return (
            f"Primary comparisons, fixed before the runs: {primaries}.{missing} {len(self.drawn)} paired comparisons "
            f"were drawn: {drawn}. The rule: a paired t-test on the per-seed log ratios, Holm-corrected within "
            f"each family at {ALPHA:g}; \"equal\" only when the ratio's 90% interval lies inside the margin. Every "
            f"other comparison involves {others}."
        )


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return fmt(value / reference, 2)
