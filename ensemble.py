"""Train several runs of one architecture as one batched model (for GPUs).

Owns `train_ensemble`. The models here are tiny (10^4 to 10^6 parameters): one of them leaves a
GPU almost idle, so a grid row (the seeds and the b values of one shape) trains faster as one
model whose parameters are stacked along a leading member axis and whose forward is
`torch.func.vmap` of the ordinary model's forward (`functional_call`).

`Ensemble` is a stepper of `training.train_loop`, the loop a single run goes through too, so the
schedule, validation, checkpoints and divergence handling are the same code. Each member keeps
everything it would have alone, so its result equals a separate `training.train` run to float
tolerance (tests/test_ensemble.py checks losses, validations and weights):
- its own initial weights (`build_model(config, seed)`), its own training-data stream
  (`make_generator(seed, "train")`) and its own Adam state (Adam is element-wise, so one Adam over
  the stacked tensors is one Adam per member);
- its own loss (`training.step_loss`, over the points each loop predicts, as a single run's):
  the ensemble minimises the sum of the members' losses, whose gradients do not mix because the
  members share no parameter; gradient clipping uses each member's own norm;
- its own loop count: the forward runs the largest b and member m reads its first b_m loops (loop
  j's output does not depend on the total loop count), so each member is supervised only on its
  own loops;
- its own stop: a member whose loss is not finite stops there with its weights as they were
  (status "diverged", as a single run does); the others go on.

Attention (`Ensemble(attention=...)`): vmap's batching rules for torch's fused attention kernels
either run the kernel member by member (CPU) or fail (CUDA, torch 2.11: "attn_bias: wrong shape
(batch dimension)", "LSE is not correctly aligned (strideH)"). "folded" (the default) folds the
member axis into the batch axis and calls the kernel once on [M * B, heads, S, d], exactly what a
single run computes on its own [B, heads, S, d]; "math" runs torch's MATH kernel under vmap
(plain batched matrix products); "vmap" leaves the choice to torch (for measurements).

Limits (checked, with a clear error): members share every `TrainConfig` field except `seed` and
`b`; a truncated gradient window needs one b for all members; the LSTM block (a fused kernel
without a vmap rule), random context selection (a checksum on the CPU) and dropped tokens
(`context_compute="drop"`, a boolean index) are not
supported. On CPU, one process per core is faster (docs/design.md); the runner uses this path on
CUDA.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from configs import TrainConfig
from seeding import build_model, make_generator
from training import TrainResult, check_training, plan_at, sample_batch, set_lr, step_loss, train_loop, use_device
from transformer import BaseLoopedTransformer, ModelConfig

# TrainConfig fields that may differ between the members of one ensemble.
MEMBER_FIELDS = ("seed", "b")
# How the members' attention is computed (module docstring).
ATTENTION = ("folded", "math", "vmap")


class _MemberFoldedAttention(torch.autograd.Function):
    """scaled_dot_product_attention whose vmap rule folds the vmapped (member) axis into the batch
    axis: one call of torch's kernel on [M * B, heads, S, d] instead of vmap's batching rule.

    Only the vmap rule is used by the ensemble; it calls the kernel directly, so the backward is
    the kernel's own. `forward`/`backward` serve a call outside vmap (the backward recomputes)."""

    @staticmethod
    def forward(q, k, v, attn_mask, is_causal):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, is_causal = inputs
        ctx.save_for_backward(q, k, v)
        ctx.attn_mask, ctx.is_causal = attn_mask, is_causal

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*leaves, attn_mask=ctx.attn_mask, is_causal=ctx.is_causal)
            grads = torch.autograd.grad(out, leaves, grad)
        return (*grads, None, None)

    @staticmethod
    def vmap(info, in_dims, q, k, v, attn_mask, is_causal):
        members = info.batch_size

        def fold(tensor: torch.Tensor, dim: int | None) -> torch.Tensor:  # [M, B, ...] -> [M * B, ...]
            tensor = tensor.movedim(dim, 0) if dim is not None else tensor.expand(members, *tensor.shape)
            return tensor.reshape(-1, *tensor.shape[2:])

        mask = None if attn_mask is None else fold(attn_mask, in_dims[3])
        out = F.scaled_dot_product_attention(
            fold(q, in_dims[0]), fold(k, in_dims[1]), fold(v, in_dims[2]), attn_mask=mask, is_causal=is_causal
        )  # [M * B, heads, S, d]
        return out.view(members, -1, *out.shape[1:]), 0  # [M, B, heads, S, d]


class _FoldMemberAttention(TorchFunctionMode):
    """While active, scaled_dot_product_attention goes through `_MemberFoldedAttention`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            extra = set(kwargs) - {"attn_mask", "is_causal"}
            if len(args) != 3 or extra:
                raise NotImplementedError(f"folded attention takes q, k, v, attn_mask and is_causal; got {extra}")
            return _MemberFoldedAttention.apply(*args, kwargs.get("attn_mask"), kwargs.get("is_causal", False))
        return func(*args, **kwargs)


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
    if configs[0].solver != "unroll":
        raise ValueError(
            f"TrainConfig.solver={configs[0].solver!r} is not supported by the ensemble; use another backend"
        )
    if configs[0].jacobian_penalty:
        raise ValueError(
            f"TrainConfig.jacobian_penalty={configs[0].jacobian_penalty!r} differentiates each member's loop map "
            "(a vector-Jacobian product with its own graph), which the vmapped step does not run; use another backend"
        )
    if configs[0].loops_random is not None:
        raise ValueError(
            f"TrainConfig.loops_random={configs[0].loops_random!r} draws a loop count per member and step, which one "
            "batched step cannot run; use another backend"
        )
    if configs[0].grad_window is not None and len({c.b for c in configs}) > 1:
        raise ValueError(
            f"TrainConfig.grad_window={configs[0].grad_window} needs one b for every ensemble member, "
            f"got b = {sorted({c.b for c in configs})}"
        )
    if model_config.block == "lstm":
        raise ValueError("ModelConfig.block='lstm' cannot train as an ensemble (no vmap rule); use another backend")
    if model_config.context_keep in ("random", "random_batch"):
        raise ValueError(
            f"ModelConfig.context_keep={model_config.context_keep!r} cannot train as an ensemble (its draw is a "
            "checksum on the CPU); use another backend"
        )
    if model_config.state_compute != "all":
        raise ValueError(
            f"ModelConfig.state_compute={model_config.state_compute!r} is not supported by the ensemble (untested "
            "under vmap); use another backend"
        )
    if model_config.context_compute == "drop":
        raise ValueError(
            "ModelConfig.context_compute='drop' cannot train as an ensemble (the kept tokens are selected by a "
            "boolean index, which vmap cannot batch); use context_compute='mask' or another backend"
        )


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

    `attention` is one of `ATTENTION` (module docstring). `compile` wraps the vmapped forward in
    torch.compile; `autocast` (a dtype such as torch.bfloat16) runs it under autocast on CUDA.
    Both are for speed measurements on a GPU (benchmarks/ensemble_speed.py); training uses
    neither, so its results match single runs.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        task,
        configs: list[TrainConfig],
        compile: bool = False,
        autocast: torch.dtype | None = None,
        attention: str = "folded",
    ) -> None:
        if attention not in ATTENTION:
            raise ValueError(f"Ensemble attention={attention!r} must be one of {ATTENTION}")
        check_ensemble(model_config, configs)
        for config in configs:  # members differ in b, which the checks of unused settings read
            check_training(model_config, task, config)
        self.model_config, self.task, self.configs = model_config, task, configs
        self.device = use_device(configs[0])
        if compile and attention == "folded" and self.device.type == "cuda":
            # measured on an H100 (torch 2.11): inductor hands the efficient-attention backward a
            # gradient whose strides it rejects ("LSE is not correctly aligned (strideH)")
            raise ValueError("Ensemble compile=True needs attention='math' on CUDA (folded attention fails to compile)")
        members = [build_model(model_config, c.seed).to(self.device) for c in configs]
        with torch.random.fork_rng(devices=[]):
            template = BaseLoopedTransformer(model_config).to("meta")  # structure only; weights come from `params`
        self.template = template  # also says which points each loop predicts (`step_loss`)
        self.params = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in members]).requires_grad_()
            for name, _ in members[0].named_parameters()
        }
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name] for m in members])
            for name, _ in members[0].named_buffers()
        }
        self.optimizer = torch.optim.Adam(self.params.values(), lr=configs[0].lr)
        self.generators = [make_generator(c.seed, "train", self.device) for c in configs]
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}  # stopped members: their weights, kept as they were
        self.autocast = autocast

        def forward(member_params, member_buffers, tokens, b, grad_window):
            return functional_call(template, (member_params, member_buffers), (tokens, b, grad_window))

        batched = vmap(forward, in_dims=(0, 0, 0, None, None))
        mode = {"folded": _FoldMemberAttention, "math": lambda: sdpa_kernel(SDPBackend.MATH)}.get(attention)

        def with_attention(*args):
            if mode is None:
                return batched(*args)
            with mode():
                return batched(*args)

        self.forward = torch.compile(with_attention) if compile else with_attention

    def model(self, member: int) -> BaseLoopedTransformer:
        """An ordinary model holding member `member`'s current weights."""
        return member_model(self.model_config, self.params, self.buffers, member)

    @property
    def stopped(self) -> set[int]:
        return set(self.frozen)

    def state_dict(self) -> dict:
        return {
            "params": {name: value.detach() for name, value in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for name, value in state["params"].items():
                self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        for generator, generator_state in zip(self.generators, state["generators"], strict=True):
            generator.set_state(generator_state.cpu())
        self.frozen = {int(index): weights for index, weights in state["frozen"].items()}

    def step(self, done: int) -> list[float | None]:
        """Training step `done` (0-based) of every member; returns each member's loss (None for a
        member that had already stopped). A member whose loss is not finite is stopped: its
        weights stay as they were before this step, and its loss is returned as it is."""
        first = self.configs[0]
        plans = [plan_at(config, done, self.task.n_dims) for config in self.configs]  # differ only in b
        loops = [plan.b for plan in plans]
        batches = [sample_batch(self.task, first, plan, g) for plan, g in zip(plans, self.generators, strict=True)]
        tokens = torch.stack([tokens for tokens, _ in batches])  # [M, B, S, d]
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            preds = self.forward(self.params, self.buffers, tokens, max(loops), first.grad_window)  # [M, b_max, B, P]
        preds = preds.float()
        losses = {
            index: step_loss(self.template, preds[index, : loops[index]], member_tokens, ys, config, loops[index])
            for index, (config, (member_tokens, ys)) in enumerate(zip(self.configs, batches, strict=True))
            if index not in self.frozen
        }
        values: list[float | None] = [None] * len(self.configs)
        total = preds.new_zeros(())
        numbers = torch.stack(list(losses.values())).tolist() if losses else []  # one device sync, not one per member
        for (index, loss), number in zip(losses.items(), numbers, strict=True):
            values[index] = number
            if math.isfinite(number):
                total = total + loss
            else:
                self.frozen[index] = _member_state(self.params, index)
        if len(self.frozen) == len(self.configs):
            return values
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        set_lr(self.optimizer, first, done)  # members share lr, schedule and steps
        if first.clip_grad_norm is not None:
            _clip_per_member(self.params, first.clip_grad_norm)
        self.optimizer.step()
        with torch.no_grad():  # Adam's momentum would still move a stopped member: put it back
            for index, state in self.frozen.items():
                for name, value in state.items():
                    self.params[name][index].copy_(value)
        return values


def train_ensemble(
    model_config: ModelConfig,
    task,
    configs: list[TrainConfig],
    checkpoint: str | Path | None = None,
    runs: list | None = None,
) -> tuple[list[BaseLoopedTransformer], list[TrainResult]]:
    """Train one member per TrainConfig as one vmapped model; return their models and results.

    Each (model, result) is what `build_model(model_config, c.seed)` trained by
    `training.train(model, task, c)` gives, to float tolerance: both go through
    `training.train_loop`. Every result's wall time is the ensemble's (the members share it).
    checkpoint: a file path to save to and resume from, as in `training.train_loop`.
    runs: None, or one wandb run per member (`training.train_loop`).
    """
    ensemble = Ensemble(model_config, task, configs)
    results = train_loop(ensemble, task, checkpoint=checkpoint, runs=runs)
    return [ensemble.model(index) for index in range(len(configs))], results
