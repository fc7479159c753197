"""Training, two-level validation, seeding and saving for looped transformers.

Owns:
- random streams: `seed_everything`, `stream_seed` and `build_model` (initialisation, training
  data and validation data each draw from their own stream, so variants with one seed see the
  same prompts: comparisons are paired);
- `TrainConfig` and `train` (Adam, the reference loss, level-1 validation at 0% and every
  `eval_every` of training, checkpoints that resume to bit-identical weights on CPU, a clean
  stop on a non-finite loss);
- `prediction_errors`, `evaluate` (level 1), `extrapolate` and `validate` (level 2),
  `label_sensitivity` (does a prediction see its own answer?), `state_updates` (does the loop
  reach a fixed point?), `prompt_errors` and `bootstrap_band` (a mean over prompts with a
  bootstrap 5 to 95% band);
- atomic writing: `write_json`, `save_run` / `load_run`, `save_svg`.

Metrics are squared errors divided by the task's `error_scale` (n_dims for linear regression,
the error of predicting 0). "reference" is seed 000's metric: the query error averaged over
loops 1..b. "last_loop" is the query error of loop b alone.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks import OOD_KINDS, sample_ood
from transformer import BaseLoopedTransformer, ModelConfig, check_loops

# ----------------------------------------------------------------------------- seeding

STREAMS = {"init": 0, "train": 1, "validation": 2, "level2": 3, "ood": 4}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (for code outside this library)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: str) -> int:
    """A 32-bit seed for one named random stream of a run, independent of the others."""
    if stream not in STREAMS:
        raise ValueError(f"stream={stream!r} is not known; choose one of {tuple(STREAMS)}")
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(STREAMS[stream],))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def make_generator(seed: int, stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(stream_seed(seed, stream))
    return generator


def build_model(config: ModelConfig, seed: int, model_class: type = BaseLoopedTransformer):
    """Build a model whose initial weights depend only on (config, seed), not on global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, "init"))
        return model_class(config)


# ----------------------------------------------------------------------------- config

LOSS_CHOICES = ("mse", "mae", "huber")
SUPERVISE_CHOICES = ("all", "last")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Everything about one training run. Invalid values raise `ValueError` on creation.

    grad_window: loops before the last `grad_window` run without gradient (None: all loops).
    supervise:   "all" (every loop that carries gradient) or "last" (the final loop only).
    eval_every:  level-1 validation at 0% and every this fraction of training.
    eval_prompts, eval_seed: the fixed held-out prompt set (its own seed, shared by all runs).
    checkpoint_every: steps between checkpoints when `train` is given a checkpoint path
                      (0: at every level-1 validation).
    loops_curriculum: None (every step runs b loops) or (b_start, every): training step t runs
                      min(b, b_start + t // every) loops, the paper's growing loop count.
                      Validation always runs b loops.
    points_curriculum: None or (P_start, every, increment): training step t uses
                      min(n_points, P_start + increment * (t // every)) points per prompt, the
                      paper's growing prompt length. Validation always uses n_points.
    dims_curriculum:  None or (d_start, every, increment): training step t draws x's whose
                      first min(n_dims, d_start + increment * (t // every)) coordinates are
                      non-zero (the paper's growing dimension; the task's `active_dims`).
                      Validation always uses every dimension.
    """

    steps: int
    batch_size: int = 64
    lr: float = 5e-4
    b: int = 10
    n_points: int = 64
    grad_window: int | None = None
    loss: str = "mse"
    huber_delta: float = 1.0
    supervise: str = "all"
    clip_grad_norm: float | None = None
    seed: int = 42
    device: str = "cpu"
    threads: int | None = 1
    eval_every: float = 0.2
    eval_prompts: int = 640
    eval_seed: int = 4815162342 % 2**31
    checkpoint_every: int = 0
    loops_curriculum: tuple[int, int] | None = None
    points_curriculum: tuple[int, int, int] | None = None
    dims_curriculum: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "b", "n_points", "eval_prompts"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, f"TrainConfig.{name}={value!r} must be an integer >= 1")
        _require(self.lr > 0, f"TrainConfig.lr={self.lr!r} must be > 0")
        _require(
            self.grad_window is None or (_is_int(self.grad_window) and 1 <= self.grad_window <= self.b),
            f"TrainConfig.grad_window={self.grad_window!r} must be None or an integer in 1..b={self.b}",
        )
        _require(
            self.loss in LOSS_CHOICES, f"TrainConfig.loss={self.loss!r} is not allowed; choose one of {LOSS_CHOICES}"
        )
        _require(
            self.supervise in SUPERVISE_CHOICES,
            f"TrainConfig.supervise={self.supervise!r} is not allowed; choose one of {SUPERVISE_CHOICES}",
        )
        _require(self.huber_delta > 0, f"TrainConfig.huber_delta={self.huber_delta!r} must be > 0")
        _require(
            self.clip_grad_norm is None or self.clip_grad_norm > 0,
            f"TrainConfig.clip_grad_norm={self.clip_grad_norm!r} must be None or > 0",
        )
        _require(_is_int(self.seed) and self.seed >= 0, f"TrainConfig.seed={self.seed!r} must be an integer >= 0")
        _require(
            self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:"),
            f"TrainConfig.device={self.device!r} is not allowed; choose 'cpu', 'cuda' or 'cuda:N'",
        )
        _require(
            self.threads is None or (_is_int(self.threads) and self.threads >= 1),
            f"TrainConfig.threads={self.threads!r} must be None (leave torch's setting) or an integer >= 1",
        )
        _require(0 < self.eval_every <= 1, f"TrainConfig.eval_every={self.eval_every!r} must be in (0, 1]")
        _require(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            f"TrainConfig.checkpoint_every={self.checkpoint_every!r} must be an integer >= 0",
        )
        self._check_schedule(
            "loops_curriculum", 2, self.b, f"(b_start, every) with 1 <= b_start <= b={self.b} and every >= 1"
        )
        self._check_schedule(
            "points_curriculum",
            3,
            self.n_points,
            f"(P_start, every, increment) with 1 <= P_start <= n_points={self.n_points}, every >= 1 and increment >= 1",
        )
        # The ceiling is the task's n_dims, which `train` checks; here only the form.
        self._check_schedule(
            "dims_curriculum", 3, 10**9, "(d_start, every, increment) with d_start >= 1, every >= 1 and increment >= 1"
        )

    def _check_schedule(self, name: str, length: int, ceiling: int, form: str) -> None:
        """A curriculum is None or `length` integers: a start in 1..ceiling, then values >= 1.
        Stored as a tuple (a record read back from JSON gives a list)."""
        value = getattr(self, name)
        if value is None:
            return
        _require(
            isinstance(value, (tuple, list))
            and len(value) == length
            and all(_is_int(v) for v in value)
            and 1 <= value[0] <= ceiling
            and all(v >= 1 for v in value[1:]),
            f"TrainConfig.{name}={value!r} must be None or {form}",
        )
        object.__setattr__(self, name, tuple(value))

    def loops_at(self, step: int) -> int:
        """The loop count of training step `step` (0-based)."""
        if self.loops_curriculum is None:
            return self.b
        start, every = self.loops_curriculum
        return min(self.b, start + step // every)

    def points_at(self, step: int) -> int:
        """The prompt length (points) of training step `step` (0-based)."""
        if self.points_curriculum is None:
            return self.n_points
        start, every, increment = self.points_curriculum
        return min(self.n_points, start + increment * (step // every))

    def dims_at(self, step: int, n_dims: int) -> int:
        """The number of non-zero x coordinates at training step `step` (0-based)."""
        if self.dims_curriculum is None:
            return n_dims
        start, every, increment = self.dims_curriculum
        return min(n_dims, start + increment * (step // every))

    def eval_steps(self) -> list[int]:
        """Steps (counted as training steps done) at which level-1 validation runs."""
        n_evals = round(1 / self.eval_every)
        return sorted({round(k * self.steps / n_evals) for k in range(n_evals + 1)})

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- metrics


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


def error_scale(task) -> float:
    """What squared errors are divided by for `task`: its `error_scale` (the error of predicting
    0: n_dims for linear regression, the sparsity k for sparse regression, 1 for trees)."""
    return float(getattr(task, "error_scale", task.n_dims))


@torch.no_grad()
def prediction_errors(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    ys: torch.Tensor,
    b: int,
    batch_size: int = 256,
    scale: float | None = None,
) -> torch.Tensor:
    """Squared error / scale of every loop at every position, averaged over prompts: [b, P].

    scale: the task's `error_scale`; None divides by n_dims (linear regression's).

    For a model that does not predict every point at every loop (`predicted_points`), each
    entry averages over the prompts where it predicts; NaN where it never does.
    """
    check_loops(b)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(b, ys.shape[1], dtype=torch.float64, device=device)
    count = torch.zeros(b, ys.shape[1], dtype=torch.float64, device=device)
    predicted_points = getattr(model, "predicted_points", None)
    for start in range(0, tokens.shape[0], batch_size):
        chunk_tokens = tokens[start : start + batch_size].to(device)
        chunk_ys = ys[start : start + batch_size].to(device)
        preds = model(chunk_tokens, b)  # [b, B, P]
        squared = (preds - chunk_ys).square()  # [b, B, P]
        predicted = predicted_points(chunk_tokens, b) if predicted_points is not None else None
        if predicted is None:
            total += squared.sum(1, dtype=torch.float64)  # [b, P]
            count += chunk_tokens.shape[0]
        else:
            total += torch.where(predicted, squared, 0).sum(1, dtype=torch.float64)  # [b, P]
            count += predicted.sum(1, dtype=torch.float64)
    model.train(was_training)
    scale = model.config.n_dims if scale is None else scale
    return (total / (count * scale)).float().cpu()


@torch.no_grad()
def label_sensitivity(model: torch.nn.Module, tokens: torch.Tensor, b: int, lag: int = 0) -> torch.Tensor:
    """How much the prediction at x_i moves when the label y_{i+lag} is shifted by +1: [P-1-lag].

    Mean |change| over prompts of loop b's prediction. With lag=0 this is the model's access to
    the very answer it predicts (label leakage): exactly 0 under a causal mask, where y_i comes
    after x_i. lag > 0 shifts a later, unrelated label instead, as a control.
    """
    check_loops(b)
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
        raise ValueError(f"label_sensitivity lag={lag!r} must be an integer >= 0")
    was_training = model.training
    model.eval()
    tokens = tokens.to(next(model.parameters()).device)
    n_points = (tokens.shape[1] + 1) // 2
    base = model(tokens, b)[-1]  # [B, P]
    changes = []
    for i in range(n_points - 1 - lag):
        shifted = tokens.clone()
        shifted[:, 2 * (i + lag) + 1, 0] += 1.0  # the y token of point i + lag (its value sits in channel 0)
        changes.append((model(shifted, b)[-1, :, i] - base[:, i]).abs().mean())
    model.train(was_training)
    return torch.stack(changes).cpu()


@torch.no_grad()
def state_updates(model: torch.nn.Module, tokens: torch.Tensor, b: int) -> torch.Tensor:
    """The relative size of each loop's state update: [b], loop 1's entry is 1 (from s_0 = 0).

    Entry t is mean over prompts of ||s_t - s_{t-1}|| / ||s_t|| (norms over all tokens and
    channels of a prompt). Falling towards 0 means the loop converges to a fixed point;
    a plateau above 0 means it keeps moving (a cycle or a drift).
    """
    check_loops(b)
    was_training = model.training
    model.eval()
    sizes, previous = [], None
    for state in model.states(tokens.to(next(model.parameters()).device), b):  # [B, S, h]
        reference = torch.zeros_like(state) if previous is None else previous
        change = (state - reference).flatten(1).norm(dim=1)  # [B]
        sizes.append((change / state.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())
        previous = state
    model.train(was_training)
    return torch.stack(sizes).cpu()


@torch.no_grad()
def prompt_errors(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    ys: torch.Tensor,
    b: int,
    batch_size: int = 256,
    scale: float | None = None,
) -> torch.Tensor:
    """Squared error / scale of loop b's prediction for every prompt and position: [n_prompts, P].

    The per-prompt rows that `bootstrap_band` resamples; scale as in `prediction_errors`.
    """
    check_loops(b)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, tokens.shape[0], batch_size):
        preds = model(tokens[start : start + batch_size].to(device), b)[-1]  # [B, P]
        rows.append((preds - ys[start : start + batch_size].to(device)).square().cpu())
    model.train(was_training)
    return torch.cat(rows) / (model.config.n_dims if scale is None else scale)  # [n_prompts, P]


def bootstrap_band(
    errors: torch.Tensor | np.ndarray, resamples: int = 1000, seed: int = 0, quantiles: tuple = (0.05, 0.95)
) -> dict[str, list[float]]:
    """Mean over prompts of errors [n_prompts, P] with a bootstrap band of that mean.

    Prompts are resampled with replacement `resamples` times (a fixed seed: the band repeats);
    the band is the given quantiles of the resampled means, per position (Garg et al.'s 5 to
    95% band). Returns {"mean", "low", "high"}, each [P].
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim == 1:
        errors = errors[:, None]
    _require(errors.shape[0] >= 2, f"bootstrap_band needs at least 2 prompts, got {errors.shape[0]}")
    _require(_is_int(resamples) and resamples >= 1, f"bootstrap_band resamples={resamples!r} must be an integer >= 1")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, errors.shape[0], size=(resamples, errors.shape[0]))  # [R, n]
    means = np.stack([errors[pick].mean(0) for pick in picks])  # [R, P]
    low, high = np.quantile(means, quantiles, axis=0)
    return {"mean": errors.mean(0).tolist(), "low": low.tolist(), "high": high.tolist()}


def summarise_query_errors(query_errors: torch.Tensor) -> dict[str, float]:
    """From per-loop query errors [b]: the reference metric (mean over loops) and the last loop."""
    return {"reference": float(query_errors.mean()), "last_loop": float(query_errors[-1])}


def evaluate(
    model: torch.nn.Module,
    prompts: tuple[torch.Tensor, torch.Tensor],
    b: int,
    batch_size: int = 256,
    scale: float | None = None,
) -> dict[str, float]:
    """Level-1 validation on a fixed prompt set: {"reference", "last_loop"} at loop count b."""
    tokens, ys = prompts
    errors = prediction_errors(model, tokens, ys, b, batch_size, scale)  # [b, P]
    return summarise_query_errors(errors[:, -1])


def extrapolate(
    model: torch.nn.Module,
    prompts: tuple[torch.Tensor, torch.Tensor],
    b_values: list[int],
    batch_size: int = 256,
    scale: float | None = None,
) -> dict[str, list[float]]:
    """Both metrics at each eval loop count in `b_values` (one run to max b where valid)."""
    tokens, ys = prompts
    for b in b_values:
        check_loops(b, "b_values entry")
    result: dict[str, list] = {"b": list(b_values), "reference": [], "last_loop": []}
    if getattr(model, "loops_are_prefix_consistent", False):
        query = prediction_errors(model, tokens, ys, max(b_values), batch_size, scale)[:, -1]  # [max_b]
        per_b = [summarise_query_errors(query[:b]) for b in b_values]
    else:
        per_b = [evaluate(model, prompts, b, batch_size, scale) for b in b_values]
    for metrics in per_b:
        result["reference"].append(metrics["reference"])
        result["last_loop"].append(metrics["last_loop"])
    return result


def heldout_prompts(task, n_prompts: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set: drawn once on CPU from the validation stream of `seed`."""
    return task.sample(n_prompts, n_points, make_generator(seed, "validation"))


def ood_prompts(task, kind: str, n_prompts: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed out-of-distribution prompt set (`tasks.sample_ood`), drawn once on CPU from the
    stream of `seed` and `kind`, so that models and baselines score the same prompts.
    "orthogonal_query" needs every x orthogonal to the earlier ones, so its prompts have
    min(n_points, n_dims) points."""
    if kind == "orthogonal_query":
        n_points = min(n_points, task.n_dims)
    if kind not in OOD_KINDS:
        raise ValueError(f"OOD kind {kind!r} is not known; choose one of {OOD_KINDS}")
    generator = make_generator(seed + OOD_KINDS.index(kind), "ood")  # one stream per kind
    return sample_ood(task, kind, n_prompts, n_points, generator)


def validate(
    model: torch.nn.Module,
    task,
    b: int,
    n_points: int,
    seed: int,
    launches: int = 10,
    batches_per_launch: int = 10,
    batch_size: int = 128,
    extrapolation_b: list[int] | None = None,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Level-2 validation: seed 000's protocol, plus extrapolation over eval loop counts.

    Each launch draws a test std ~ U(0, 2) (mean stays 0, as in the study's code) and scores
    `batches_per_launch * batch_size` fresh prompts at the model's loop count b. `seed` fixes
    the launches, so every model validated with one seed sees the same stds and prompts.
    With `extrapolation_b` and `heldout`, also returns `extrapolate` on the held-out set.
    """
    for name, value in (("launches", launches), ("batches_per_launch", batches_per_launch), ("batch_size", batch_size)):
        _require(_is_int(value) and value >= 1, f"validate {name}={value!r} must be an integer >= 1")
    generator = make_generator(seed, "level2")
    stds, reference, last_loop = [], [], []
    for _ in range(launches):
        std = float(torch.rand((), generator=generator) * 2)
        tokens, ys = task.with_x_std(std).sample(batches_per_launch * batch_size, n_points, generator)
        metrics = evaluate(model, (tokens, ys), b, batch_size, error_scale(task))
        stds.append(std)
        reference.append(metrics["reference"])
        last_loop.append(metrics["last_loop"])
    result: dict[str, Any] = {"launches": {"std": stds, "reference": reference, "last_loop": last_loop}}
    if extrapolation_b:
        _require(heldout is not None, "validate needs `heldout` prompts when extrapolation_b is given")
        result["extrapolation"] = extrapolate(model, heldout, extrapolation_b, scale=error_scale(task))
    return result


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What a run produced. status is "finished" or "diverged" (then `message` says why)."""

    loss: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    status: str = "running"
    message: str = ""
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but CUDA is not available; use 'cpu'")
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
) -> float:
    """One step: sample a batch of `n_points`-point prompts with `active_dims` non-zero x
    coordinates, run b loops (`config.b`, `config.n_points` and every dimension unless
    given), the loss, and (if it is finite) an optimizer step.
    Returns the loss; a non-finite loss leaves the weights untouched.
    """
    b = config.b if b is None else b
    n_points = config.n_points if n_points is None else n_points
    if active_dims is None:
        tokens, ys = task.sample(config.batch_size, n_points, generator)
    else:
        tokens, ys = task.sample(config.batch_size, n_points, generator, active_dims=active_dims)
    preds = model(tokens, b, config.grad_window)  # [b, B, P]
    predicted = model.predicted_points(tokens, b) if hasattr(model, "predicted_points") else None
    loss = loss_value(preds, ys, config, model.config.n_dims, predicted)
    value = loss.item()
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
    optimizer.step()
    return value


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
    checkpoint: a file path; when given, state is saved there every `checkpoint_every` steps
                (and at each validation) and an existing file is resumed from. Resuming gives
                bit-identical weights on CPU.
    A non-finite loss stops training with a warning; the result keeps everything so far and
    has status "diverged".
    """
    model.config.check_prompt(config.n_points)
    if task.n_dims != model.config.n_dims:
        raise ValueError(f"task.n_dims={task.n_dims} differs from ModelConfig.n_dims={model.config.n_dims}")
    if config.dims_curriculum is not None and config.dims_curriculum[0] > task.n_dims:
        raise ValueError(
            f"TrainConfig.dims_curriculum={config.dims_curriculum!r} starts above task.n_dims={task.n_dims}; "
            f"d_start must be in 1..{task.n_dims}"
        )
    scale = error_scale(task)
    device = _resolve_device(config.device)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)

    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = make_generator(config.seed, "train", device)
    heldout = tuple(t.to(device) for t in heldout_prompts(task, config.eval_prompts, config.n_points, config.eval_seed))
    result = TrainResult()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and checkpoint.exists():
        _load_checkpoint(checkpoint, model, optimizer, generator, result)
    eval_steps = set(config.eval_steps())
    checkpoint_steps = set(
        range(config.checkpoint_every, config.steps + 1, config.checkpoint_every or config.steps + 1)
    )

    def validate_now(done: int) -> None:
        if any(entry["step"] == done for entry in result.evals):
            return
        metrics = evaluate(model, heldout, config.b, scale=scale)
        result.evals.append({"step": done, **metrics})
        if run is not None:
            run.log({"eval/reference": metrics["reference"], "eval/last_loop": metrics["last_loop"]}, step=done)

    started = time.perf_counter() - result.wall_time_s
    bar = _progress_bar(config.steps, len(result.loss), progress)
    for done in range(len(result.loss), config.steps):
        if done in eval_steps:
            validate_now(done)
            if checkpoint is not None and done > 0 and config.checkpoint_every == 0:
                _save_checkpoint(checkpoint, model, optimizer, generator, result, started)
        active_dims = None if config.dims_curriculum is None else config.dims_at(done, task.n_dims)
        loss_float = train_step(
            model, optimizer, task, generator, config, config.loops_at(done), config.points_at(done), active_dims
        )
        if not math.isfinite(loss_float):
            result.status = "diverged"
            result.message = (
                f"training stopped at step {done}: the loss is {loss_float} (not finite); "
                f"the {done} finite losses and {len(result.evals)} validations before it are kept"
            )
            warnings.warn(result.message, RuntimeWarning, stacklevel=2)
            break
        result.loss.append(loss_float)
        if run is not None:
            run.log({"train/loss": loss_float}, step=done + 1)
        if bar is not None:
            bar.update(1)
            if done % 50 == 0:
                bar.set_postfix(loss=f"{loss_float:.4f}")
        if checkpoint is not None and done + 1 in checkpoint_steps:
            _save_checkpoint(checkpoint, model, optimizer, generator, result, started)
    else:
        if config.steps in eval_steps:
            validate_now(config.steps)
        result.status = "finished"
    if bar is not None:
        bar.close()
    result.wall_time_s = time.perf_counter() - started
    if checkpoint is not None:
        _save_checkpoint(checkpoint, model, optimizer, generator, result, started)
    return result


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", leave=False)


def _save_checkpoint(path: Path, model, optimizer, generator, result: TrainResult, started: float) -> None:
    result.wall_time_s = time.perf_counter() - started
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "result": result.to_dict(),
    }
    atomic_write_bytes(path, _torch_bytes(state))


def _load_checkpoint(path: Path, model, optimizer, generator, result: TrainResult) -> None:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"].cpu())
    for key, value in state["result"].items():
        setattr(result, key, value)


# ----------------------------------------------------------------------------- saving


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; results are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_run(directory: str | Path, model: torch.nn.Module, record: dict) -> None:
    """Save weights (`model.pt`) and a JSON record (`run.json`, must hold "model_config")."""
    _require("model_config" in record, "save_run record needs a 'model_config' entry")
    directory = Path(directory)
    atomic_write_bytes(directory / "model.pt", _torch_bytes(model.state_dict()))
    write_json(directory / "run.json", record)


def load_run(directory: str | Path, model_class: type = BaseLoopedTransformer):
    """Rebuild the model of a saved run (weights_only load) and return (model, record)."""
    directory = Path(directory)
    record = read_json(directory / "run.json")
    model = model_class(ModelConfig(**record["model_config"]))
    model.load_state_dict(torch.load(directory / "model.pt", map_location="cpu", weights_only=True))
    return model, record


SVG_HASH_SALT = "looped-transformers"


def save_svg(fig, path: str | Path) -> None:
    """Save a matplotlib figure as SVG, byte-identical for identical figures (atomic write)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
