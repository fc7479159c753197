"""The training loop, written once, and what one training step is.

Owns `train_loop` (the schedule of evaluations and checkpoints, divergence handling, logging
and the progress bar), `train` (one model through that loop), `SingleStepper`, `train_step`,
`step_loss` / `loss_value` (the training loss, restricted to the points each loop predicts),
`plan_at` (how many loops, points and active dimensions a training step uses), `TrainResult`,
`check_training` (the checks made before any training starts) and `step_times` (what one step
costs, timed round-robin).

The loop drives a *stepper*: an object that trains one or more models ("members") one step at
a time. `SingleStepper` holds one model; `ensemble.Ensemble` holds many, stacked and vmapped.
Both sample their batches with `sample_batch`, score them with `step_loss` and follow `plan_at`,
so a member of an ensemble trains on exactly the loss a single run trains on. A stepper has:
- `configs`: one `TrainConfig` per member (they share every field but `seed` and `b`);
- `stopped`: the members whose loss was not finite (their weights are kept as they were);
- `step(done)`: training step `done` (0-based) of every member; each member's loss, None for
  a member already stopped;
- `diagnostics`: optional; after `step`, one dict per member of that step's other measurements
  (`train_step`'s "solve_residual" and "jacobian"), which `train_loop` keeps in
  `TrainResult.diagnostics` and logs beside the loss;
- `model(member)`: a model holding that member's current weights, for evaluation;
- `state_dict()` / `load_state_dict(state)`: what a checkpoint holds, to resume bit-identically
  on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from configs import TrainConfig
from evaluation import error_scale, evaluate, heldout_prompts
from seeding import build_model, make_generator, step_generator
from storage import atomic_write_bytes, set_aside, torch_bytes
from transformer import ModelConfig, check_fixed_point

CHECKPOINT_FORMAT = 3  # a checkpoint written by an older version is not resumed from


@dataclass
class TrainResult:
    """What a run produced. status is "finished" or "diverged" (then `message` says why).

    diagnostics: per-step series other than the loss, each aligned with `loss` (None where a step did not
    measure it): "solve_residual", the largest relative residual over the batch at the end of a fixed-point
    step's forward solve (where the solve fails shows step by step), and "jacobian", the estimate of
    ||J||_F^2 / n that a step with `jacobian_penalty` adds to its loss. Empty for every other run, and then
    left out of `to_dict`, so that a record of such a run reads as it always did.
    """

    loss: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    status: str = "running"
    message: str = ""
    wall_time_s: float = 0.0
    diagnostics: dict[str, list[float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        values = asdict(self)
        if not self.diagnostics:
            del values["diagnostics"]
        return values

    def add_diagnostics(self, values: dict[str, float]) -> None:
        """The diagnostics of the step whose loss was appended last: each series padded with None up to it."""
        for key, value in values.items():
            series = self.diagnostics.setdefault(key, [])
            series.extend([None] * (len(self.loss) - 1 - len(series)))
            series.append(value)

    def pad_diagnostics(self) -> None:
        """Every diagnostics series as long as `loss` (None for the steps after its last value)."""
        for series in self.diagnostics.values():
            series.extend([None] * (len(self.loss) - len(series)))


@dataclass(frozen=True)
class StepPlan:
    """What training step t uses: `b` loops, prompts of `n_points` points, `active_dims`
    non-zero x coordinates (None: all of them), and whether it solves for the fixed point."""

    b: int
    n_points: int
    active_dims: int | None
    solve: bool = False


def plan_at(config: TrainConfig, step: int, n_dims: int) -> StepPlan:
    """The curricula of `config` read at training step `step` (0-based)."""
    active_dims = None if config.dims_curriculum is None else config.dims_at(step, n_dims)
    return StepPlan(config.loops_at(step), config.points_at(step), active_dims, config.solves_at(step))


def set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> None:
    """Give every parameter group the learning rate of training step `step` (`TrainConfig.lr_at`)."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(step)


def sample_batch(task, config: TrainConfig, plan: StepPlan, generator: torch.Generator):
    """One training batch (tokens [B, S, d], ys [B, P]) as `plan` says."""
    if plan.active_dims is None:
        return task.sample(config.batch_size, plan.n_points, generator)
    return task.sample(config.batch_size, plan.n_points, generator, active_dims=plan.active_dims)


def loss_value(
    preds: torch.Tensor, ys: torch.Tensor, config: TrainConfig, n_dims: int, predicted: torch.Tensor | None = None
) -> torch.Tensor:
    """The training loss over supervised loops: mean over loops, prompts and positions, / n_dims.

    preds [b, B, P] (the loops that carry gradient are the last ones), ys [B, P].
    predicted: None, or bool [b, B, P] from `model.predicted_points`; then each loop's loss
    is the mean over the points it predicts, and the loss is the mean over loops.
    """
    if config.supervise == "last":
        preds = preds[-1:]  # [1, B, P]
        predicted = None if predicted is None else predicted[-1:]
    elif config.grad_window is not None:
        preds = preds[-config.grad_window :]  # [T, B, P]
        predicted = None if predicted is None else predicted[-config.grad_window :]
    target = ys.expand_as(preds)  # [loops, B, P]
    reduction = "mean" if predicted is None else "none"
    if config.loss == "mse":
        loss = F.mse_loss(preds, target, reduction=reduction)
    elif config.loss == "mae":
        loss = F.l1_loss(preds, target, reduction=reduction)
    else:
        loss = F.huber_loss(preds, target, delta=config.huber_delta, reduction=reduction)
    if predicted is not None:
        per_loop = (loss * predicted).sum((1, 2)) / predicted.sum((1, 2))  # [loops]
        loss = per_loop.mean()
    return loss / n_dims


def step_loss(
    model: torch.nn.Module, preds: torch.Tensor, tokens: torch.Tensor, ys: torch.Tensor, config: TrainConfig, b: int
) -> torch.Tensor:
    """The loss of predictions preds [b, B, P] on a batch, over the points `model` predicts at
    each loop (all of them unless its context is truncated: `model.predicted_points`)."""
    predicted = model.predicted_points(tokens, b) if hasattr(model, "predicted_points") else None  # [b, B, P]
    return loss_value(preds, ys, config, model.config.n_dims, predicted)


# What training computes, as a number: raise it whenever a change makes the same spec train to other
# weights (the loss, the loop, the optimiser, the data stream, the initialisation). It is part of every
# training key, so checkpoints and the trained-model cache of another version are never reused, while
# an edit that changes nothing (a docstring, a refactor) restarts no grid.
TRAINING_VERSION = 1


def non_default(config) -> dict:
    """The fields of a config dataclass that differ from their defaults (required fields always),
    as `to_dict` gives them: what a key hashes, so that a field added to the schema later, with a
    default that keeps the old behaviour, changes no key already computed."""
    values = config.to_dict()
    kept = {}
    for item in dataclasses.fields(config):
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            kept[item.name] = values[item.name]
            continue
        if json.dumps(values[item.name], sort_keys=True) != json.dumps(default, sort_keys=True):
            kept[item.name] = values[item.name]
    return kept


def training_key(model_config: ModelConfig, configs: list[TrainConfig], task: dict | None = None) -> str:
    """A short hash of what determines training: the model, every member's `TrainConfig` (less
    `threads`, which changes no number), where given the task's dict, and `TRAINING_VERSION`; each
    config by its fields that differ from the defaults (`non_default`), so a new field leaves every
    key as it was.
    A checkpoint carries the key of the run that wrote it, and a run with another key does not
    resume from it."""
    canonical = {
        "version": TRAINING_VERSION,
        "model": non_default(model_config),
        "train": [{k: v for k, v in non_default(config).items() if k != "threads"} for config in configs],
        "task": task,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]


def resolve_device(name: str) -> torch.device:
    """The torch device of `TrainConfig.device`; a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but CUDA is not available; use 'cpu'")
    return device


def check_effective(model_config: ModelConfig, config: TrainConfig) -> None:
    """Raise `ValueError` for a model setting that these training runs would never use (a
    report would describe a truncation or an alternation that never happened)."""
    n_examples = config.n_points - 1
    if model_config.context_keep != "all":
        if model_config.context_n is not None and model_config.context_n >= n_examples:
            raise ValueError(
                f"ModelConfig.context_n={model_config.context_n} keeps every one of the {n_examples} examples of "
                f"TrainConfig.n_points={config.n_points}: nothing is cut; choose context_n < {n_examples}"
            )
        if model_config.context_cut_at > config.b:
            raise ValueError(
                f"ModelConfig.context_cut_at={model_config.context_cut_at} comes after the last of the "
                f"TrainConfig.b={config.b} loops: nothing is cut in training; choose 1..{config.b}"
            )
    if model_config.loop_stacks > config.b:
        raise ValueError(
            f"ModelConfig.loop_stacks={model_config.loop_stacks} is more stacks than TrainConfig.b={config.b} loops: "
            f"some stacks would never run; choose 1..{config.b}"
        )


# Backpropagation keeps every loop's activations: memory grows linearly with the loops that
# carry gradient (about 6.6 MB a loop for a small model at batch 64: 2.7 GB at b = 400).
MAX_BACKPROP_LOOPS = 200


def check_training(model_config: ModelConfig, task, config: TrainConfig) -> None:
    """Raise `ValueError` before any training when the model, task and config do not fit."""
    model_config.check_prompt(config.n_points)
    check_effective(model_config, config)
    if config.solver == "fixed_point":
        check_fixed_point(model_config)
    if config.jacobian_penalty:
        purpose = f"TrainConfig.jacobian_penalty={config.jacobian_penalty!r} (the loop map's Jacobian)"
        check_fixed_point(model_config, purpose)
    # The implicit gradient of a fixed-point solve stores no loop (unless unrolled pretraining runs b loops first).
    implicit = config.solver == "fixed_point" and config.grad_window is None and not config.solver_pretrain
    loops_with_gradient = 0 if implicit else config.b if config.grad_window is None else config.grad_window
    if loops_with_gradient > MAX_BACKPROP_LOOPS:
        raise ValueError(
            f"TrainConfig.b={config.b} with grad_window={config.grad_window} backpropagates through "
            f"{loops_with_gradient} loops, whose activations all stay in memory (it grows with every loop); "
            f"set grad_window to at most {MAX_BACKPROP_LOOPS} (the paper's truncated backpropagation)"
        )
    if task.n_dims != model_config.n_dims:
        raise ValueError(f"task.n_dims={task.n_dims} differs from ModelConfig.n_dims={model_config.n_dims}")
    if config.dims_curriculum is not None and config.dims_curriculum[0] > task.n_dims:
        raise ValueError(
            f"TrainConfig.dims_curriculum={config.dims_curriculum!r} starts above task.n_dims={task.n_dims}; "
            f"d_start must be in 1..{task.n_dims}"
        )
    resolve_device(config.device)


def use_device(config: TrainConfig) -> torch.device:
    """The run's device; on CPU also its torch thread count (`TrainConfig.threads`)."""
    device = resolve_device(config.device)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)
    return device


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    task,
    generator,
    config: TrainConfig,
    b: int | None = None,
    n_points: int | None = None,
    active_dims: int | None = None,
    solve: bool | None = None,
    step: int = 0,
    diagnostics: dict[str, float] | None = None,
) -> float:
    """One step: sample a batch of `n_points`-point prompts with `active_dims` non-zero x
    coordinates, run b loops (`config.b`, `config.n_points` and every dimension unless
    given) or, where `solve` (default: the config's solver is "fixed_point"), the fixed-point
    solve, the loss (plus `jacobian_penalty` times the Jacobian estimate at the final state, whose
    vectors are drawn for training step `step`), and (if it is finite) an optimizer step.
    Returns the loss without the penalty, the number every run's curve shows; a non-finite loss or
    penalty leaves the weights untouched. diagnostics: None, or a dict that receives the step's
    "solve_residual" (a solving step) and "jacobian" (a penalised step) (`TrainResult.diagnostics`).
    """
    solve = config.solver == "fixed_point" if solve is None else solve
    plan = StepPlan(config.b if b is None else b, config.n_points if n_points is None else n_points, active_dims, solve)
    tokens, ys = sample_batch(task, config, plan, generator)
    measured: dict[str, float] = {}
    if plan.solve:
        # [1, B, P]: the fixed point, or grad_window loops after it (the phantom gradient); state [B, S, h]
        preds, solved, state = model.fixed_point(tokens, plan.b, config.solver_tol, config.grad_window)
        loss = step_loss(model, preds, tokens, ys, config, 1)
        measured["solve_residual"] = solved["residual"]
    else:
        preds, state = model.loops(tokens, plan.b, config.grad_window)  # [b, B, P], [B, S, h]
        loss = step_loss(model, preds, tokens, ys, config, plan.b)
    value = loss.item()
    total = loss
    if config.jacobian_penalty:
        generator_of_step = step_generator(config.seed, "jacobian", step)
        jacobian = model.loop_jacobian(tokens, state, config.jacobian_samples, generator_of_step)  # a scalar
        measured["jacobian"] = jacobian.item()
        total = loss + config.jacobian_penalty * jacobian
    if diagnostics is not None:
        diagnostics.update(measured)
    if not math.isfinite(value):
        return value
    if not math.isfinite(total.item()):
        return float("nan")  # the penalty is not finite: the step is refused as a non-finite loss would be
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if config.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
    optimizer.step()
    return value


def step_times(runs: dict[str, tuple], steps: int = 20, warmup: int = 3, device: str = "cpu") -> dict[str, float]:
    """The median wall time, in ms, of one training step (`train_step`, what `train` runs every
    step) of each run in `runs` ({name: (ModelConfig, TrainConfig, task)}) on `device`: by default
    a CPU step on one torch thread, as the runner's workers train; on a GPU the device is
    synchronised before and after every step, so that a step's time includes its kernels. The runs
    are timed round-robin, one step of each in turn, so a change in the machine's load falls on
    every run alike; a record's `wall_time_s` also counts its validations and whatever shared the
    machine while that run trained."""
    if not (isinstance(steps, int) and steps >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"step_times: steps={steps!r} must be an int >= 1 and warmup={warmup!r} an int >= 0")
    target = resolve_device(device)
    synchronise = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    if target.type == "cpu":
        torch.set_num_threads(1)
    try:
        states = {}
        for name, (model_config, config, task) in runs.items():
            config = replace(config, device=str(target))  # a step on `device`, whatever device the run trains on
            model = build_model(model_config, config.seed).to(target)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
            states[name] = (model, optimizer, task, make_generator(config.seed, "train", target), config)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(warmup + steps):
            for name, (model, optimizer, task, generator, config) in states.items():
                synchronise()
                started = time.perf_counter()
                loss = train_step(model, optimizer, task, generator, config)
                synchronise()
                elapsed = time.perf_counter() - started
                if not math.isfinite(loss):
                    raise RuntimeError(f"step_times: run {name!r}: the loss became {loss} while its steps were timed")
                if round_ >= warmup:
                    times[name].append(elapsed)
        return {name: 1e3 * float(np.median(values)) for name, values in times.items()}
    finally:
        torch.set_num_threads(threads)


class Stepper(Protocol):
    """What `train_loop` drives (see the module docstring)."""

    model_config: ModelConfig
    configs: list[TrainConfig]
    device: torch.device
    stopped: set[int]

    def step(self, done: int) -> list[float | None]: ...

    def model(self, member: int) -> torch.nn.Module: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class SingleStepper:
    """One model, its Adam and its training-data stream."""

    def __init__(self, model: torch.nn.Module, task, config: TrainConfig) -> None:
        check_training(model.config, task, config)
        self.model_config, self.configs, self.task = model.config, [config], task
        self.device = use_device(config)
        self._model = model.to(self.device).train()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.generator = make_generator(config.seed, "train", self.device)
        self.stopped: set[int] = set()
        self.diagnostics: list[dict[str, float]] = [{}]

    def step(self, done: int) -> list[float | None]:
        self.diagnostics = [{}]
        if self.stopped:
            return [None]
        config = self.configs[0]
        plan = plan_at(config, done, self.task.n_dims)
        set_lr(self.optimizer, config, done)
        value = train_step(
            self._model, self.optimizer, self.task, self.generator, config, plan.b, plan.n_points, plan.active_dims,
            plan.solve, done, self.diagnostics[0],
        )
        if not math.isfinite(value):
            self.stopped.add(0)  # train_step left the weights as they were
        return [value]

    def model(self, member: int) -> torch.nn.Module:
        return self._model

    def state_dict(self) -> dict:
        return {
            "model": self._model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "stopped": sorted(self.stopped),
        }

    def load_state_dict(self, state: dict) -> None:
        self._model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.stopped = set(state["stopped"])


def train_loop(
    stepper: Stepper,
    task,
    checkpoint: str | Path | None = None,
    runs: list | None = None,
    progress: bool = False,
) -> list[TrainResult]:
    """Train every member of `stepper` to `steps`; return one `TrainResult` per member.

    Level-1 validation runs at 0% and every `eval_every` of training on the fixed held-out
    set. checkpoint: a file path; state is saved there every `checkpoint_every` steps (0: at
    each validation) and when training ends, and an existing file is resumed from (bit-identical
    weights on CPU) if it was written by a run of the same model and training configs
    (`training_key`); a checkpoint of another run, or one that cannot be read, is set aside
    (renamed `<name>.set-aside`) with a warning and training starts afresh.
    runs: None, or one wandb run (anything with `.log(dict, step=int)`) per member.
    A member whose loss is not finite stops with a warning; its result keeps everything so far
    and has status "diverged", and a resumed run keeps it stopped.
    """
    configs = stepper.configs
    first = configs[0]
    runs = [None] * len(configs) if runs is None else runs
    scale = error_scale(task)
    heldout = tuple(
        t.to(stepper.device) for t in heldout_prompts(task, first.eval_prompts, first.n_points, first.eval_seed)
    )
    results = [TrainResult() for _ in configs]
    eval_steps = set(first.eval_steps())
    every = first.checkpoint_every
    checkpoint_steps = set(range(every, first.steps + 1, every)) if every else {s for s in eval_steps if s > 0}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    start, elapsed = 0, 0.0
    # a checkpoint of another task is not resumed (a task without to_dict, e.g. a user's, by its class)
    identity = task.to_dict() if hasattr(task, "to_dict") else {"class": type(task).__qualname__}
    key = training_key(stepper.model_config, configs, identity)
    if checkpoint is not None and checkpoint.exists():
        start, elapsed = _load_checkpoint(checkpoint, stepper, results, key)
    started = time.perf_counter() - elapsed

    def validate_now(done: int) -> None:
        for member, config in enumerate(configs):
            if member in stepper.stopped or any(entry["step"] == done for entry in results[member].evals):
                continue  # a stopped member, or a step validated before an interruption
            model = stepper.model(member)
            metrics = evaluate(model, heldout, config.b, scale=scale)
            if config.solver == "fixed_point":  # a solve that does not converge must show it: its residual
                metrics["solve_residual"] = solve_residual(model, heldout[0], config)
            results[member].evals.append({"step": done, **metrics})
            if runs[member] is not None:
                runs[member].log(
                    {"eval/reference": metrics["reference"], "eval/last_loop": metrics["last_loop"]}, step=done
                )

    def all_stopped() -> bool:
        return len(stepper.stopped) == len(configs)

    bar = _progress_bar(first.steps, start, progress)
    done = start
    for done in range(start, first.steps):
        if all_stopped():
            break  # resumed from the checkpoint of a diverged run: diverged stays diverged
        if done in eval_steps:
            validate_now(done)
        for member, value in enumerate(stepper.step(done)):
            if value is None:
                continue
            if math.isfinite(value):
                results[member].loss.append(value)
                measured = getattr(stepper, "diagnostics", None)
                measured = measured[member] if measured else {}
                results[member].add_diagnostics(measured)
                if runs[member] is not None:
                    logged = {"train/loss": value, **{f"train/{key}": v for key, v in measured.items()}}
                    runs[member].log(logged, step=done + 1)
                continue
            results[member].status = "diverged"
            results[member].message = (
                f"training stopped at step {done}: the loss is {value} (not finite); "
                f"the {done} finite losses and {len(results[member].evals)} validations before it are kept"
            )
            label = "" if len(configs) == 1 else f"ensemble member {member}: "
            warnings.warn(label + results[member].message, RuntimeWarning, stacklevel=2)
        if bar is not None:
            bar.update(1)
            if done % 50 == 0 and results[0].loss:
                bar.set_postfix(loss=f"{results[0].loss[-1]:.4f}")
        if all_stopped():
            break
        if checkpoint is not None and done + 1 in checkpoint_steps:
            _save_checkpoint(checkpoint, stepper, results, done + 1, time.perf_counter() - started, key)
    else:
        if first.steps in eval_steps:
            validate_now(first.steps)
        done = first.steps
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    for result in results:
        result.pad_diagnostics()
        if result.status != "diverged":
            result.status = "finished"
        result.wall_time_s = seconds
    if checkpoint is not None:
        _save_checkpoint(checkpoint, stepper, results, done, seconds, key)
    return results


def train(
    model: torch.nn.Module,
    task,
    config: TrainConfig,
    run=None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train `model` on prompts from `task` with Adam; returns losses and level-1 validations.

    run:        a wandb run (or anything with `.log(dict, step=int)`); None logs nothing and
                never imports wandb.
    checkpoint: a file path to save to and resume from (see `train_loop`).
    A non-finite loss stops training with a warning; the result keeps everything so far and
    has status "diverged".
    """
    stepper = SingleStepper(model, task, config)
    return train_loop(stepper, task, checkpoint=checkpoint, runs=[run], progress=progress)[0]


def solve_residual(model: torch.nn.Module, tokens: torch.Tensor, config: TrainConfig) -> float:
    """The largest relative residual |f(s) - s| / |f(s)| over `tokens` after the fixed-point solve of
    `config` (at most `config.b` evaluations, tolerance `config.solver_tol`): near 0 when the loop
    has a fixed point the solver finds, large when it has none."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, info = model.equilibrium(tokens, config.b, config.solver_tol)
    finally:
        model.train(was_training)
    return float(info["residual"])


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", leave=False)


def _save_checkpoint(
    path: Path, stepper: Stepper, results: list[TrainResult], done: int, seconds: float, key: str
) -> None:
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "key": key,  # the run that wrote it (`training_key`)
        "done": done,  # steps finished (a stopped member's losses end earlier)
        "wall_time_s": seconds,
        "stepper": stepper.state_dict(),
        "results": [result.to_dict() for result in results],
    }
    atomic_write_bytes(path, torch_bytes(state))


def _set_aside(path: Path, why: str) -> tuple[int, float]:
    """An unusable checkpoint: out of the way (kept for inspection), and the run starts afresh."""
    set_aside(path, why, "the run starts afresh", what="checkpoint")
    return 0, 0.0


def _load_checkpoint(path: Path, stepper: Stepper, results: list[TrainResult], key: str) -> tuple[int, float]:
    """Restore `stepper` and `results` from `path`; return (steps done, wall time so far)."""
    try:
        state = torch.load(path, map_location=stepper.device, weights_only=True)
    except Exception as error:  # truncated or corrupt: whatever torch.load raised
        return _set_aside(path, f"cannot be read ({type(error).__name__}: {error})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return _set_aside(path, "was written by an older version of the training loop")
    if state.get("key") != key:
        return _set_aside(path, f"belongs to another run (training key {state.get('key')}, this run's {key})")
    stepper.load_state_dict(state["stepper"])
    for result, saved in zip(results, state["results"], strict=True):
        for key_, value in saved.items():
            setattr(result, key_, value)
    return state["done"], state["wall_time_s"]
