"""The looped transformer: the loop, its per-loop plan, and the stack of layers it repeats.

Owns `BaseLoopedTransformer` (the loop the paper is about, in `states`, each loop run from its
`LoopPlan`), the shared stack every variant runs (attention, MLP, the Laptev and GPT-2 layers,
`LayerStack`, positional encoding), the registries that map each choice name to the class that
implements it, and `flops_per_loop`. The configuration, `ModelConfig` and the component configs it
is made of, is in `model_config.py`; the parts that experiments swap in (injections, the SSM mixer,
the LSTM layer, context and state selection) are in `components.py`. Every public name of both
modules is re-exported here, so `from transformer import ...` keeps working for all of them.

Data flow (shapes: B batch, S = 2P-1 tokens, P points, d = n_dims, h = hidden_dim):

    tokens [B, S, d] --embed (+PE once)--> e [B, S, h]
    state = injection.initial_state(e)
    for plan in plans(b):  state = injection.step(state, e, plan.stack)  # on plan.tokens, input + plan.added
                           pred[loop] = readout(state)[x positions]    # [B, P]
    return preds [b, B, P]

A variant replaces exactly one component through `ModelConfig`: the PE, the mask, the
injection step, the block (a transformer layer or an LSTM layer), the token mixer inside the
transformer layer (attention or a selective state-space scan), how many distinct stacks the
loops cycle through (A->B), the context selection (drops examples from the attention of later
loops) or the state selection (limits what one loop hands to the next). Nothing copies the model.

The three studies this repository rebuilds are named after their authors' repositories: the
Laptev study (DaniilLaptev/TBankFoundations, the reference study), the Aleksandr study
(ALeksandr13254/looped-transformer) and the Murawiecki study (DMurawiecki/looped_transformer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import components
import model_config
from checks import require
from components import (
    AddInjection,
    ContextSelection,
    EachLayerInjection,
    EMAInjection,
    Injection,
    LinearAddInjection,
    LinearCatInjection,
    LSTMLayer,
    MultiplicativeInjection,
    NoInjection,
    SelectiveSSM,
    StateSelection,
    attention_allowed,
    on_tokens,
)
from equilibrium import implicit_fixed_point, jacobian_norm_estimate, phantom_fixed_point
from model_config import (  # noqa: F401 (each name is re-exported through __all__)
    BLOCK_CHOICES,
    CONTEXT_COMPUTE_CHOICES,
    CONTEXT_KEEP_CHOICES,
    INIT_CHOICES,
    INJECTION_CHOICES,
    LOOP_EMBEDDING_CHOICES,
    MIXER_CHOICES,
    PE_AT_CHOICES,
    PE_CHOICES,
    RENAMED_VALUES,
    STATE_COMPUTE_CHOICES,
    STATE_KEEP_CHOICES,
    ContextConfig,
    InjectionConfig,
    LoopConfig,
    ModelConfig,
    PositionalConfig,
    StackConfig,
    StateConfig,
    check_fixed_point,
    check_loops,
    current_names,
)

__all__ = [
    *model_config.__all__,  # re-exported: the config, its components and its choices live in model_config.py
    # the model
    "BaseLoopedTransformer",
    "LoopPlan",
    "count_parameters",
    "gpt2_init",
    "flops_per_loop",
    # the shared stack
    "SelfAttention",
    "MLP",
    "LaptevLayer",
    "GPT2Block",
    "LayerStack",
    "sinusoidal_table",
    "PositionalEncoding",
    # choice name -> class
    "INJECTIONS",
    "MIXERS",
    "BLOCKS",
    "build_injection",
    "build_mixer",
    "build_block",
    *components.__all__,  # re-exported: the variant parts live in components.py
]

GPT2_INIT_STD = 0.02


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value to compare by
class LoopPlan:
    """What one loop does, decided before it runs (`BaseLoopedTransformer.plans`).

    stack:  the layers it applies (`stack_for`), with its attention mask bound where the context
            selection masks keys (`attention_allowed`).
    tokens: None (every token runs) or long [B, S']: the tokens it runs on, in the order they run
            (`components.on_tokens`): the kept context with context_compute "drop", the carried
            state with state_compute "carried".
    carry:  whether the state is first cut to the part the state selection carries.
    added:  None, or [B, S, h] added to the stack's input besides the injected state: the PE with
            pe_at "loop", plus the loop-index signal.
    grad:   whether it carries gradient (one of the last grad_window loops).
    """

    stack: Callable[..., torch.Tensor]
    tokens: torch.Tensor | None
    carry: bool
    added: torch.Tensor | None
    grad: bool


class BaseLoopedTransformer(nn.Module):
    """One weight-tied stack applied `b` times with the prompt injected every loop.

    With loop_stacks = k > 1, k distinct stacks take turns, one per loop: loop j (0-based)
    runs stack j mod k (the Murawiecki study's A->B for k = 2; a run of b loops may end on A,
    where that study appended one more B: here loop j's output is read as it is, at every b).

    With the default `ModelConfig` this is the Laptev study's `BaseLoopedTransformer`:
    causal mask, additive injection, no positional encoding, the Laptev layer.
    `model(tokens, b)` maps tokens [B, S, n_dims] to predictions [b, B, P], one row per loop,
    read at the x positions (the prediction at x_i estimates y_i from the pairs before it).
    """

    # Loop j's output does not depend on the total loop count b, so one run to max b gives
    # every shorter run's outputs too (used by the extrapolation evaluation).
    loops_are_prefix_consistent: bool = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # The order of these assignments fixes the parameter initialisation and the state_dict
        # keys: changing it changes every seeded model and breaks saved checkpoints.
        self.config = config
        self.embed = nn.Linear(config.n_dims, config.hidden_dim)
        self.positional = PositionalEncoding(config)
        self.stack = LayerStack(config)
        # A->B: the stacks after the first, in loop order (none for the looped model).
        self.other_stacks = nn.ModuleList(LayerStack(config) for _ in range(config.loop_stacks - 1))
        self.injection = build_injection(config)
        self.context_selection = ContextSelection(config)
        self.state_selection = StateSelection(config)
        # n_dims outputs with only channel 0 read, as in the Laptev study (keeps its parameter count).
        self.readout = nn.Linear(config.hidden_dim, config.n_dims)
        if config.init == "gpt2":  # drawn after the defaults, so "torch" models are unchanged
            gpt2_init(self)

    def embed_prompt(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [B, S, h]
        """e, what the injection adds every loop: the embedded tokens, plus the PE when
        `pe_at` is "prompt" (with "loop" the PE enters at the stack's input instead)."""
        require(
            tokens.dim() == 3 and tokens.shape[-1] == self.config.n_dims,
            f"tokens must have shape [batch, seq, n_dims={self.config.n_dims}], got {tuple(tokens.shape)}",
        )
        require(
            tokens.shape[1] <= self.config.context,
            f"tokens have {tokens.shape[1]} positions, more than ModelConfig.context={self.config.context}",
        )
        embedded = self.embed(tokens)  # [B, S, h]
        return embedded if self.config.positional_config.per_loop else self.positional(embedded)  # [B, S, h]

    def loop_positions(self, e: torch.Tensor) -> torch.Tensor | None:  # [B, S, h] -> [B, S, h] or None
        """What `pe_at="loop"` adds to the stack's input every loop: the PE table, per token."""
        if not self.config.positional_config.per_loop:
            return None
        return self.positional(torch.zeros_like(e))  # [B, S, h]

    def read_out(self, state: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, P]
        x_positions = state[:, 0::2]  # [B, P, h]
        return F.linear(x_positions, self.readout.weight[0], self.readout.bias[0])  # [B, P]

    def states(self, tokens: torch.Tensor, b: int, grad_window: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the state [B, S, h] after each of the b loops: the loop itself, each loop as its
        `LoopPlan` says. Loops before the last `grad_window` run without gradient (the paper's
        truncated backpropagation); `None` keeps the gradient through every loop."""
        e = self.embed_prompt(tokens)  # [B, S, h]
        state = self.injection.initial_state(e)  # [B, S, h]
        for plan in self.plans(tokens, e, b, grad_window):
            with torch.set_grad_enabled(torch.is_grad_enabled() and plan.grad):
                if plan.carry:
                    state = self.state_selection.carried(state)  # [B, S, h]
                state = on_tokens(plan.tokens, self._loop_step(plan.stack), state, e, plan.added)  # [B, S, h]
            yield state

    def plans(
        self, tokens: torch.Tensor, e: torch.Tensor, b: int, grad_window: int | None = None
    ) -> Iterator[LoopPlan]:
        """The `LoopPlan` of each of the b loops on `tokens` [B, S, d], embedded as e [B, S, h]: which stack
        and attention mask, which tokens run, whether the state is cut to its carried part, what is added
        to the stack's input, whether it carries gradient. Made one loop at a time, as the loop asks for
        it, so that only one loop's attention mask [B, 1, S, S] exists at once."""
        check_loops(b)
        if grad_window is not None:
            check_loops(grad_window, "grad_window")
        first_with_grad = 0 if grad_window is None else max(0, b - grad_window)
        drops = self.config.context_config.drops
        # per loop: None (every token) or, when dropping, the token indices to run [B, S'], else the kept points [B, P]
        kept = (self.context_selection.kept_tokens if drops else self.context_selection.kept_points)(tokens, b)
        carried = self.state_selection.running_tokens(tokens, b)  # per loop: None or the carried tokens [B, n]
        positions = self.loop_positions(e)  # None, or [B, S, h]: the PE, with pe_at="loop"
        signal = self.loop_signal(b, e)  # None, or [b, h]: loop j's timestep signal
        for loop in range(b):
            stack = self.stack_for(loop)
            if kept[loop] is not None and not drops:  # masking: the kept points become a key mask
                stack = partial(stack, allowed=attention_allowed(kept[loop], self.config.causal))  # [B, 1, S, S]
            running = carried[loop] if carried[loop] is not None else kept[loop] if drops else None  # [B, S'] or None
            added = positions  # [B, S, h] or None
            if signal is not None:
                timestep = signal[loop].expand_as(e)  # [B, S, h]
                added = timestep if added is None else added + timestep  # [B, S, h]
            # The initial state is not carried from a loop, so the first loop leaves it whole.
            yield LoopPlan(stack, running, carry=loop > 0, added=added, grad=loop >= first_with_grad)

    def loop_signal(self, b: int, e: torch.Tensor) -> torch.Tensor | None:  # -> [b, h] or None
        """The loop-index embedding of loops 1..b (`loop_embedding`), or None."""
        if not self.config.loop_config.signal:
            return None
        table = sinusoidal_table(b + 1, self.config.hidden_dim, 10000.0)[1:]  # [b, h]: loop numbers 1..b
        return table.to(device=e.device, dtype=e.dtype)

    def equilibrium(
        self, tokens: torch.Tensor, max_iter: int, tol: float, unroll: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Predictions [1, B, P] at the loop's fixed point and the solve's {"iterations", "residual"}:
        `fixed_point` without the state."""
        preds, info, _ = self.fixed_point(tokens, max_iter, tol, unroll)
        return preds, info

    def fixed_point(
        self, tokens: torch.Tensor, max_iter: int, tol: float, unroll: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Predictions [1, B, P] at the loop's fixed point s* = step(s*, e), solved by Anderson
        acceleration in at most `max_iter` evaluations. Needs one map to iterate: one stack, the
        whole context and state, no loop-index signal (`check_fixed_point`).

        The gradient: with `unroll` None, the implicit one (`equilibrium.implicit_fixed_point`: the
        deep-equilibrium model of Bai et al. 2019); with `unroll` = k, the solve runs without
        gradient and k more plain loops from its output carry it (the phantom gradient of Geng et
        al. 2021; k = 1 is the Jacobian-free backpropagation of Fung et al. 2022), which needs no
        backward solve and stays finite where the forward solve has not converged. The
        predictions are then those of the k-th loop after the solve. Returns (predictions [1, B, P], the
        solve's {"iterations", "residual"}, the state they are read from [B, S, h])."""
        check_fixed_point(self.config)
        e = self.embed_prompt(tokens)  # [B, S, h]
        f = self.loop_map(e)  # [B, S, h] -> [B, S, h]: one loop
        s0 = self.injection.initial_state(e)  # [B, S, h]
        if unroll is None:
            state, info = implicit_fixed_point(f, s0, max_iter, tol)  # [B, S, h]
        else:
            state, info = phantom_fixed_point(f, s0, max_iter, tol, unroll)  # [B, S, h]
        return self.read_out(state)[None], info, state  # [1, B, P], info, [B, S, h]

    def loop_map(self, e: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """One loop of the prompt embedded as e [B, S, h], s -> step(s, e) [B, S, h] -> [B, S, h]: the map a
        fixed-point solve iterates and whose Jacobian the penalty estimates. The same map at every loop only
        when `check_fixed_point` allows the model (the callers check it)."""
        positions = self.loop_positions(e)  # None or [B, S, h]
        step = self._loop_step(self.stack)
        return lambda s: step(s, e, positions)  # [B, S, h] -> [B, S, h]

    def loop_jacobian(
        self, tokens: torch.Tensor, state: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A Hutchinson estimate of ||J||_F^2 / n of one loop at `state` [B, S, h] (J = d loop / d state, n the
        state's size; `equilibrium.jacobian_norm_estimate` from `samples` Gaussian vectors of `generator`): the
        quantity `TrainConfig.jacobian_penalty` penalises, differentiable in the parameters where gradient is
        enabled. Needs one map at every loop (`check_fixed_point`). Attention runs its composite ("math")
        kernel here: the penalty's gradient differentiates a vector-Jacobian product, and the fused CPU kernel
        has no second derivative; the training loss's own forward keeps the fused kernel."""
        check_fixed_point(self.config, "the loop map's Jacobian (TrainConfig.jacobian_penalty)")
        with sdpa_kernel(SDPBackend.MATH):
            e = self.embed_prompt(tokens)  # [B, S, h]
            return jacobian_norm_estimate(self.loop_map(e), state, samples, generator)  # a scalar

    def _loop_step(self, stack: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """One loop on (state, e, added) of the tokens that run: the injection's step, with `added`
        (the positions of `pe_at="loop"` and the loop-index signal, or None) added to the stack's input."""

        def step(state: torch.Tensor, e: torch.Tensor, added: torch.Tensor | None) -> torch.Tensor:
            if added is None:
                return self.injection.step(state, e, stack)  # [B, S, h]
            with_added = lambda x, **options: stack(x + added, **options)
            return self.injection.step(state, e, with_added)  # [B, S, h]

        return step

    def stack_for(self, loop: int) -> LayerStack:
        """The stack that loop `loop` (0-based) applies."""
        stacks = [self.stack, *self.other_stacks]
        return stacks[loop % len(stacks)]

    def predicted_points(self, tokens: torch.Tensor, b: int) -> torch.Tensor | None:
        """None when every loop predicts at every point, else bool [b, B, P]: False where a
        loop does not predict (its example was dropped from the context). Losses and metrics
        average over the True entries only."""
        kept = self.context_selection.kept_points(tokens, b)
        if all(mask is None for mask in kept):
            kept = self.state_selection.predicted(tokens, b)
        if all(mask is None for mask in kept):
            return None
        everything = torch.ones(tokens.shape[0], (tokens.shape[1] + 1) // 2, dtype=torch.bool, device=tokens.device)
        return torch.stack([everything if mask is None else mask for mask in kept])  # [b, B, P]

    def forward(self, tokens: torch.Tensor, b: int, grad_window: int | None = None) -> torch.Tensor:
        return self.loops(tokens, b, grad_window)[0]  # [b, B, P]

    def loops(
        self, tokens: torch.Tensor, b: int, grad_window: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictions of every loop [b, B, P] and the state after the last [B, S, h] (where the
        Jacobian penalty is taken); `forward` is the predictions alone."""
        preds, state = [], None
        for state in self.states(tokens, b, grad_window):  # [B, S, h]
            preds.append(self.read_out(state))  # [B, P]
        return torch.stack(preds), state  # [b, B, P], [B, S, h]


def gpt2_init(model: BaseLoopedTransformer) -> None:
    """GPT-2's initialisation of the looped stacks and the learned PE table (`ModelConfig.init`).

    Linear and embedding weights N(0, 0.02), biases 0 (LayerNorms keep PyTorch's 1 and 0, as in
    GPT-2); the two projections
    that write into the residual stream of each layer (attention out, MLP out) N(0, 0.02 /
    sqrt(2 n_layers)), GPT-2's depth scaling, counted per stack as the paper's code does (the
    loops are not counted). The read-in, read-out and injection parameters keep PyTorch's
    defaults, as the paper's read-in and read-out do."""
    residual_std = GPT2_INIT_STD / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for stack in (model.stack, *model.other_stacks):
            for module in stack.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, GPT2_INIT_STD)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            for layer in stack.layers:  # attention layers only (ModelConfig checks it)
                layer.attn.proj.weight.normal_(0.0, residual_std)
                layer.mlp[2].weight.normal_(0.0, residual_std)
        if isinstance(getattr(model.positional, "table", None), nn.Embedding):
            model.positional.table.weight.normal_(0.0, GPT2_INIT_STD)


# ----------------------------------------------------------------------------- the shared stack


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV and PyTorch's scaled_dot_product_attention."""

    def __init__(self, hidden_dim: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)

    @classmethod
    def from_config(cls, config: ModelConfig) -> SelfAttention:
        return cls(config.hidden_dim, config.n_heads, config.causal)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """allowed: None (the configured mask) or bool [B, 1, S, S], True where a query may
        attend to a key; it then replaces the causal mask and must already contain it."""
        batch, seq, hidden = x.shape  # [B, S, h]
        qkv = self.qkv(x).view(batch, seq, 3, self.n_heads, hidden // self.n_heads)  # [B, S, 3, heads, h/heads]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, S, h/heads]
        if allowed is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, heads, S, h/heads]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, heads, S, h/heads]
        out = out.transpose(1, 2).reshape(batch, seq, hidden)  # [B, S, h]
        return self.proj(out)  # [B, S, h]


class MLP(nn.Sequential):
    """Linear -> GELU -> Linear."""

    def __init__(self, hidden_dim: int, mlp_hidden: int, approximate: str = "none") -> None:
        super().__init__(
            nn.Linear(hidden_dim, mlp_hidden),
            nn.GELU(approximate=approximate),
            nn.Linear(mlp_hidden, hidden_dim),
        )


class LaptevLayer(nn.Module):
    """The Laptev study's layer: out = x + MLP(LN2(x + Attn(LN1(x)))).

    The attention output never joins the residual stream on its own; it only feeds the MLP.
    Kept exactly so that experiments can be compared with the study's numbers.
    """

    def __init__(self, hidden_dim: int, mlp_hidden: int, mixer: nn.Module) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden_dim)
        self.attn = mixer  # the token mixer; named attn so that older checkpoints load
        self.ln2 = nn.LayerNorm(hidden_dim)
        self.mlp = MLP(hidden_dim, mlp_hidden)

    @classmethod
    def from_config(cls, config: ModelConfig) -> LaptevLayer:
        return cls(config.hidden_dim, config.mlp_hidden, build_mixer(config))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        return x + self.mlp(self.ln2(x + self.attn(self.ln1(x), allowed)))  # [B, S, h]


class GPT2Block(nn.Module):
    """The standard pre-LN block: x + Attn(LN1 x), then + MLP(LN2 x), tanh-GELU as in GPT-2."""

    def __init__(self, hidden_dim: int, mlp_hidden: int, mixer: nn.Module) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden_dim)
        self.attn = mixer  # the token mixer; named attn so that older checkpoints load
        self.ln2 = nn.LayerNorm(hidden_dim)
        self.mlp = MLP(hidden_dim, mlp_hidden, approximate="tanh")

    @classmethod
    def from_config(cls, config: ModelConfig) -> GPT2Block:
        return cls(config.hidden_dim, config.mlp_hidden, build_mixer(config))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        x = x + self.attn(self.ln1(x), allowed)  # [B, S, h]
        return x + self.mlp(self.ln2(x))  # [B, S, h]


class LayerStack(nn.Module):
    """The weight-tied function looped `b` times: L layers in order (+ final LN for GPT-2)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(build_block(config) for _ in range(config.n_layers))
        # The paper's GPT-2 backbone closes every call with ln_f; the Laptev model has none
        # (ModelConfig.final_norm overrides the block's choice).
        self.final_norm = nn.LayerNorm(config.hidden_dim) if config.stack_config.normalised else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        before_each_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        for layer in self.layers:
            if before_each_layer is not None:
                x = before_each_layer(x)  # [B, S, h]
            x = layer(x, allowed)  # [B, S, h]
        return self.final_norm(x)  # [B, S, h]


def sinusoidal_table(n_positions: int, hidden_dim: int, base: float) -> torch.Tensor:
    """[n_positions, hidden_dim] table, sin on even channels, cos on odd ones, freq 1/base^(2i/h)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # [S, 1]
    exponent = torch.arange(0, hidden_dim, 2, dtype=torch.float64) / hidden_dim  # [ceil(h/2)]
    angle = position / base**exponent  # [S, ceil(h/2)]
    table = torch.zeros(n_positions, hidden_dim, dtype=torch.float64)  # [S, h]
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : hidden_dim // 2])
    return table.float()  # [S, h]


class PositionalEncoding(nn.Module):
    """Adds a [S, h] table to the embedded prompt; "none" adds nothing."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.pe
        if config.pe == "learned":
            self.table = nn.Embedding(config.context, config.hidden_dim)
            with torch.no_grad():  # scaling the N(0, 1) draw moves no random stream: the other weights are unchanged
                self.table.weight.mul_(config.pe_std)
        elif config.pe in ("sinusoidal", "sinusoidal_laptev"):
            # The Laptev study used base ln(10000) ~ 9.21 instead of 10000: its frequencies only
            # span 1 down to ~0.11, so distant positions are barely told apart.
            base = 10000.0 if config.pe == "sinusoidal" else math.log(10000.0)
            self.register_buffer("fixed", sinusoidal_table(config.context, config.hidden_dim, base))  # [context, h]

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        seq = e.shape[1]
        if self.kind == "learned":
            return e + self.table.weight[:seq]  # [B, S, h]
        if self.kind in ("sinusoidal", "sinusoidal_laptev"):
            return e + self.fixed[:seq]  # [B, S, h]
        return e


# ----------------------------------------------------------------------------- choice name -> class
# One registry per kind of part that a ModelConfig field picks by name, and one build function
# per kind, each `REGISTRY[config.<field>].from_config(config)`. Every choice in the
# corresponding *_CHOICES tuple has an entry (tests/test_model.py checks it).

INJECTIONS: dict[str, type[Injection]] = {
    "add": AddInjection,
    "none": NoInjection,
    "linear_add": LinearAddInjection,
    "linear_cat": LinearCatInjection,
    "each_layer": EachLayerInjection,
    "multiplicative": MultiplicativeInjection,
    "ema": EMAInjection,
    "ema_learned": EMAInjection,  # the same class; its from_config makes a a parameter
}
MIXERS: dict[str, type[nn.Module]] = {"attention": SelfAttention, "ssm": SelectiveSSM}
BLOCKS: dict[str, type[nn.Module]] = {"laptev": LaptevLayer, "gpt2": GPT2Block, "lstm": LSTMLayer}


def build_injection(config: ModelConfig) -> Injection:
    """How the prompt enters each loop: `config.injection`."""
    return INJECTIONS[config.injection].from_config(config)


def build_mixer(config: ModelConfig) -> nn.Module:
    """The token mixer of a transformer layer: `config.mixer`, attention or the selective SSM."""
    return MIXERS[config.mixer].from_config(config)


def build_block(config: ModelConfig) -> nn.Module:
    """One layer of the stack: `config.block`."""
    return BLOCKS[config.block].from_config(config)


# ----------------------------------------------------------------------------- size and compute


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_loop(model: BaseLoopedTransformer, n_points: int) -> int:
    """Forward FLOPs of one loop on one prompt of `n_points` points (2P - 1 tokens).

    Matrix products and convolutions as torch's FlopCounterMode counts them, with two terms
    written out because the counter misses them on some devices (the fused CPU kernels):
    attention's scores and weighted sum, 4 S^2 h per layer (the full square: the kernel
    computes the masked half too), and the LSTM's gate products, 16 h^2 per token and layer.
    The SSM's selection and scan are counted too (`SelectiveSSM.elementwise_flops`), as they
    are of the order of its matrix products; other element-wise work (activations, norms) is
    not. Embedding and readout, which run once per prompt or read one channel, are left out.
    """
    config = model.config
    n_tokens = 2 * n_points - 1
    state = torch.zeros(1, n_tokens, config.hidden_dim)  # [1, S, h]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.stack_for(0)(state)
    counted = sum(
        flops
        for op, flops in counter.get_flop_counts().get("Global", {}).items()
        if "scaled_dot_product" not in str(op)
    )
    if config.block == "lstm":
        return counted + 16 * config.hidden_dim**2 * n_tokens * config.n_layers
    if config.mixer == "attention":
        return counted + 4 * n_tokens**2 * config.hidden_dim * config.n_layers
    scans = [m.elementwise_flops(n_tokens) for m in model.stack_for(0).modules() if isinstance(m, SelectiveSSM)]
    return counted + sum(scans)
