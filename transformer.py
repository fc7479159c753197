"""The looped transformer: its configuration, its components and the model that loops them.

Owns `ModelConfig` (every architectural choice, validated), the building blocks (attention,
the seed-000 layer and the GPT-2 pre-LN block, positional encodings, injection steps) and
`BaseLoopedTransformer`, which applies one weight-tied stack of layers `b` times and reads a
prediction out after every loop.

Data flow (shapes: B batch, S = 2P-1 tokens, P points, d = n_dims, h = hidden_dim):

    tokens [B, S, d] --embed (+PE once)--> e [B, S, h]
    state = injection.initial_state(e)
    for loop in 1..b:  state = injection.step(state, e, stack)   # stack = the shared layers
                       pred[loop] = readout(state)[x positions]  # [B, P]
    return preds [b, B, P]

A variant replaces exactly one component (the PE, the mask, the injection step or the block)
through `ModelConfig`; nothing copies the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PE_CHOICES = ("none", "learned", "sinusoidal", "sinusoidal_seed000")
INJECTION_CHOICES = ("add", "none", "linear_add", "linear_cat", "each_layer")
BLOCK_CHOICES = ("seed000", "gpt2")


def _require_choice(field: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"ModelConfig.{field}={value!r} is not allowed; choose one of {allowed}")


def _require_positive_int(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{field}={value!r} must be an integer >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a looped model. Invalid values raise `ValueError`.

    pe:        "none" | "learned" (nn.Embedding(context, h)) | "sinusoidal" (1/10000^(2i/h))
               | "sinusoidal_seed000" (the reference study's frequencies 1/(ln 10000)^(2i/h));
               added once to the embedded prompt, so it is injected with it every loop.
    causal:    causal attention mask (True) or full bidirectional attention (False).
    injection: how the embedded prompt e enters each loop (see `Injection` subclasses).
    block:     "seed000": out = x + MLP(LN2(x + Attn(LN1 x))), the reference study's residual;
               "gpt2": the standard pre-LN block, with a final LayerNorm closing the stack.
    """

    n_dims: int
    n_layers: int = 1
    n_heads: int = 4
    hidden_dim: int = 64
    mlp_hidden: int = 256
    context: int = 127
    pe: str = "none"
    causal: bool = True
    injection: str = "add"
    block: str = "seed000"

    def __post_init__(self) -> None:
        for field in ("n_dims", "n_layers", "n_heads", "hidden_dim", "mlp_hidden", "context"):
            _require_positive_int(field, getattr(self, field))
        if self.hidden_dim % self.n_heads:
            raise ValueError(
                f"ModelConfig.hidden_dim={self.hidden_dim} must be divisible by ModelConfig.n_heads={self.n_heads}"
            )
        _require_choice("pe", self.pe, PE_CHOICES)
        _require_choice("injection", self.injection, INJECTION_CHOICES)
        _require_choice("block", self.block, BLOCK_CHOICES)
        if not isinstance(self.causal, bool):
            raise ValueError(f"ModelConfig.causal={self.causal!r} must be True or False")

    def check_prompt(self, n_points: int) -> None:
        """Raise `ValueError` if a prompt of `n_points` points (2P-1 tokens) does not fit."""
        _require_positive_int("n_points", n_points)
        n_tokens = 2 * n_points - 1
        if n_tokens > self.context:
            raise ValueError(
                f"a prompt of n_points={n_points} has {n_tokens} tokens, more than "
                f"ModelConfig.context={self.context}; raise context to at least {n_tokens}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def check_loops(b: int, name: str = "b") -> None:
    """Raise `ValueError` unless the loop count is an integer >= 1."""
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"{name}={b!r} must be an integer >= 1 (the number of loops)")


# ----------------------------------------------------------------------------- components


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV and PyTorch's scaled_dot_product_attention."""

    def __init__(self, hidden_dim: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape  # [B, S, h]
        qkv = self.qkv(x).view(batch, seq, 3, self.n_heads, hidden // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, S, h/heads]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, heads, S, h/heads]
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


class Seed000Layer(nn.Module):
    """The reference study's layer: out = x + MLP(LN2(x + Attn(LN1(x)))).

    The attention output never joins the residual stream on its own; it only feeds the MLP.
    Kept exactly so that experiments can be compared with the study's numbers.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_dim)
        self.attn = SelfAttention(config.hidden_dim, config.n_heads, config.causal)
        self.ln2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = MLP(config.hidden_dim, config.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        return x + self.mlp(self.ln2(x + self.attn(self.ln1(x))))


class GPT2Block(nn.Module):
    """The standard pre-LN block: x + Attn(LN1 x), then + MLP(LN2 x), tanh-GELU as in GPT-2."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_dim)
        self.attn = SelfAttention(config.hidden_dim, config.n_heads, config.causal)
        self.ln2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = MLP(config.hidden_dim, config.mlp_hidden, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


BLOCKS: dict[str, type[nn.Module]] = {"seed000": Seed000Layer, "gpt2": GPT2Block}


class LayerStack(nn.Module):
    """The weight-tied function looped `b` times: L layers in order (+ final LN for GPT-2)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BLOCKS[config.block](config) for _ in range(config.n_layers))
        # The paper's GPT-2 backbone closes every call with ln_f; the seed-000 model has none.
        self.final_norm = nn.LayerNorm(config.hidden_dim) if config.block == "gpt2" else nn.Identity()

    def forward(
        self, x: torch.Tensor, before_each_layer: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        for layer in self.layers:
            if before_each_layer is not None:
                x = before_each_layer(x)
            x = layer(x)
        return self.final_norm(x)


def sinusoidal_table(n_positions: int, hidden_dim: int, base: float) -> torch.Tensor:
    """[n_positions, hidden_dim] table, sin on even channels, cos on odd ones, freq 1/base^(2i/h)."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # [S, 1]
    exponent = torch.arange(0, hidden_dim, 2, dtype=torch.float64) / hidden_dim  # [ceil(h/2)]
    angle = position / base**exponent  # [S, ceil(h/2)]
    table = torch.zeros(n_positions, hidden_dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : hidden_dim // 2])
    return table.float()


class PositionalEncoding(nn.Module):
    """Adds a [S, h] table to the embedded prompt; "none" adds nothing."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.pe
        if config.pe == "learned":
            self.table = nn.Embedding(config.context, config.hidden_dim)
        elif config.pe in ("sinusoidal", "sinusoidal_seed000"):
            # Seed 000 used base ln(10000) ~ 9.21 instead of 10000: its frequencies only span
            # 1 down to ~0.11, so distant positions are barely told apart.
            base = 10000.0 if config.pe == "sinusoidal" else math.log(10000.0)
            self.register_buffer("fixed", sinusoidal_table(config.context, config.hidden_dim, base))

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        seq = e.shape[1]
        if self.kind == "learned":
            return e + self.table.weight[:seq]
        if self.kind in ("sinusoidal", "sinusoidal_seed000"):
            return e + self.fixed[:seq]
        return e


# ----------------------------------------------------------------------------- injection


class Injection(nn.Module):
    """How the embedded prompt e enters the loop. Subclasses override `initial_state`/`step`.

    `step(state, e, stack)` runs one loop iteration and returns the new state, which is also
    what the readout sees.
    """

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(e)  # [B, S, h]

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: LayerStack) -> torch.Tensor:
        raise NotImplementedError


class AddInjection(Injection):
    """s_0 = 0; s <- stack(s + e): the reference study's and the paper's injection."""

    def step(self, state, e, stack):
        return stack(state + e)


class NoInjection(Injection):
    """s_0 = e; s <- stack(s): the prompt enters once, never again."""

    def initial_state(self, e):
        return e

    def step(self, state, e, stack):
        return stack(state)


class LinearAddInjection(Injection):
    """s_0 = e; s <- W(stack(s) + e), W a learned h->h linear map; read out after W."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(hidden_dim, hidden_dim)

    def initial_state(self, e):
        return e

    def step(self, state, e, stack):
        return self.mix(stack(state) + e)


class LinearCatInjection(Injection):
    """s_0 = e; s <- W([stack(s); e]), W a learned 2h->h map over the feature axis."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(2 * hidden_dim, hidden_dim)

    def initial_state(self, e):
        return e

    def step(self, state, e, stack):
        return self.mix(torch.cat([stack(state), e], dim=-1))  # [B, S, 2h] -> [B, S, h]


class EachLayerInjection(Injection):
    """s_0 = 0; before every layer of every loop s <- s + e (b * L injections)."""

    def step(self, state, e, stack):
        return stack(state, before_each_layer=lambda x: x + e)


def build_injection(config: ModelConfig) -> Injection:
    if config.injection == "add":
        return AddInjection()
    if config.injection == "none":
        return NoInjection()
    if config.injection == "linear_add":
        return LinearAddInjection(config.hidden_dim)
    if config.injection == "linear_cat":
        return LinearCatInjection(config.hidden_dim)
    return EachLayerInjection()


# ----------------------------------------------------------------------------- the model


class BaseLoopedTransformer(nn.Module):
    """One weight-tied stack applied `b` times with the prompt injected every loop.

    With the default `ModelConfig` this is the reference study's `BaseLoopedTransformer`:
    causal mask, additive injection, no positional encoding, the seed-000 layer.
    `model(tokens, b)` maps tokens [B, S, n_dims] to predictions [b, B, P], one row per loop,
    read at the x positions (the prediction at x_i estimates y_i from the pairs before it).
    """

    # Loop j's output does not depend on the total loop count b, so one run to max b gives
    # every shorter run's outputs too (used by the extrapolation evaluation).
    loops_are_prefix_consistent: bool = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.n_dims, config.hidden_dim)
        self.positional = PositionalEncoding(config)
        self.stack = LayerStack(config)
        self.injection = build_injection(config)
        # n_dims outputs with only channel 0 read, as in seed 000 (keeps its parameter count).
        self.readout = nn.Linear(config.hidden_dim, config.n_dims)

    def embed_prompt(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [B, S, h]
        if tokens.dim() != 3 or tokens.shape[-1] != self.config.n_dims:
            raise ValueError(
                f"tokens must have shape [batch, seq, n_dims={self.config.n_dims}], got {tuple(tokens.shape)}"
            )
        if tokens.shape[1] > self.config.context:
            raise ValueError(
                f"tokens have {tokens.shape[1]} positions, more than ModelConfig.context={self.config.context}"
            )
        return self.positional(self.embed(tokens))

    def read_out(self, state: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, P]
        x_positions = state[:, 0::2]  # [B, P, h]
        return F.linear(x_positions, self.readout.weight[0], self.readout.bias[0])  # [B, P]

    def states(self, tokens: torch.Tensor, b: int, grad_window: int | None = None):
        """Yield the state [B, S, h] after each of the b loops.

        Loops before the last `grad_window` run without gradient (the paper's truncated
        backpropagation); `None` keeps the gradient through every loop.
        """
        check_loops(b)
        if grad_window is not None:
            check_loops(grad_window, "grad_window")
        e = self.embed_prompt(tokens)  # [B, S, h]
        first_with_grad = 0 if grad_window is None else max(0, b - grad_window)
        state = self.injection.initial_state(e)  # [B, S, h]
        for loop in range(b):
            with torch.set_grad_enabled(torch.is_grad_enabled() and loop >= first_with_grad):
                state = self.injection.step(state, e, self.stack)  # [B, S, h]
            yield state

    def forward(self, tokens: torch.Tensor, b: int, grad_window: int | None = None) -> torch.Tensor:
        preds = [self.read_out(state) for state in self.states(tokens, b, grad_window)]
        return torch.stack(preds)  # [b, B, P]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
