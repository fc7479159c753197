"""A report's text: its template filled, its cells and sections, its answer, and the numbers its conclusions cite.

Owns what turns a grid's records into the markdown of `results/experiment N/README.md`:
- `fill_template` (`{placeholder}` substitution that fails on a missing or an unused value) and
  `render_report`, which fills a template with a notebook's values and the texts every report shares
  (`SHARED_TEXTS`), opens its "## Results" with the gate's subsection, repeats the gate's verdict
  under every concluding heading, closes with the diverged runs and places the `Answer` under the title;
- the cells of a report's settings table (`settings_table`, `settings_cells` with the hardware and
  wall-time cells, `evaluation_rows`, `recipe_row`, `level1_row`) and its sections
  (`learned_section`: did the models learn?; `divergence_section`: which runs diverged);
- `Answer`, `read_answer` and `findings_table`: a report's one-line answer and the README's table of them;
- `Cites`, `Cited` and `reference_values`: the numbers a conclusions file cites, formatted once, which its
  template indexes directly (`{C.mean[looped L2]}`): per configuration its mean, per-seed errors, seeds under the
  gate, status, a reading's mean, a loop's error, training minutes and step time; per pair of configurations the
  verdict drawn between them; the gate and the reference errors.

Report templates: `experiments/reports/experiment N.md` is the report; `experiment N - PART.md`
are optional parts (e.g. "conclusions cpu") the notebook appends by name. Placeholders follow
`str.format` and start with a name (`{name}`, `{name:.1f}`, or `{C.mean[looped L2]}`, an item of a value the
template indexes); a literal brace is written `{{` / `}}`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

import plots
from checks import require
from configs import TrainConfig
from protocol import RECIPE, SCREEN_RULE
from tasks import task_from_dict
from verdicts import (
    STRENGTHS,
    VERDICT_RULE,
    Gate,
    Verdict,
    final_error,
    learned_table,
    named_with_mean,
    reference_errors,
    reference_names,
    trained_groups,
)

ROOT = Path(__file__).resolve().parent
K = TypeVar("K", bound=Hashable)

# The report headings under which conclusions are drawn: the gate's verdict is repeated there.
CONCLUDING_HEADING = re.compile(r"^## (?:.*against these numbers|Conclusions).*$", re.MULTILINE)


# Texts every report may cite by placeholder, written once here.
SHARED_TEXTS = {"verdict_rule": VERDICT_RULE, "screen_rule": SCREEN_RULE}


@dataclass(frozen=True)
class Answer:
    """A report's answer to its study's question, in the fixed place under its title that the
    README's findings table is generated from (`findings_table`): one line of text, its strength
    (`verdicts.STRENGTHS`, usually `Comparisons.strength()` of the primary comparisons) and the
    budget its numbers are at (steps x prompts, seeds)."""

    text: str
    strength: str
    budget: str

    def __post_init__(self) -> None:
        require(
            self.strength in STRENGTHS, f"Answer.strength={self.strength!r} is not allowed; choose one of {STRENGTHS}"
        )
        for name in ("text", "budget"):
            value = getattr(self, name)
            require(value.strip() and "\n" not in value, f"Answer.{name} must be one non-empty line")

    def block(self) -> str:
        return (f"## Answer\n\n**Answer.** {self.text}\n\n**Strength.** {self.strength}\n\n"
                f"**Budget.** {self.budget}\n")


ANSWER_FIELDS = re.compile(r"^\*\*(Answer|Strength|Budget)\.\*\* (.+)$", re.MULTILINE)


def read_answer(report: str) -> Answer | None:
    """The `Answer` a rendered report states under its title, or None when it states none."""
    fields = dict(ANSWER_FIELDS.findall(report.split("\n## ", 2)[1] if "\n## Answer" in report else ""))
    if set(fields) != {"Answer", "Strength", "Budget"}:
        return None
    return Answer(fields["Answer"], fields["Strength"], fields["Budget"])


def findings_table(root: str | Path = ROOT) -> str:
    """The README's findings table, generated from each committed report's `Answer`: one row per
    experiment, the answer, its strength and budget, and the report's link; a report without one
    says so (its numbers stand in the report, under the earlier verdict rule)."""
    rows = []
    reports = sorted(Path(root, "results").glob("experiment */README.md"), key=lambda p: int(p.parent.name.split()[1]))
    for path in reports:
        answer = read_answer(path.read_text())
        folder = path.parent.name
        link = f"[{folder}](results/{folder.replace(' ', '%20')}/README.md)"
        if answer is None:
            rows.append([folder, "not re-rendered with the verdict rule yet: see the report", "-", "-", link])
        else:
            rows.append([folder, answer.text.replace("|", "\\|"), answer.strength, answer.budget, link])
    return plots.markdown_table(["experiment", "answer", "strength", "budget", "report"], rows)


def _root(field: str) -> str:
    """The name a placeholder's field starts with: 'C' of 'C.mean[looped L2]' ('0' or '' for a position)."""
    return re.match(r"[^.\[]*", field).group()


def placeholders(template: str) -> list[str]:
    """The root names a template's placeholders cite, in order of first use: `{name}`, `{name:spec}` and
    `{name.attribute[key]}` (a value the template indexes, such as a `Cited`) each cite `name`."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = _root(field)
        if not root.isidentifier():
            raise ValueError(f"report placeholder {{{field}}} must start with a name (not a position)")
        names.append(root)
    return list(dict.fromkeys(names))


class _TemplateFormatter(string.Formatter):
    """`str.format`, but a placeholder whose index or attribute its value lacks fails naming the placeholder."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, AttributeError) as error:
            raise ValueError(
                f"report placeholder {{{field_name}}} cites nothing: {type(error).__name__} {error}"
            ) from None


def fill_template(template: str, values: Mapping[str, Any]) -> str:
    """`template` with every placeholder replaced by what it cites of `values`: `{name}` (or `{name:spec}`)
    `values[name]`, and `{name.attribute[key]}` that item of the value (a `Cited`, a `Cites`, a mapping).

    Raises ValueError naming the placeholders without a value and the values without a placeholder (by root
    name), so prose and computation cannot drift apart silently, and naming a placeholder whose key or attribute
    its value does not have."""
    used = placeholders(template)
    missing = [name for name in used if name not in values]
    unused = [name for name in values if name not in used]
    if missing or unused:
        raise ValueError(
            f"report template: placeholders without a value {missing}; values without a placeholder {unused}"
        )
    return _TemplateFormatter().vformat(template, (), values)


def settings_table(rows: Mapping[str, Any]) -> str:
    """The design section's "| setting | value |" table, one row per entry."""
    return plots.markdown_table(["setting", "value"], rows.items())


def baselines_at_query(heldout: tuple, baselines: Mapping[str, Sequence[float]], n_dims: int) -> str:
    """'least squares 0.01, averaging 0.41, predicting 0: 1' at the query position, for a report."""
    zero = float(heldout[1][:, -1].square().mean() / n_dims)
    return ", ".join(f"{name} {plots.fmt(errors[-1])}" for name, errors in baselines.items()) + (
        f", predicting 0: {plots.fmt(zero)}"
    )


def joined(values: Iterable[Any]) -> str:
    """'1, 5, 10' for a report."""
    return ", ".join(map(str, values))


def gate_for(gate: Gate | Mapping[str, Gate] | None, task_name: str) -> Gate:
    """The gate of one task: `gate` itself, `Gate()` when None, or `gate[task_name]`."""
    if gate is None:
        return Gate()
    if isinstance(gate, Gate):
        return gate
    require(task_name in gate, f"no gate was fixed for task {task_name!r}; gates are given for {sorted(gate)}")
    return gate[task_name]


def render_report(
    template: str,
    values: Mapping[str, Any],
    learned: tuple[str, str | None] | Callable[[], tuple[str, str | None]] | None = None,
    divergence: str = "",
    answer: Answer | None = None,
    template_name: str = "the report template",
) -> str:
    """The report: `template` filled with `values` and the `SHARED_TEXTS` it uses (`fill_template`: every
    placeholder must have a value and every value a placeholder); `learned` (the gate's subsection and, when some
    configuration did not pass, the sentence that says so: `learned_section`, or a function that computes them, called
    once the template is known to have the section) opens its "## Results" section and
    the sentence is repeated under every heading that draws conclusions ("## ... against these numbers",
    "## Conclusions ..."); `divergence` closes it; `answer` is placed under the title."""
    shared = {name: text for name, text in SHARED_TEXTS.items() if name in placeholders(template)}
    report = fill_template(template, {**shared, **values})
    if learned is not None:
        heading = "\n## Results\n"
        require(heading in report, f"{template_name} has no '## Results' section to open with the gate")
        section, summary = learned() if callable(learned) else learned
        report = report.replace(heading, heading + "\n" + section + "\n", 1)
        if summary is not None:
            report = CONCLUDING_HEADING.sub(lambda m: f"{m.group(0)}\n\n> Gate: {summary}\n", report)
    report += divergence
    if answer is not None:  # the fixed place the README's findings table is generated from
        title, _, rest = report.partition("\n")
        report = f"{title}\n\n{answer.block()}\n{rest}"
    require(
        "\u27e6verdict" not in report,
        "the report holds a verdict placeholder: pass the text through Comparisons.resolve once every "
        "comparison is drawn (Holm's correction needs the whole family)",
    )
    return report


def run_minutes(records: Iterable[dict]) -> float:
    """The runs' own time added up, in minutes. A record's `wall_time_s` is the sitting that wrote it; a run
    resumed from a checkpoint trained partly in earlier sittings, which its `train.wall_time_s` (accumulated
    across sittings) counts, so each run counts the larger."""
    return sum(max(r["wall_time_s"], r["train"].get("wall_time_s", 0.0)) for r in records) / 60


def wall_time_cell(grid: Mapping[str, Any], records: Iterable[dict]) -> str:
    """The report's wall-time cell: the grid's last sitting (and, when it computed only some of the runs, how
    many) and the runs' own time added up (`run_minutes`), which counts every sitting."""
    minutes = run_minutes(records)
    computed, runs = grid.get("computed"), grid.get("runs")
    sitting = f"grid {grid['wall_time_s'] / 60:.1f} min"
    if computed is not None and computed < runs:
        sitting = (
            f"the grid's last sitting {grid['wall_time_s'] / 60:.1f} min, which computed {computed} of its "
            f"{runs} runs"
        )
    return f"{sitting} ({grid['backend']} backend); {minutes:.1f} run-minutes in total"


def hardware_cell(grid: Mapping[str, Any], records: Iterable[dict]) -> str:
    """The report's hardware cell: the last sitting's machine and, when the runs were computed on several
    (records kept from earlier sittings), each machine with its count of runs."""
    machines: dict[str, int] = {}
    for record in records:
        machine = record.get("hardware", "unknown")
        machines[machine] = machines.get(machine, 0) + 1
    if set(machines) <= {grid["hardware"]}:
        return grid["hardware"]
    ordered = sorted(machines.items(), key=lambda m: -m[1])  # the machine that computed most runs first
    counts = "; ".join(f"{machine}: {n} run{'s' if n != 1 else ''}" for machine, n in ordered)
    return f"{grid['hardware']} (last sitting); the runs were computed on {counts}"


def settings_cells(preset: str, rows: Mapping[str, Any], grid: Mapping[str, Any], records: Sequence[dict]) -> str:
    """The design section's settings table: the preset, then `rows`, then the hardware and wall time of the
    grid (`hardware_cell`, `wall_time_cell`)."""
    return settings_table(
        {"preset": f"`{preset}`", **rows, "hardware": hardware_cell(grid, records),
         "wall time": wall_time_cell(grid, records)}
    )


def evaluation_rows(evaluation, extrapolation_note: str = "") -> dict[str, str]:
    """The settings rows every report shares for level 2 and the extrapolation (`evaluation`: a
    `runner.EvalConfig`)."""
    return {
        "level 2": f"{evaluation.launches} launches x {evaluation.batches_per_launch} x {evaluation.batch_size} "
        "prompts per run, test std ~ U(0, 2), mean 0",
        "extrapolation": f"eval b = {joined(evaluation.extrapolation_b)} on the held-out set{extrapolation_note}",
    }


LAPTEV_LOSS = "loss of the Laptev study (all loops, all positions, / d)"


def recipe_row(
    steps: int | str, batch: int | str, rate: str = "", loss: str = LAPTEV_LOSS, clipping: bool = True
) -> str:
    """The "steps x batch" cell of a report that trains with `protocol.RECIPE`: '3000 x 64, Adam, <rate, >5% linear
    warm-up then cosine decay, gradient clipping at 1, <loss>' (`rate`: how the peak rate was set, where the cell
    says it; `batch` may say more, as '64 (2x 1200)'; `clipping` False: the sentence leaves clipping out; `loss`
    empty: no loss clause)."""
    parts = [f"{steps} x {batch}", "Adam", *([rate] if rate else []),
             f"{RECIPE['warmup']:.0%} linear warm-up then cosine decay"]
    if clipping:
        parts.append(f"gradient clipping at {RECIPE['clip_grad_norm']:g}")
    return ", ".join(parts + ([loss] if loss else []))


def level1_row(eval_prompts: int, note: str = "") -> str:
    """The "level 1" cell: 'fixed held-out set of 1024 prompts every 5% of training<note>'."""
    return f"fixed held-out set of {eval_prompts} prompts every {RECIPE['eval_every']:.0%} of training{note}"


def divergence_section(records: Sequence[dict]) -> str:
    """The report's closing section: which runs diverged and why (every report states it)."""
    diverged = [r for r in records if r["train"]["status"] != "finished"]
    if not diverged:
        lines = [f"None: all {len(records)} runs finished training."]
    else:
        lines = [
            f"{len(diverged)} of {len(records)} runs stopped on a non-finite loss; their seeds are "
            "left out of every mean, verdict and plot above:",
            "",
        ]
        lines += [f"- `{r['spec']['name']}`: {r['train']['message']}" for r in diverged]
    return "\n## Diverged runs\n\n" + "\n".join(lines) + "\n"


def learned_section(
    configurations: Mapping[str, Sequence[dict]], gate: Gate | Mapping[str, Gate] | None = None
) -> tuple[str, str | None]:
    """The "did the models learn?" subsection every report opens its results with: for each task and held-out
    set of the grid (`configurations`: {name: its seeds' records}, `experiment.Results.configurations`), the gate,
    the reference errors on those prompts and `verdicts.learned_table` of its configurations, then how many passed
    and what that means for the comparisons that follow. `gate`: one `Gate` for every task (default `Gate()`), or
    one per task name (`task.to_dict()["name"]`), fixed before the runs, for grids of several function classes.
    Returns (the subsection, that last sentence when some configuration did not pass, else None)."""
    by_heldout: dict[str, dict[str, Sequence[dict]]] = {}
    for name, results in configurations.items():
        spec = results[0]["spec"]
        train = spec["train"]
        key = json.dumps([spec["task"], train["n_points"], train["eval_prompts"], train["eval_seed"]], sort_keys=True)
        by_heldout.setdefault(key, {})[name] = results
    blocks, passed, total = [], [], 0
    for groups in by_heldout.values():
        spec = next(iter(groups.values()))[0]["spec"]
        task_name = spec["task"].get("name", "task")
        task_gate = gate_for(gate, task_name)
        references = reference_errors(
            task_from_dict(spec["task"]), TrainConfig(**spec["train"]), reference_names(task_gate)
        )
        blocks.append(
            (f"Task `{task_name}`. " if len(by_heldout) > 1 else "") + learned_table(groups, references, task_gate)
        )
        passed += trained_groups(groups, references, task_gate)
        total += len(groups)
    records = [r for results in configurations.values() for r in results]
    steps = joined(sorted({r["spec"]["train"]["steps"] for r in records}))
    if not passed:
        summary = (
            f"**None of the {total} configurations passed the gate.** Every comparison below is between models "
            f"that had not learned the task after {steps} training steps: it describes how far training got at "
            "this budget, not what the models learn, and no finding about the architectures is drawn from it."
        )
    elif len(passed) == total:
        section = "\n\n".join(blocks)
        return f"### Did the models learn?\n\n{section}\n\nAll {total} configurations passed the gate.\n", None
    else:
        summary = (
            f"{len(passed)} of {total} configurations passed the gate ({'; '.join(passed)}). A comparison that "
            "involves any other configuration describes training at this budget, not what the models learn."
        )
    return "### Did the models learn?\n\n" + "\n\n".join(blocks) + "\n\n" + summary + "\n", summary


class Cites:
    """A family of values a report template cites by index: `{cites[looped L2]}` is `read("looped L2")`, and a key
    that holds '|' passes each part as an argument: `{cites[a|b]}` is `read("a", "b")` (a template's keys are
    text). Called, `cites(*keys)` reads the same, so a notebook's own lines and its template cite one formatting;
    a key `read` does not know fails `fill_template` with the placeholder named."""

    def __init__(self, read: Callable[..., Any]) -> None:
        self.read = read

    def __getitem__(self, key: Any) -> Any:
        return self.read(*str(key).split("|"))

    def __call__(self, *keys: Any) -> Any:
        return self.read(*keys)


class Cited(Generic[K]):
    """The per-configuration numbers a report's conclusions cite, each formatted one way for every report, as views
    (`Cites`) a template indexes by the configuration's key or label: `{C.mean[looped L2]}`. From the
    configurations' verdicts against the gate (`status`: {key: `verdicts.Verdict`}, the notebook's STATUS; a key is
    any hashable, a name or a tuple such as (model, b), cited in a template by `label(key)`) and, for the views
    that need them, `runs` (a key's records, `experiment.Results`), `compared` (the resolved
    `verdicts.Comparisons`), `readings` ({name: a per-run reading such as `experiment.loop_error_at(b)`}),
    `references` (`verdicts.reference_errors`) and `step_ms` ({key: ms per training step}).

    Views (a template's key in brackets; '|' separates arguments):
    - `mean[v]`: the mean over seeds of the final held-out last-loop error, '0.0123'; `mean[v|reading]`: the mean
      over finished seeds of a named reading;
    - `seeds[v]`: each finished seed's final error in seed order, '0.011, 0.013'; `passed[v]`: '2 of 3' seeds
      under the gate; `status[v]`: the verdict's status; `describe[v]`: 'trained, 3 of 3 seeds under the gate';
      `named[v]`: 'v (0.0123)' for a verdict's line;
    - `result[a|b]`, `result[a|b|reading]`: the resolved verdict of a against b (drawn either way round);
    - `loop[v|2]`: the mean over finished seeds of the query error at loop 2; `minutes[v]`: the mean training
      minutes per run; `ms[v]`: ms per training step; `ms_ratio[a|b]`: a's step time over b's, 'x' left out;
    - `ref[predicting 0]`: a reference error."""

    def __init__(
        self,
        status: Mapping[K, Verdict],
        label: Callable[[K], str] = str,
        *,
        runs: Callable[[K], Any] | None = None,
        compared: Any = None,
        readings: Mapping[str, Callable[[dict], float]] | None = None,
        references: Mapping[str, float] | None = None,
        step_ms: Mapping[K, float] | None = None,
    ) -> None:
        self.verdicts = status
        self.label = label
        self.readings = dict(readings or {})
        verdict_of = lambda key: status[self.key(key)]
        self.mean = Cites(self._mean)
        self.seeds = Cites(lambda key: ", ".join(plots.fmt(e) for e in verdict_of(key).errors))
        self.passed = Cites(lambda key: f"{verdict_of(key).passed} of {verdict_of(key).seeds}")
        self.status = Cites(lambda key: verdict_of(key).status)
        self.describe = Cites(lambda key: verdict_of(key).describe())
        self.named = Cites(self._named)
        self.result = Cites(lambda a, b, reading=None: compared.result(
            self.key(a), self.key(b), *([] if reading is None else [self.reading(reading)])))
        self.loop = Cites(lambda key, loop: plots.fmt(np.mean(
            [r["loop_errors"][int(loop) - 1] for r in runs(self.key(key)).finished])))
        self.minutes = Cites(lambda key: plots.fmt(np.mean(runs(self.key(key)).train_minutes())))
        self.ms = Cites(lambda key: plots.fmt(step_ms[self.key(key)]))
        self.ms_ratio = Cites(lambda a, b: plots.fmt(step_ms[self.key(a)] / step_ms[self.key(b)], 2))
        self.ref = Cites(lambda name: plots.fmt(references[name]))
        self.runs = runs

    def key(self, key: Any) -> K:
        """The configuration a template's key names: the key itself, or the one key whose label it is."""
        if key in self.verdicts:
            return key
        matches = [k for k in self.verdicts if self.label(k) == key]
        if len(matches) != 1:
            raise KeyError(f"{key!r} names {len(matches)} configurations; the keys are {list(self.verdicts)}")
        return matches[0]

    def reading(self, name: str) -> Callable[[dict], float]:
        """The per-run reading cited as `name`."""
        if name not in self.readings:
            raise KeyError(f"no reading {name!r}; the readings are {sorted(self.readings)}")
        return self.readings[name]

    def _mean(self, key: Any, reading: str | None = None) -> str:
        if reading is None:  # the verdict's mean of the final errors
            return plots.fmt(self.verdicts[self.key(key)].mean)
        return plots.fmt(np.mean(self.runs(self.key(key)).values(self.reading(reading))))

    def _named(self, key: Any) -> str:
        return named_with_mean(self.label(self.key(key)), self.verdicts[self.key(key)])


def cite_error(record: dict) -> str:
    """One run's final held-out last-loop error as a report cites it (a tuning or screen run's, typically)."""
    return plots.fmt(final_error(record))


REFERENCE_KEYS = {"zero": "predicting 0", "averaging": "averaging", "least_squares": "least squares"}


def reference_values(threshold: float, references: Mapping[str, float], *names: str) -> dict[str, str]:
    """The values a conclusions file cites for the gate and the reference errors on the same prompts:
    {"gate": threshold, and each of `names` ("zero", "averaging", "least_squares") its reference error}, each
    formatted (`plots.fmt`). Only the names a template cites, since every value needs its placeholder."""
    unknown = [name for name in names if name not in REFERENCE_KEYS]
    require(not unknown, f"reference_values: {unknown} unknown; choose from {sorted(REFERENCE_KEYS)}")
    return {"gate": plots.fmt(threshold), **{name: plots.fmt(references[REFERENCE_KEYS[name]]) for name in names}}
