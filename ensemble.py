"""Train several runs of one architecture as one batched model (for GPUs).

Owns `train_ensemble`. The models here are tiny (10^4 to 10^6 parameters): one of them leaves a
GPU almost idle, so a grid row (the seeds and the b values of one shape) trains faster as one
model whose parameters are stacked along a leading member axis and whose forward is
`torch.func.vmap` of the ordinary model's forward (`functional_call`).

Each member keeps everything it would have alone, so its result equals a separate `utils.train`
run to float tolerance (tests/test_ensemble.py checks losses, validations and weights):
- its own initial weights (`build_model(config, seed)`), its own training-data stream
  (`make_generator(seed, "train")`) and its own Adam state (Adam is element-wise, so one Adam over
  the stacked tensors is one Adam per member);
- its own loss: the ensemble minimises the sum of the members' losses, whose gradients do not mix
  because the members share no parameter; gradient clipping uses each member's own norm;
- its own loop count: the forward runs the largest b and member m reads its first b_m loops (loop
  j's output does not depend on the total loop count), so each member is supervised only on its
  own loops;
- its own stop: a member whose loss is not finite stops there with its weights as they were
  (status "diverged", as `train` does); the others go on.

Limits (checked, with a clear error): members share every `TrainConfig` field except `seed` and
`b`; a truncated gradient window needs one b for all members; the LSTM block (a fused kernel
without a vmap rule) and random context selection (a per-prompt checksum on the CPU) are not
supported. Checkpoints work as in `utils.train`: an interrupted ensemble resumes where it was.
On CPU, one process per core is faster (DESIGN.md); the runner uses this path on CUDA.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, vmap

from transformer import BaseLoopedTransformer, ModelConfig
from utils import (
    TrainConfig,
    TrainResult,
    _resolve_device,
    _torch_bytes,
    atomic_write_bytes,
    build_model,
    error_scale,
    evaluate,
    heldout_prompts,
    loss_value,
    make_generator,
)

# TrainConfig fields that may differ between the members of one ensemble.
MEMBER_FIELDS = ("seed", "b")


def check_ensemble(model_config: ModelConfig, configs: list[TrainConfig]) -> None:
    """Raise `ValueError` unless these runs can train as one ensemble."""
    if not configs:
        raise ValueError("an ensemble needs at least one member")
    shared = [{k: v for k, v in c.to_dict().items() if k not in MEMBER_FIELDS} for c in configs]
    for index, fields in enumerate(shared[1:], start=1):
        differing = sorted(k for k in fields if fields[k] != shared[0][k])
        if differing:
            raise ValueError(
                f"ensemble members may differ only in {MEMBER_FIELDS}; member {index} differs from member 0 in "
                f"{differing}"
            )
    if configs[0].grad_window is not None and len({c.b for c in configs}) > 1:
        raise ValueError(
            f"TrainConfig.grad_window={configs[0].grad_window} needs one b for every ensemble member, "
            f"got b = {sorted({c.b for c in configs})}"
        )
    if model_config.block == "lstm":
        raise ValueError("ModelConfig.block='lstm' cannot train as an ensemble (no vmap rule); use another backend")
    if model_config.context_keep == "random":
        raise ValueError("ModelConfig.context_keep='random' cannot train as an ensemble; use another backend")


def _member_state(stacked: dict[str, torch.Tensor], member: int) -> dict[str, torch.Tensor]:
    return {name: value[member].detach().clone() for name, value in stacked.items()}


def member_model(
    model_config: ModelConfig, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], member: int
) -> BaseLoopedTransformer:
    """An ordinary model holding member `member`'s weights (for validation and saving)."""
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        model = BaseLoopedTransformer(model_config).to(next(iter(params.values())).device)
    model.load_state_dict({**_member_state(params, member), **_member_state(buffers, member)})
    return model


def _clip_per_member(params: dict[str, torch.Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` applied to each member's gradients on their own (same formula)."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    squared = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0)  # [M]
    coef = (max_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)  # [M]
    for grad in grads:
        grad.mul_(coef.view(-1, *([1] * (grad.dim() - 1))))


class Ensemble:
    """The stacked members: parameters and buffers with a leading member axis [M, ...], one Adam
    over them, one training-data generator per member, and `step`, one training step of all.

    `compile` wraps the vmapped forward in torch.compile; `autocast` (a dtype such as
    torch.bfloat16) runs it under autocast on CUDA. Both are for speed measurements on a GPU
    (benchmarks/ensemble_speed.py); training uses neither, so its results match single runs.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        task,
        configs: list[TrainConfig],
        compile: bool = False,
        autocast: torch.dtype | None = None,
    ) -> None:
        check_ensemble(model_config, configs)
        self.model_config, self.task, self.configs = model_config, task, configs
        first = configs[0]
        model_config.check_prompt(first.n_points)
        if task.n_dims != model_config.n_dims:
            raise ValueError(f"task.n_dims={task.n_dims} differs from ModelConfig.n_dims={model_config.n_dims}")
        self.device = _resolve_device(first.device)
        if first.threads is not None and self.device.type == "cpu":
            torch.set_num_threads(first.threads)
        members = [build_model(model_config, c.seed).to(self.device) for c in configs]
        with torch.random.fork_rng(devices=[]):
            template = BaseLoopedTransformer(model_config).to("meta")  # structure only; weights come from `params`
        self.params = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).requires_grad_()
            for name, _ in members[0].named_parameters()
        }
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name] for m in members])
            for name, _ in members[0].named_buffers()
        }
        self.optimizer = torch.optim.Adam(self.params.values(), lr=first.lr)
        self.generators = [make_generator(c.seed, "train", self.device) for c in configs]
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}  # stopped members: their weights, kept as they were
        self.autocast = autocast

        def forward(member_params, member_buffers, tokens, b, grad_window):
            return functional_call(template, (member_params, member_buffers), (tokens, b, grad_window))

        batched = vmap(forward, in_dims=(0, 0, 0, None, None))
        self.forward = torch.compile(batched) if compile else batched

    def model(self, member: int) -> BaseLoopedTransformer:
        """An ordinary model holding member `member`'s current weights."""
        return member_model(self.model_config, self.params, self.buffers, member)

    def step(self, done: int) -> list[float | None]:
        """Training step `done` (0-based) of every member; returns each member's loss (None for a
        member that had already stopped). A member whose loss is not finite is stopped: its
        weights stay as they were before this step, and its loss is returned as it is."""
        first, task = self.configs[0], self.task
        loops = [c.loops_at(done) for c in self.configs]
        n_points = first.points_at(done)
        active_dims = None if first.dims_curriculum is None else first.dims_at(done, task.n_dims)
        batches = [
            task.sample(first.batch_size, n_points, g)
            if active_dims is None
            else task.sample(first.batch_size, n_points, g, active_dims=active_dims)
            for g in self.generators
        ]
        tokens = torch.stack([tokens for tokens, _ in batches])  # [M, B, S, d]
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            preds = self.forward(self.params, self.buffers, tokens, max(loops), first.grad_window)  # [M, b_max, B, P]
        preds = preds.float()
        total, values = preds.new_zeros(()), []
        for index, (config, (_, ys)) in enumerate(zip(self.configs, batches, strict=True)):
            if index in self.frozen:
                values.append(None)
                continue
            loss = loss_value(preds[index, : loops[index]], ys, config, self.model_config.n_dims)
            values.append(loss.item())
            if math.isfinite(values[-1]):
                total = total + loss
            else:
                self.frozen[index] = _member_state(self.params, index)
        if len(self.frozen) == len(self.configs):
            return values
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if first.clip_grad_norm is not None:
            _clip_per_member(self.params, first.clip_grad_norm)
        self.optimizer.step()
        with torch.no_grad():  # Adam's momentum would still move a stopped member: put it back
            for index, state in self.frozen.items():
                for name, value in state.items():
                    self.params[name][index].copy_(value)
        return values


def _save(path: Path, ensemble: Ensemble, results: list[TrainResult], done: int, seconds: float) -> None:
    state = {
        "done": done,  # steps finished (a stopped member's losses end earlier)
        "wall_time_s": seconds,
        "params": {name: value.detach() for name, value in ensemble.params.items()},
        "optimizer": ensemble.optimizer.state_dict(),
        "generators": [g.get_state() for g in ensemble.generators],
        "frozen": ensemble.frozen,
        "results": [r.to_dict() for r in results],
    }
    atomic_write_bytes(path, _torch_bytes(state))


def _load(path: Path, ensemble: Ensemble, results: list[TrainResult]) -> tuple[int, float]:
    state = torch.load(path, map_location=ensemble.device, weights_only=True)
    with torch.no_grad():
        for name, value in state["params"].items():
            ensemble.params[name].copy_(value)
    ensemble.optimizer.load_state_dict(state["optimizer"])
    for generator, generator_state in zip(ensemble.generators, state["generators"], strict=True):
        generator.set_state(generator_state.cpu())
    ensemble.frozen = {int(index): weights for index, weights in state["frozen"].items()}
    for result, saved in zip(results, state["results"], strict=True):
        for key, value in saved.items():
            setattr(result, key, value)
    return state["done"], state["wall_time_s"]


def train_ensemble(
    model_config: ModelConfig, task, configs: list[TrainConfig], checkpoint: str | Path | None = None
) -> tuple[list[BaseLoopedTransformer], list[TrainResult]]:
    """Train one member per TrainConfig as one vmapped model; return their models and results.

    Each (model, result) is what `build_model(model_config, c.seed)` trained by
    `utils.train(model, task, c)` gives, to float tolerance. Every result's wall time is the
    ensemble's (the members share it). checkpoint: a file path; state is saved there as
    `utils.train` saves it (every `checkpoint_every` steps, or at each validation) and an
    existing file is resumed from, to bit-identical weights on CPU.
    """
    ensemble = Ensemble(model_config, task, configs)
    first = configs[0]
    heldout = tuple(
        t.to(ensemble.device) for t in heldout_prompts(task, first.eval_prompts, first.n_points, first.eval_seed)
    )
    scale = error_scale(task)
    results = [TrainResult() for _ in configs]
    eval_steps = set(first.eval_steps())
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    every = first.checkpoint_every
    checkpoint_steps = set(range(every, first.steps + 1, every)) if every else {s for s in eval_steps if s > 0}
    start, elapsed = (0, 0.0)
    if checkpoint is not None and checkpoint.exists():
        start, elapsed = _load(checkpoint, ensemble, results)
    started = time.perf_counter() - elapsed

    def validate_now(done: int) -> None:
        for index, config in enumerate(configs):
            already = any(entry["step"] == done for entry in results[index].evals)  # a resumed step
            if index not in ensemble.frozen and not already:
                metrics = evaluate(ensemble.model(index), heldout, config.b, scale=scale)
                results[index].evals.append({"step": done, **metrics})

    for done in range(start, first.steps):
        if done in eval_steps:
            validate_now(done)
        for index, value in enumerate(ensemble.step(done)):
            if value is None:
                continue
            if math.isfinite(value):
                results[index].loss.append(value)
                continue
            results[index].status = "diverged"
            results[index].message = (
                f"training stopped at step {done}: the loss is {value} (not finite); "
                f"the {done} finite losses and {len(results[index].evals)} validations before it are kept"
            )
            warnings.warn(f"ensemble member {index}: {results[index].message}", RuntimeWarning, stacklevel=2)
        if len(ensemble.frozen) == len(configs):
            break
        if checkpoint is not None and done + 1 in checkpoint_steps:
            _save(checkpoint, ensemble, results, done + 1, time.perf_counter() - started)
    else:
        if first.steps in eval_steps:
            validate_now(first.steps)
    seconds = time.perf_counter() - started
    for result in results:
        if result.status != "diverged":
            result.status = "finished"
        result.wall_time_s = seconds
    return [ensemble.model(index) for index in range(len(configs))], results
