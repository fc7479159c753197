"""Grids of runs: presets, where results go, and one runner with several backends.

Owns:
- `choose_preset` (the notebooks' `PRESET` environment variable, validated) and
  `results_dir` (`cpu` -> `results/experiment N/`, `full` -> `results/experiment N/full/`,
  `smoke` -> the ignored `scratch/` folder, so CI never touches committed results);
- `RunSpec`, one run of a grid (model x b x seed), and `execute_run`, which trains it,
  validates it (levels 1 and 2, extrapolation, error per position) and writes its JSON;
- `run_grid`, which runs the specs that have no result yet: in-process ("inline"), in a
  local process pool ("pool": one worker per core, one torch thread per worker) or on a
  Slurm cluster through submitit ("submitit"; its local executor in tests), or as batched
  ensembles ("ensemble": the runs of one shape that differ only in seed and b train as one
  vmapped model, for GPUs; `ensemble.py`); "auto" picks the ensemble on CUDA and the pool on
  CPU. Every run writes its own JSON atomically, finished runs are skipped on re-run, and a
  crashed run does not lose the others; `run_grid_timed` also records the grid's wall time;
- `training_allowed` (the `TRAINING` environment variable: "off" re-renders a report from the
  committed runs and refuses, before any work, a grid that would have to compute a run).
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import os
import platform
import re
import signal
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import tracking as tracked
from checks import require, require_choice, require_int
from configs import TrainConfig
from ensemble import MEMBER_FIELDS, check_ensemble, train_ensemble
from evaluation import (
    bootstrap_band,
    error_scale,
    heldout_prompts,
    label_sensitivity,
    ood_prompts,
    prediction_errors,
    prompt_errors,
    state_updates,
    validate,
)
from seeding import build_model
from storage import load_run, read_json, save_run, set_aside, write_json
from tasks import OOD_KINDS, task_from_dict
from training import TRAINING_VERSION, TrainResult, check_effective, train, training_key
from transformer import ModelConfig, count_parameters

ROOT = Path(__file__).resolve().parent
PRESETS = ("smoke", "cpu", "full")
BACKENDS = ("auto", "inline", "pool", "submitit", "ensemble")


def choose_preset(presets: dict[str, Any], default: str = "cpu") -> tuple[str, Any]:
    """Read `PRESET` from the environment and return (name, presets[name])."""
    name = os.environ.get("PRESET", default)
    if name not in presets:
        raise ValueError(f"PRESET={name!r} is not allowed; choose one of {tuple(presets)}")
    return name, presets[name]


TRAINING_CHOICES = ("on", "off")


def training_allowed() -> bool:
    """`TRAINING` from the environment: "on" (default) computes the runs a grid lacks; "off" only
    reads finished runs (re-rendering a report from the committed runs), so that a grid which would
    have to train or evaluate anything fails at once, naming the runs, instead of training for hours."""
    value = os.environ.get("TRAINING", "on").strip() or "on"
    require_choice("TRAINING", value, TRAINING_CHOICES)
    return value == "on"


def results_root() -> Path:
    """`LOOPED_RESULTS_ROOT` (with `~` expanded), or the repository root when it is unset or empty.
    A relative path is refused: a notebook runs from `experiments/`, where it would land."""
    value = os.environ.get("LOOPED_RESULTS_ROOT", "").strip()
    if not value:
        return ROOT
    path = Path(value).expanduser()
    require(
        path.is_absolute(),
        f"LOOPED_RESULTS_ROOT={value!r} must be an absolute path (or ~/...): a notebook runs from experiments/, "
        "so a relative one would write there",
    )
    return path


def results_dir(experiment: int, preset: str, root: str | Path | None = None) -> Path:
    """Where a notebook writes: committed for cpu/full, scratch for smoke.

    `root` (default: `LOOPED_RESULTS_ROOT`, else the repository root) holds `results/` and
    `scratch/`; a re-training into another root leaves the committed results as they are.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; choose one of {PRESETS}")
    root = Path(root) if root is not None else results_root()
    if preset == "smoke":
        return root / "scratch" / f"experiment {experiment}"
    base = root / "results" / f"experiment {experiment}"
    return base if preset == "cpu" else base / preset


def hardware() -> str:
    """One line naming the machine: CPU model and cores (and the GPU where one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


@dataclass(frozen=True)
class EvalConfig:
    """How a trained run is evaluated: the Laptev study's level-2 protocol, the extrapolation
    loop counts (see utils.validate), and the optional evaluations a run may add to its record
    (all off by default):

    bootstrap:         the last loop's error at every position on the held-out set, with a
                       bootstrap 5 to 95% band over prompts ("position_band");
    state_updates:     the relative state update of every loop up to max(extrapolation_b) on
                       the held-out set ("state_updates"; does the loop reach a fixed point?);
    ood_kinds:         out-of-distribution prompt kinds (`tasks.OOD_KINDS`), each scored like
                       `bootstrap` on its own fixed prompt set (`utils.ood_prompts`) ("ood");
    label_sensitivity: the number of held-out prompts (0: off) on which the last loop's
                       prediction at x_i is probed by shifting its own label y_i and, as a
                       control, the next label y_(i+1) by +1 (`utils.label_sensitivity`):
                       {"own": [P-1], "later": [P-2]} ("label_sensitivity"; label leakage);
    positional_table:  the learned positional-encoding table of a model with `pe="learned"`
                       ("positional_table": [context, hidden]).
    """

    launches: int = 10
    batches_per_launch: int = 10
    batch_size: int = 128
    seed: int = 4815162342 % 2**31
    extrapolation_b: tuple[int, ...] = (1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)
    bootstrap: bool = False
    state_updates: bool = False
    ood_kinds: tuple[str, ...] = ()
    label_sensitivity: int = 0
    positional_table: bool = False

    def __post_init__(self) -> None:
        # a record read back gives lists
        object.__setattr__(self, "extrapolation_b", tuple(self.extrapolation_b))
        object.__setattr__(self, "ood_kinds", tuple(self.ood_kinds))
        for name in ("launches", "batches_per_launch", "batch_size"):
            require_int(f"EvalConfig.{name}", getattr(self, name))
        require_int("EvalConfig.seed", self.seed, minimum=0)
        require(len(self.extrapolation_b) > 0, "EvalConfig.extrapolation_b must hold at least one loop count")
        for b in self.extrapolation_b:
            require_int("EvalConfig.extrapolation_b entry", b)
        for name in ("bootstrap", "state_updates", "positional_table"):
            require_choice(f"EvalConfig.{name}", getattr(self, name), (False, True))
        unknown = [kind for kind in self.ood_kinds if kind not in OOD_KINDS]
        require(not unknown, f"EvalConfig.ood_kinds has unknown kinds {unknown}; choose from {OOD_KINDS}")
        require_int("EvalConfig.label_sensitivity", self.label_sensitivity, minimum=0)

    def to_dict(self) -> dict:
        return {**asdict(self), "extrapolation_b": list(self.extrapolation_b), "ood_kinds": list(self.ood_kinds)}


Level2Config = EvalConfig  # deprecated alias: the old name, kept so existing notebooks and tests still run


# What a run is for (RunSpec.role): a run that chooses a setting is never one a report compares.
ROLES = ("reported", "tuning", "screen")

# A run's name is the file stem of its JSON: no path separators, no leading dot, a sane length.
RUN_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]{0,119}")


@dataclass(frozen=True)
class RunSpec:
    """One run: a model, a task, how to train it and how to evaluate it.

    `labels` are free-form fields for grouping results (model name, b, seed, ...);
    `name` is the file stem of the run's JSON. `role` says what the run is for (`ROLES`):
    "reported" (default; a seed a report compares, validated on the held-out prompts), "tuning"
    or "screen" (a run that chooses a setting such as the peak rate; validated on the tuning
    stream, `protocol.TUNING_STREAM`, and never counted as a reported seed). `level2=` is the deprecated keyword for
    `evaluation=`; records written before the rename store the spec's `evaluation` under
    "level2", which `from_dict` still reads.
    """

    name: str
    model: ModelConfig
    task: dict
    train: TrainConfig
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    labels: dict = field(default_factory=dict)
    role: str = "reported"
    level2: InitVar[EvalConfig | None] = None

    def __post_init__(self, level2: EvalConfig | None) -> None:
        if level2 is not None:
            require(self.evaluation == EvalConfig(), "RunSpec: give evaluation= or the deprecated level2=, not both")
            object.__setattr__(self, "evaluation", level2)
        require(isinstance(self.evaluation, EvalConfig), "RunSpec.evaluation must be an EvalConfig")
        require(
            isinstance(self.name, str) and RUN_NAME.fullmatch(self.name) is not None,
            f"RunSpec.name={self.name!r} must be 1 to 120 letters, digits, '_', '-', '+', '=' or '.', not starting "
            "with '.' (it is the file stem of the run's JSON inside the results folder)",
        )
        require(isinstance(self.model, ModelConfig), "RunSpec.model must be a ModelConfig")
        require(isinstance(self.train, TrainConfig), "RunSpec.train must be a TrainConfig")
        try:
            task_from_dict(self.task)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"RunSpec.task={self.task!r} is not a task's dict (Task.to_dict()): {error}") from None
        try:
            survives_json = json.loads(json.dumps(self.labels)) == self.labels
        except (TypeError, ValueError):
            survives_json = False
        require(
            isinstance(self.labels, dict) and survives_json,
            f"RunSpec.labels={self.labels!r} must survive JSON unchanged (string keys; str, int, float, bool or None "
            "values or lists of them; no tuples or numpy numbers), since the cache compares them",
        )
        require_choice("RunSpec.role", self.role, ROLES)
        require(
            not self.evaluation.positional_table or self.model.pe == "learned",
            f"RunSpec {self.name!r}: EvalConfig.positional_table=True needs ModelConfig.pe='learned' "
            f"(pe={self.model.pe!r} has no table to record)",
        )
        check_effective(self.model, self.train)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model.to_dict(),
            "task": dict(self.task),
            "train": self.train.to_dict(),
            "evaluation": self.evaluation.to_dict(),
            "labels": dict(self.labels),
            "role": self.role,
        }

    @classmethod
    def from_dict(cls, values: dict) -> RunSpec:
        """The inverse of `to_dict`. Fields added to the configs since a record was written
        take their defaults, and the evaluation's old key "level2" is read as "evaluation",
        so older records still match the specs that produced them."""
        evaluation = values["evaluation"] if "evaluation" in values else values["level2"]
        return cls(
            name=values["name"],
            model=ModelConfig.from_dict(values["model"]),
            task=dict(values["task"]),
            train=TrainConfig(**values["train"]),
            evaluation=EvalConfig(**evaluation),
            labels=dict(values["labels"]),
            role=values.get("role", "reported"),
        )

    def training_key(self) -> str:
        """A short hash of what determines this run's training (model, task, training config;
        the evaluation settings apart): its checkpoint's name carries it, so a changed spec never
        resumes another spec's training state."""
        return training_key(self.model, [self.train], self.task)

    def cost(self) -> float:
        """Relative compute, to start the largest runs first."""
        config = self.model
        per_token = config.n_layers * (12 * config.hidden_dim**2 + 2 * config.hidden_dim * config.mlp_hidden)
        return float(per_token) * self.train.b * self.train.steps * self.train.batch_size * self.train.n_points


def trained_dir() -> Path:
    """Where trained runs are kept by their training key, for every notebook to reuse: the
    ignored `scratch/trained/` (under `LOOPED_RESULTS_ROOT` when it is set)."""
    return results_root() / "scratch" / "trained"


def training_software() -> dict:
    """What a training is computed with: torch's version and `training.TRAINING_VERSION` (raised by
    hand whenever what training computes changes; `tests/test_training_version.py` holds a tiny
    spec's losses to catch a change that forgot to raise it). A cached training or a checkpoint of
    other software is not reused."""
    return {"torch": torch.__version__, "training_version": TRAINING_VERSION}


def _store_trained(spec: RunSpec, model, result: TrainResult) -> None:
    """Keep a trained run (weights, training result and the software that trained it) under its training key."""
    record = {"model_config": spec.model.to_dict(), "train": result.to_dict(), "software": training_software()}
    save_run(trained_dir() / spec.training_key(), model, record)


def _reuse_trained(spec: RunSpec):
    """(model, TrainResult, the software that trained it) of a run with this training key trained
    before, by any notebook, with the same code and torch; None when there is none. An entry
    trained by other software, or one that cannot be read, is set aside with a warning naming it,
    and the run trains again."""
    folder = trained_dir() / spec.training_key()
    if not (folder / "run.json").exists():  # save_run writes it after the weights
        return None
    try:
        model, record = load_run(folder)
        software = record.get("software")
        if software != training_software():
            why = f"it was trained by {software or 'an unrecorded version'}, not by {training_software()}"
            set_aside(folder, why, f"run {spec.name!r} trains again")
            return None
        return model.to(spec.train.device), TrainResult(**record["train"]), software
    except Exception as error:  # any unreadable entry (truncated, not a checkpoint, ...) is set aside
        set_aside(folder, f"it cannot be read ({type(error).__name__}: {error})", f"run {spec.name!r} trains again")
        return None


def execute_run(
    spec: RunSpec,
    out_dir: str | Path,
    progress: bool = False,
    backend: str = "inline",
    tracking: tracked.Tracking | None = None,
) -> dict:
    """Train and validate one run; write `data/<name>.json` and `models/<name>/`. Returns the record.
    `tracking`: None, or where its wandb run goes (`tracking.py`).

    A run whose training key was trained before (by this or another notebook) is not trained
    again: its weights and training result come from `trained_dir()`, and only the evaluation
    runs. An interrupted run resumes from `checkpoints/<name>-<training key>.ckpt`.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    task = task_from_dict(spec.task)
    run, record = tracked.start(tracking, spec.name, spec.to_dict()), None
    try:
        reused = _reuse_trained(spec)
        if reused is not None:
            model, result, software = reused
            tracked.log_curves(run, result)
            record = finish_run(spec, task, model, result, out_dir, started, backend=backend, trained_with=software)
            return record
        model = build_model(spec.model, spec.train.seed)
        checkpoint = out_dir / "checkpoints" / f"{spec.name}-{spec.training_key()}.ckpt"
        result = train(model, task, spec.train, run=run, progress=progress, checkpoint=checkpoint)
        _store_trained(spec, model, result)
        record = finish_run(spec, task, model, result, out_dir, started, backend=backend)
        checkpoint.unlink(missing_ok=True)
        return record
    finally:
        tracked.close(run, record)


def finish_run(
    spec: RunSpec,
    task,
    model,
    result,
    out_dir: Path,
    started: float,
    backend: str = "inline",
    trained_with: dict | None = None,
) -> dict:
    """Validate a trained model (levels 1 and 2, extrapolation, errors per position and per prompt,
    and the optional evaluations of `EvalConfig`), then write its JSON and weights. Returns the
    record. The record states how it was trained: backend, device, the torch version and code hash
    that trained it (`training_software`; `trained_with`, the cache entry's, when the training was
    reused from an earlier run with the same training key), its training key and whether it was reused."""
    software = training_software() if trained_with is None else trained_with
    record: dict[str, Any] = {
        "spec": spec.to_dict(),
        "parameters": count_parameters(model),
        "hardware": hardware(),
        "software": {**software, "device": str(next(model.parameters()).device), "backend": backend},
        "training_key": spec.training_key(),
        "training_reused": trained_with is not None,
        "train": result.to_dict(),
    }
    if result.status == "finished":
        evaluation = spec.evaluation
        heldout = heldout_prompts(task, spec.train.eval_prompts, spec.train.n_points, spec.train.eval_seed)
        record["level2"] = validate(
            model,
            task,
            spec.train.b,
            spec.train.n_points,
            seed=evaluation.seed + spec.train.seed,
            launches=evaluation.launches,
            batches_per_launch=evaluation.batches_per_launch,
            batch_size=evaluation.batch_size,
            extrapolation_b=list(evaluation.extrapolation_b),
            heldout=heldout,
        )
        scale = error_scale(task)
        errors = prediction_errors(model, *heldout, spec.train.b, scale=scale)  # [b, P]; NaN: a loop never predicts
        record["position_errors"] = {
            "last_loop": _nan_to_none(errors[-1].tolist()),
            "mean_over_loops": _nan_to_none(errors.nanmean(0).tolist()),
        }
        record["loop_errors"] = errors[:, -1].tolist()  # the query error of each loop 1..b (held-out)
        record["prompt_errors"] = query_errors_per_prompt(
            model, heldout, sorted({spec.train.b, max(evaluation.extrapolation_b)}), scale
        )
        if evaluation.bootstrap:
            record["position_band"] = bootstrap_band(prompt_errors(model, *heldout, spec.train.b, scale=scale))
        if evaluation.state_updates:
            record["state_updates"] = state_updates(model, heldout[0], max(evaluation.extrapolation_b)).tolist()
        if evaluation.label_sensitivity:
            probe, _ = heldout_prompts(task, evaluation.label_sensitivity, spec.train.n_points, spec.train.eval_seed)
            record["label_sensitivity"] = {
                "own": label_sensitivity(model, probe, spec.train.b).tolist(),
                "later": label_sensitivity(model, probe, spec.train.b, lag=1).tolist(),
            }
        if evaluation.positional_table:  # pe="learned", checked by RunSpec before any training
            record["positional_table"] = model.positional.table.weight.detach().cpu().tolist()
        if evaluation.ood_kinds:
            record["ood"] = {
                kind: bootstrap_band(
                    prompt_errors(
                        model,
                        *ood_prompts(task, kind, spec.train.eval_prompts, spec.train.n_points, spec.train.eval_seed),
                        spec.train.b,
                        scale=scale,
                    )
                )
                for kind in evaluation.ood_kinds
            }
    record["wall_time_s"] = time.perf_counter() - started
    save_run(out_dir / "models" / spec.name, model, {"model_config": spec.model.to_dict(), "name": spec.name})
    write_json(out_dir / "data" / f"{spec.name}.json", record)
    return record


def query_errors_per_prompt(model, heldout: tuple, loop_counts: list[int], scale: float) -> dict[str, list]:
    """The last loop's squared error / scale at the query of every held-out prompt, run with each of
    `loop_counts` loops (b_train and the longest extrapolation b): {str(b): [n_prompts]}, in the
    held-out set's order, so that paired prompt-level differences and prompt bootstraps need no
    retraining. Six significant digits (the seed spread is far wider); null where not finite."""
    out = {}
    for b in loop_counts:
        errors = prompt_errors(model, *heldout, b, scale=scale)[:, -1]  # [n_prompts]
        out[str(b)] = [float(f"{value:.6g}") if math.isfinite(value) else None for value in errors.tolist()]
    return out


def ensemble_groups(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Specs that can train as one ensemble: the same model, task and training except seed and b."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        shared = {k: v for k, v in spec.train.to_dict().items() if k not in MEMBER_FIELDS}
        key = json.dumps([spec.model.to_dict(), spec.task, shared], sort_keys=True)
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def execute_ensemble(specs: list[RunSpec], out_dir: str | Path, tracking: tracked.Tracking | None = None) -> list[dict]:
    """Train `specs` (one `ensemble_groups` group) as one batched model, then validate and save
    each member as `execute_run` does. A group the ensemble cannot train runs one by one. An
    interrupted group resumes from `checkpoints/ensemble_<first name>_<members>-<key>.ckpt`, the
    key the group's `training_key`."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    try:
        check_ensemble(specs[0].model, [spec.train for spec in specs])
    except ValueError:
        return [execute_run(spec, out_dir, tracking=tracking) for spec in specs]
    task = task_from_dict(specs[0].task)
    runs = [tracked.start(tracking, spec.name, spec.to_dict()) for spec in specs]
    records: list[dict] = []
    try:
        reused = [_reuse_trained(spec) for spec in specs]
        if all(pair is not None for pair in reused):  # every member was trained before
            for spec, (model, result, software), run in zip(specs, reused, runs, strict=True):
                tracked.log_curves(run, result)
                records.append(
                    finish_run(spec, task, model, result, out_dir, started, backend="ensemble", trained_with=software)
                )
            return records
        key = training_key(specs[0].model, [spec.train for spec in specs], specs[0].task)
        checkpoint = out_dir / "checkpoints" / f"ensemble_{specs[0].name}_{len(specs)}-{key}.ckpt"
        configs = [spec.train for spec in specs]
        models, results = train_ensemble(specs[0].model, task, configs, checkpoint=checkpoint, runs=runs)
        for spec, model, result in zip(specs, models, results, strict=True):
            _store_trained(spec, model, result)
        for spec, model, result in zip(specs, models, results, strict=True):
            records.append(finish_run(spec, task, model, result, out_dir, started, backend="ensemble"))
        checkpoint.unlink(missing_ok=True)
        return records
    finally:
        for index, run in enumerate(runs):
            tracked.close(run, records[index] if index < len(records) else None)


def resolve_backend(backend: str, specs: list[RunSpec]) -> str:
    """ "auto": the ensemble path when every run is on CUDA (one GPU kernel stream per grid row),
    else one process per core (on CPU, ensembles do not pay: docs/design.md)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    on_cuda = bool(specs) and all(spec.train.device.startswith("cuda") for spec in specs)
    return "ensemble" if on_cuda and torch.cuda.is_available() else "pool"


def _nan_to_none(values: list[float]) -> list[float | None]:
    # JSON has no NaN: a position a truncated model never predicts is stored as null.
    return [None if math.isnan(value) else value for value in values]


def _check_writable(folder: Path) -> None:
    """Fail before any training when the results folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ValueError(f"results folder {folder} cannot be written ({error}); choose another out_dir") from None


def load_result(spec: RunSpec, out_dir: str | Path) -> dict | None:
    """The saved record of `spec`, or None if it has not run. A record of a different spec
    under the same name raises, so that nothing computed is silently replaced."""
    path = Path(out_dir) / "data" / f"{spec.name}.json"
    if not path.exists():
        return None
    try:
        record = read_json(path)
        stored = RunSpec.from_dict(record["spec"]).to_dict()
    except (ValueError, KeyError, TypeError) as error:  # truncated or hand-edited: the run is redone
        why = f"cannot be read as a run record ({type(error).__name__}: {error})"
        set_aside(path, why, f"run {spec.name!r} runs again")
        return None
    if stored != spec.to_dict():
        raise ValueError(
            f"{path} holds a run with another configuration than spec {spec.name!r}; "
            "delete it or write to another results folder"
        )
    return record


def _start_worker(parent: int) -> None:
    """A pool worker: Ctrl-C is the parent's to handle (it stops the pool), and the worker ends
    itself when its parent is gone (killed), instead of idling forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


def _stop_pool(pool: futures.ProcessPoolExecutor) -> None:
    """Interrupt: cancel the queued runs and end the running ones now. A run that was stopped
    resumes from its last checkpoint when the grid runs again; finished runs are saved."""
    processes = list((pool._processes or {}).values())  # the executor has no public handle on them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)


def _execute_in_worker(
    spec: RunSpec, out_dir: str, backend: str = "pool", tracking: tracked.Tracking | None = None
) -> dict:
    # One torch thread per worker process: with another process busy, 2 threads can be 20x slower.
    torch.set_num_threads(1)
    return execute_run(spec, out_dir, backend=backend, tracking=tracking)


def run_grid(
    specs: list[RunSpec],
    out_dir: str | Path,
    backend: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    slurm: dict | None = None,
    tracking: tracked.Tracking | None = None,
) -> list[dict]:
    """Run every spec that has no result in `out_dir` yet and return all records, in order.

    backend: "inline" (this process), "pool" (`workers` processes, default one per core, one
             torch thread each), "submitit" (Slurm; `slurm` holds executor
             parameters, and `slurm={"cluster": "local"}` runs submitit's local executor),
             "ensemble" (each `ensemble_groups` group trained as one batched model in this
             process: `ensemble.train_ensemble`) or "auto" (default; `resolve_backend`).
    tracking: None (default), or a `tracking.Tracking`: every run trained here gets its own
             wandb run, with every backend (passed to the pool's workers and Slurm's jobs).
    Runs that crash are reported together in one RuntimeError after every other run has
    finished and been saved; re-running the grid retries only them.
    """
    backend = resolve_backend(backend, specs)
    tracked.check(tracking)  # wandb missing: one clear error before any run
    may_train = training_allowed()  # a TRAINING value not allowed: one clear error before any run
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"run names must be unique; repeated: {duplicates}")
    out_dir = Path(out_dir)
    records: dict[str, dict] = {}
    missing = []
    for spec in specs:  # a record of another configuration raises here, before any lock is taken
        record = load_result(spec, out_dir)
        if record is not None:
            records[spec.name] = record
        else:
            missing.append(spec)
    if missing and not may_train:
        shown = ", ".join(spec.name for spec in missing[:5]) + (f" and {len(missing) - 5} more" * (len(missing) > 5))
        raise RuntimeError(
            f"TRAINING=off: {len(missing)} of {len(specs)} runs have no finished result in {out_dir / 'data'} "
            f"({shown}); unset TRAINING (or set TRAINING=on) to compute them"
        )
    if missing:  # a folder of finished results is only read: it may be read-only
        _check_writable(out_dir / "data")
    pending, elsewhere = [], []  # elsewhere: runs another sitting on this folder is computing
    try:
        for spec in missing:
            (pending if _take_lock(out_dir, spec.name) else elsewhere).append(spec)
    except BaseException:  # the locks taken so far must not outlive this call
        for spec in pending:
            _release_lock(out_dir, spec.name)
        raise
    pending.sort(key=lambda spec: -spec.cost())  # largest first balances the workers
    try:
        with _LockRefresher(out_dir, [spec.name for spec in pending]):
            _run_pending(pending, out_dir, backend, workers, progress, slurm, records, len(specs), tracking)
    finally:
        for spec in pending:
            _release_lock(out_dir, spec.name)
    for spec in elsewhere:  # wait for the other sitting; a run it abandoned is computed here
        records[spec.name] = _wait_for_other_sitting(spec, out_dir, backend, workers, progress, slurm, tracking)
    return [records[name] for name in names]


def _run_pending(
    pending: list[RunSpec],
    out_dir: Path,
    backend: str,
    workers: int | None,
    progress: bool,
    slurm: dict | None,
    records: dict[str, dict],
    total: int,
    tracking: tracked.Tracking | None = None,
) -> None:
    """Compute `pending` with `backend`, adding each record to `records` (see `run_grid`)."""
    failures: dict[str, str] = {}
    bar = _runs_bar(total, len(records), progress)

    def collect(spec: RunSpec, get_record) -> None:
        try:
            records[spec.name] = get_record()
        except Exception:
            failures[spec.name] = traceback.format_exc()
        if bar is not None:
            bar.update(1)

    if backend == "inline":
        for spec in pending:
            collect(
                spec,
                lambda spec=spec: execute_run(spec, out_dir, progress=progress, backend="inline", tracking=tracking),
            )
    elif backend == "pool" and pending:
        n_workers = min(workers or os.cpu_count() or 1, len(pending))
        # spawn, not fork: forking a process whose torch/OpenMP threads already ran can hang.
        context = multiprocessing.get_context("spawn")
        pool = futures.ProcessPoolExecutor(
            n_workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
        )
        try:
            jobs = {pool.submit(_execute_in_worker, spec, str(out_dir), "pool", tracking): spec for spec in pending}
            for job in futures.as_completed(jobs):
                collect(jobs[job], job.result)
        except BaseException:  # KeyboardInterrupt (Ctrl-C, Jupyter's interrupt) or an error here
            _stop_pool(pool)
            raise
        pool.shutdown()
    elif backend == "ensemble":
        for group in ensemble_groups(pending):
            try:
                for spec, record in zip(group, execute_ensemble(group, out_dir, tracking), strict=True):
                    records[spec.name] = record
            except Exception:
                failures.update({spec.name: traceback.format_exc() for spec in group})
            if bar is not None:
                bar.update(len(group))
    elif backend == "submitit" and pending:
        import submitit

        parameters = dict(slurm or {})
        cluster = parameters.pop("cluster", None)
        executor = submitit.AutoExecutor(folder=out_dir / "submitit", cluster=cluster)
        executor.update_parameters(**parameters)
        jobs = [
            (executor.submit(_execute_in_worker, spec, str(out_dir), "submitit", tracking), spec) for spec in pending
        ]
        for job, spec in jobs:
            collect(spec, job.result)
    if bar is not None:
        bar.close()
    if failures:
        details = "\n".join(f"--- {name}\n{text}" for name, text in failures.items())
        raise RuntimeError(f"{len(failures)} of {total} runs failed (the others are saved):\n{details}")


# A sitting refreshes the locks it holds every LOCK_REFRESH_S; a lock nobody refreshed for LOCK_STALE_S
# is stale whoever wrote it (a crashed sitting, a restarted container, another machine that is gone).
LOCK_REFRESH_S = 20.0
LOCK_STALE_S = 120.0


def _lock_path(out_dir: Path, name: str) -> Path:
    return out_dir / "locks" / f"{name}.lock"


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc), so a reused pid is told apart
    from the holder; None where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _lock_text() -> str:
    return f"{os.getpid()} {platform.node()} {_process_start(os.getpid()) or '-'}\n"


def _describe_holder(text: str) -> str:
    fields = text.split()
    return f"process {fields[0]} on {fields[1]}" if len(fields) >= 2 else "an unreadable holder"


def _holder_alive(text: str, age_s: float) -> bool:
    """Whether the sitting that wrote lock `text`, last refreshed `age_s` seconds ago, still holds it."""
    fields = text.split()
    if len(fields) < 2 or age_s > LOCK_STALE_S:
        return False  # half written, or nobody refreshed it: its holder is gone
    pid, host = fields[0], fields[1]
    if host != platform.node():
        return True  # another machine, refreshed recently: it cannot be checked from here
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        pass
    started = fields[2] if len(fields) > 2 and fields[2] != "-" else None
    return started is None or _process_start(int(pid)) == started  # else the pid was reused


def _read_lock(path: Path) -> tuple[str, float] | None:
    """(text, seconds since it was last refreshed) of a lock, or None when it is gone."""
    try:
        return path.read_text(), time.time() - path.stat().st_mtime
    except OSError:
        return None


def _take_lock(out_dir: Path, name: str) -> bool:
    """Claim run `name` for this process (a file created exclusively); False if a live sitting
    holds it. A stale lock (`_holder_alive`) is taken over by exactly one sitting (`_take_over`)."""
    path = _lock_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            with open(path, "x") as file:
                file.write(_lock_text())
            return True
        except FileExistsError:
            pass
        state = _read_lock(path)
        if state is None:
            continue  # released between the two calls: try again
        if _holder_alive(*state):
            return False
        if _take_over(path, state[0]):
            return True
    return False


def _take_over(path: Path, stale_text: str) -> bool:
    """Replace the stale lock `path` (which held `stale_text`) with this process's, atomically: one
    sitting at a time may take a lock over (a guard file created exclusively), and only while the
    lock still holds the text judged stale. False when another sitting is taking it over or has."""
    guard = path.with_name(path.name + ".takeover")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        state = _read_lock(guard)
        if state is not None and state[1] > 10.0:  # left by a takeover that crashed halfway
            guard.unlink(missing_ok=True)
        return False
    try:
        state = _read_lock(path)
        if state is None or state[0] != stale_text:
            return False  # released or taken over since it was read
        fresh = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.new")
        fresh.write_text(_lock_text())
        os.replace(fresh, path)
        warnings.warn(f"lock {path} of {_describe_holder(stale_text)} was stale; taken over", stacklevel=3)
        return True
    finally:
        guard.unlink(missing_ok=True)


class _LockRefresher:
    """Refreshes (touches) the locks of `names` this process holds in `out_dir` every LOCK_REFRESH_S,
    in a daemon thread, while the `with` block runs: a long run's lock never looks stale."""

    def __init__(self, out_dir: Path, names: list[str]):
        self.paths = [_lock_path(out_dir, name) for name in names]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._refresh, daemon=True)

    def _refresh(self) -> None:
        mine = str(os.getpid())
        while not self.stop.wait(LOCK_REFRESH_S):
            for path in self.paths:
                try:
                    if path.read_text().split()[0] == mine:
                        os.utime(path)
                except (OSError, IndexError):
                    pass

    def __enter__(self) -> _LockRefresher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _release_lock(out_dir: Path, name: str) -> None:
    path = _lock_path(out_dir, name)
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
    except (OSError, IndexError):
        pass


def _wait_for_other_sitting(
    spec: RunSpec,
    out_dir: Path,
    backend: str,
    workers: int | None,
    progress: bool,
    slurm: dict | None,
    tracking: tracked.Tracking | None = None,
) -> dict:
    """The record of a run another sitting is computing, once it is written; if that sitting
    stops without writing it, the run is computed here."""
    path = _lock_path(out_dir, spec.name)
    state = _read_lock(path)
    holder = _describe_holder(state[0]) if state else "another sitting"
    print(
        f"run {spec.name!r} is being computed by {holder} (lock {path}); waiting for it. A lock that sitting "
        f"stops refreshing is taken over after {LOCK_STALE_S:.0f} s; delete the file to take it over now"
    )
    while True:
        record = load_result(spec, out_dir)
        if record is not None:
            return record
        if _take_lock(out_dir, spec.name):
            try:
                record = load_result(spec, out_dir)  # written between the two checks
                if record is None:
                    records: dict[str, dict] = {}
                    with _LockRefresher(out_dir, [spec.name]):
                        _run_pending([spec], out_dir, backend, workers, progress, slurm, records, 1, tracking)
                    record = records[spec.name]
                return record
            finally:
                _release_lock(out_dir, spec.name)
        time.sleep(1.0)


def run_grid_timed(
    specs: list[RunSpec], out_dir: str | Path, backend: str = "auto", sitting: str = "grid", **options
) -> tuple[list[dict], dict]:
    """`run_grid`, plus `data/<sitting>.json` with the wall time, hardware and backend of the
    sitting that computed the runs, and how many of them it computed (the rest were read from earlier
    sittings). A sitting that computes any run is recorded; one that only reads the cache keeps the stored
    figures, so a report always states what the computation cost and re-renders byte for byte. A notebook with two
    stages (say a tuning stage whose outcome configures the grid) names each stage's sitting."""
    require(
        re.fullmatch(r"[A-Za-z0-9_-]+", sitting) is not None,
        f"sitting={sitting!r} is not allowed; use letters, digits, '_' or '-' (it names data/<sitting>.json)",
    )
    clashing = [spec.name for spec in specs if spec.name == sitting]
    require(not clashing, f"sitting={sitting!r} is also a run's name; name the sitting otherwise (data/{sitting}.json)")
    grid_file = Path(out_dir) / "data" / f"{sitting}.json"
    if grid_file.exists():
        stored = read_json(grid_file)
        require(
            isinstance(stored, dict) and "wall_time_s" in stored and "spec" not in stored,
            f"{grid_file} is not a sitting's record (a run of that name?); name the sitting otherwise",
        )
    # A sitting that computes a run is recorded whatever it took (a re-screen that replaces a stage's runs states its
    # own cost); one that only read the cache keeps the stored figures.
    computed = sum(load_result(spec, out_dir) is None for spec in specs)
    started = time.perf_counter()
    backend = resolve_backend(backend, specs)
    records = run_grid(specs, out_dir, backend=backend, **options)
    seconds = time.perf_counter() - started
    if computed or not grid_file.exists():
        write_json(
            grid_file,
            {
                "wall_time_s": seconds,
                "hardware": hardware(),
                "backend": backend,
                "runs": len(specs),
                "computed": computed,
            },
        )
    return records, read_json(grid_file)


def _runs_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="runs")
