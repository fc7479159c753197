"""The looped transformer: its configuration, its components and the model that loops them.

Owns `ModelConfig` (every architectural choice, validated), the building blocks (attention,
the seed-000 layer and the GPT-2 pre-LN block, positional encodings, injection steps,
context and state selection) and `BaseLoopedTransformer`, which applies one weight-tied stack of
layers `b` times and reads a prediction out after every loop.

Data flow (shapes: B batch, S = 2P-1 tokens, P points, d = n_dims, h = hidden_dim):

    tokens [B, S, d] --embed (+PE once)--> e [B, S, h]
    state = injection.initial_state(e)
    for loop in 1..b:  state = injection.step(state, e, stack)   # stack = the shared layers
                       pred[loop] = readout(state)[x positions]  # [B, P]
    return preds [b, B, P]

A variant replaces exactly one component through `ModelConfig`: the PE, the mask, the
injection step, the block (a transformer layer or an LSTM layer), the token mixer inside the
transformer layer (attention or a selective state-space scan), how many distinct stacks the
loops cycle through (A->B), the context selection (drops examples from the attention of later
loops) or the state selection (limits what one loop hands to the next). Nothing copies the model.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PE_CHOICES = ("none", "learned", "sinusoidal", "sinusoidal_seed000")
INJECTION_CHOICES = ("add", "none", "linear_add", "linear_cat", "each_layer", "multiplicative", "ema", "ema_learned")
BLOCK_CHOICES = ("seed000", "gpt2", "lstm")
MIXER_CHOICES = ("attention", "ssm")
CONTEXT_KEEP_CHOICES = ("all", "first", "last", "random")
STATE_KEEP_CHOICES = ("all", "last_in_place", "last_shifted")


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
    injection: how the embedded prompt e enters each loop (see `Injection` subclasses);
               ema_alpha is the EMA's a (fixed for "ema", the initial value for "ema_learned").
    block:     "seed000": out = x + MLP(LN2(x + Attn(LN1 x))), the reference study's residual;
               "gpt2": the standard pre-LN block, with a final LayerNorm closing the stack;
               "lstm": one unidirectional LSTM layer (input = hidden = hidden_dim, zero initial
               states on every call), so n_layers of them are seed 001's nn.LSTM(num_layers=L).
    mixer:     the token mixer inside a transformer layer: "attention", or "ssm", a Mamba-style
               selective state-space scan (`SelectiveSSM`) with ssm_state states per channel.
               LSTM and SSM are causal by construction: they need causal=True and
               context_keep="all" (a key mask has no meaning for a recurrence).
    loop_stacks: how many distinct stacks of n_layers layers the loops cycle through, one per
               loop: 1 is the looped model, 2 is seed 002's A->B (A, B, A, B, ...).
    context_*: which in-context examples each loop may attend to (see `ContextSelection`):
               context_keep "all" (every loop sees the whole prompt) | "first" | "last" |
               "random" keeps context_n examples from loop context_cut_at on (1: before the
               first loop); context_shrink > 0 drops that many examples per loop instead, from
               all of them down to context_n. The query is always kept.
    state_keep, state_fraction: how much of the state is carried into the next loop (see
               `StateSelection`): "all", or the last round(state_fraction * S) tokens, kept
               "last_in_place" (seed 001; the rest zeroed) or "last_shifted" to the front
               (seed 002). state_fraction 0 carries nothing: every loop sees only e.
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
    mixer: str = "attention"
    ssm_state: int = 16
    loop_stacks: int = 1
    ema_alpha: float = 0.5
    context_keep: str = "all"
    context_n: int | None = None
    context_cut_at: int = 2
    context_shrink: int = 0
    state_keep: str = "all"
    state_fraction: float = 1.0

    def __post_init__(self) -> None:
        for field in (
            "n_dims",
            "n_layers",
            "n_heads",
            "hidden_dim",
            "mlp_hidden",
            "context",
            "ssm_state",
            "loop_stacks",
        ):
            _require_positive_int(field, getattr(self, field))
        if self.hidden_dim % self.n_heads:
            raise ValueError(
                f"ModelConfig.hidden_dim={self.hidden_dim} must be divisible by ModelConfig.n_heads={self.n_heads}"
            )
        _require_choice("pe", self.pe, PE_CHOICES)
        _require_choice("injection", self.injection, INJECTION_CHOICES)
        _require_choice("block", self.block, BLOCK_CHOICES)
        _require_choice("mixer", self.mixer, MIXER_CHOICES)
        if self.block == "lstm" and self.mixer != "attention":
            raise ValueError(
                f"ModelConfig.mixer={self.mixer!r} needs a transformer block, but block='lstm' has no mixer"
            )
        if not isinstance(self.causal, bool):
            raise ValueError(f"ModelConfig.causal={self.causal!r} must be True or False")
        if (
            isinstance(self.ema_alpha, bool)
            or not isinstance(self.ema_alpha, (int, float))
            or not (0 <= self.ema_alpha < 1 if self.injection == "ema" else 0 < self.ema_alpha < 1)
        ):
            allowed = "[0, 1)" if self.injection == "ema" else "(0, 1)"
            raise ValueError(f"ModelConfig.ema_alpha={self.ema_alpha!r} must be a number in {allowed}")
        _require_choice("context_keep", self.context_keep, CONTEXT_KEEP_CHOICES)
        if self.context_keep == "all":
            if self.context_n is not None or self.context_shrink:
                raise ValueError(
                    "ModelConfig.context_n and context_shrink need context_keep in ('first', 'last', 'random'), "
                    f"but context_keep='all' (got context_n={self.context_n!r}, context_shrink={self.context_shrink!r})"
                )
        else:
            _require_positive_int("context_n", self.context_n)
        _require_positive_int("context_cut_at", self.context_cut_at)
        recurrent = "block='lstm'" if self.block == "lstm" else "mixer='ssm'" if self.mixer == "ssm" else None
        if recurrent and not self.causal:
            raise ValueError(
                f"ModelConfig.causal=False is not allowed with {recurrent}, which is causal by construction"
            )
        if recurrent and self.context_keep != "all":
            raise ValueError(
                f"ModelConfig.context_keep={self.context_keep!r} is not allowed with {recurrent}: "
                "a recurrence cannot mask keys; use context_keep='all'"
            )
        _require_choice("state_keep", self.state_keep, STATE_KEEP_CHOICES)
        if isinstance(self.state_fraction, bool) or not isinstance(self.state_fraction, (int, float)):
            raise ValueError(f"ModelConfig.state_fraction={self.state_fraction!r} must be a number in [0, 1]")
        if not 0 <= self.state_fraction <= 1 or (self.state_keep == "all" and self.state_fraction != 1):
            raise ValueError(
                f"ModelConfig.state_fraction={self.state_fraction!r} must be in [0, 1], and 1 when state_keep='all'"
            )
        if isinstance(self.context_shrink, bool) or not isinstance(self.context_shrink, int) or self.context_shrink < 0:
            raise ValueError(f"ModelConfig.context_shrink={self.context_shrink!r} must be an integer >= 0")

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

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The inverse of `to_dict`; fields missing from older records take their defaults."""
        return cls(**values)


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

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """allowed: None (the configured mask) or bool [B, 1, S, S], True where a query may
        attend to a key; it then replaces the causal mask and must already contain it."""
        batch, seq, hidden = x.shape  # [B, S, h]
        qkv = self.qkv(x).view(batch, seq, 3, self.n_heads, hidden // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, S, h/heads]
        if allowed is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, heads, S, h/heads]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # [B, heads, S, h/heads]
        out = out.transpose(1, 2).reshape(batch, seq, hidden)  # [B, S, h]
        return self.proj(out)  # [B, S, h]


class SelectiveSSM(nn.Module):
    """A Mamba-style selective state-space mixer (Gu and Dao 2023, arXiv 2312.00752) in plain PyTorch.

    Per channel c and state n, with input-dependent step dt_t, B_t, C_t (the "selection"):
        h_t[c, n] = exp(dt_t[c] * A[c, n]) * h_{t-1}[c, n] + dt_t[c] * B_t[n] * u_t[c]
        y_t[c]    = sum_n C_t[n] * h_t[c, n] + D[c] * u_t[c]
    where u is the input after a causal depthwise convolution and SiLU, and the output is
    gated by SiLU(z) of a second input projection. A = -exp(A_log) < 0 and dt > 0 make every
    decay factor lie in (0, 1), so the recurrence cannot grow without bound (the study's SSM
    produced NaN). expand = 1 keeps the parameter count close to attention's 4 h^2.
    The scan runs token by token: it is causal, and at these prompt lengths (S < 130) a
    sequential loop costs less memory than a parallel scan's [B, S, S, ...] tensor.
    """

    def __init__(self, hidden_dim: int, d_state: int, d_conv: int = 4, expand: int = 1) -> None:
        super().__init__()
        inner = expand * hidden_dim
        self.d_state = d_state
        self.dt_rank = math.ceil(hidden_dim / 16)
        self.in_proj = nn.Linear(hidden_dim, 2 * inner)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        # Mamba's initialisation: A = -(1, 2, ..., N) per channel, dt = softplus(bias) spread
        # log-uniformly over [1e-3, 1e-1] at the start.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        with torch.no_grad():
            dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        self.out_proj = nn.Linear(inner, hidden_dim)

    def selection(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The scan's inputs from x [B, S, h]: (u [B, S, inner], gate [B, S, inner], decay and
        drive [B, S, inner, N], c_out [B, S, N]), every step size and projection input-dependent."""
        seq = x.shape[1]
        u, gate = self.in_proj(x).chunk(2, dim=-1)  # each [B, S, inner]
        u = F.silu(self.conv(u.transpose(1, 2))[..., :seq].transpose(1, 2))  # [B, S, inner], causal conv
        dt, b_in, c_out = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [B, S, inner]
        decay = torch.exp(dt[..., None] * -torch.exp(self.A_log))  # [B, S, inner, N], in (0, 1)
        drive = (dt * u)[..., None] * b_in[:, :, None, :]  # [B, S, inner, N]
        return u, gate, decay, drive, c_out

    @staticmethod
    def scan(decay: torch.Tensor, drive: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
        """y_t = C_t . h_t with h_t = decay_t * h_{t-1} + drive_t, h_0 = 0: [B, S, inner]."""
        h = torch.zeros_like(drive[:, 0])  # [B, inner, N]
        outputs = []
        for t in range(drive.shape[1]):
            h = decay[:, t] * h + drive[:, t]  # [B, inner, N]
            outputs.append((h * c_out[:, t, None, :]).sum(-1))  # [B, inner]
        return torch.stack(outputs, dim=1)  # [B, S, inner]

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        if allowed is not None:
            raise ValueError("SelectiveSSM cannot apply an attention mask; use context_keep='all'")
        u, gate, decay, drive, c_out = self.selection(x)
        y = self.scan(decay, drive, c_out) + u * self.D  # [B, S, inner]
        return self.out_proj(y * F.silu(gate))  # [B, S, h]


def build_mixer(config: ModelConfig) -> nn.Module:
    """The token mixer of a transformer layer: attention or the selective SSM."""
    if config.mixer == "ssm":
        return SelectiveSSM(config.hidden_dim, config.ssm_state)
    return SelfAttention(config.hidden_dim, config.n_heads, config.causal)


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
        self.attn = build_mixer(config)  # the token mixer; named attn so that older checkpoints load
        self.ln2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = MLP(config.hidden_dim, config.mlp_hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        return x + self.mlp(self.ln2(x + self.attn(self.ln1(x), allowed)))


class GPT2Block(nn.Module):
    """The standard pre-LN block: x + Attn(LN1 x), then + MLP(LN2 x), tanh-GELU as in GPT-2."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_dim)
        self.attn = build_mixer(config)  # the token mixer; named attn so that older checkpoints load
        self.ln2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = MLP(config.hidden_dim, config.mlp_hidden, approximate="tanh")

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


class LSTMLayer(nn.Module):
    """One unidirectional LSTM layer in place of a transformer layer (seed 001's looped LSTM).

    Input and hidden size are hidden_dim and the initial (h, c) are zero on every call, so each
    loop starts the recurrence afresh; n_layers of these in a `LayerStack` compute exactly
    seed 001's nn.LSTM(hidden, hidden, num_layers=n_layers) (no residual, no normalisation).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.lstm = nn.LSTM(config.hidden_dim, config.hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        if allowed is not None:
            raise ValueError("an LSTM layer cannot apply an attention mask; use context_keep='all'")
        return self.lstm(x)[0]  # [B, S, h]: the hidden state of every position


BLOCKS: dict[str, type[nn.Module]] = {"seed000": Seed000Layer, "gpt2": GPT2Block, "lstm": LSTMLayer}


class LayerStack(nn.Module):
    """The weight-tied function looped `b` times: L layers in order (+ final LN for GPT-2)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(BLOCKS[config.block](config) for _ in range(config.n_layers))
        # The paper's GPT-2 backbone closes every call with ln_f; the seed-000 model has none.
        self.final_norm = nn.LayerNorm(config.hidden_dim) if config.block == "gpt2" else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        before_each_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        for layer in self.layers:
            if before_each_layer is not None:
                x = before_each_layer(x)
            x = layer(x, allowed)
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


class MultiplicativeInjection(Injection):
    """s_0 = 1; s <- stack(s * e), element-wise: the paper's multiplicative option (z = f(x * z))."""

    def initial_state(self, e):
        return torch.ones_like(e)  # [B, S, h]: the first loop sees e itself

    def step(self, state, e, stack):
        return stack(state * e)


class EMAInjection(Injection):
    """s_0 = 0; s <- stack(a * s + (1 - a) * e): the moving average proposed in seed 002.

    a = 0 makes every loop see only e (no recurrence); add injection is a = 1/2 with the
    input scaled by 2. With `learned`, a = sigmoid(theta) and theta starts at logit(alpha).
    """

    def __init__(self, alpha: float, learned: bool) -> None:
        super().__init__()
        self.learned = learned
        if learned:
            self.logit = nn.Parameter(torch.tensor(math.log(alpha / (1 - alpha))))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha)))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.logit) if self.learned else self.fixed_alpha

    def step(self, state, e, stack):
        alpha = self.alpha
        return stack(alpha * state + (1 - alpha) * e)


def build_injection(config: ModelConfig) -> Injection:
    simple = {
        "add": AddInjection,
        "none": NoInjection,
        "each_layer": EachLayerInjection,
        "multiplicative": MultiplicativeInjection,
    }
    if config.injection in simple:
        return simple[config.injection]()
    if config.injection == "linear_add":
        return LinearAddInjection(config.hidden_dim)
    if config.injection == "linear_cat":
        return LinearCatInjection(config.hidden_dim)
    return EMAInjection(config.ema_alpha, learned=config.injection == "ema_learned")


# ----------------------------------------------------------------------------- context selection


class ContextSelection:
    """Which in-context examples each loop may attend to (reference study, experiment 5).

    A dropped example is removed from attention by a key mask: its x and y tokens are no
    key for any other token from that loop on. Kept tokens then compute exactly what they
    would on the shortened sequence (the PEs added before the cut stay with the tokens, as
    in the study), and the original order is kept. The query is always kept. Positions of
    dropped examples are not predicted at that loop: `kept_points` says which are.

    "random" ranks the examples of each prompt by keys drawn from a generator seeded with a
    checksum of the prompt's first token x_1: every prompt gets its own random subset, the
    same one on every call (evaluation repeats, resumed training is exact), no prediction
    depends on a later token, and the subsets of a shrinking schedule are nested. (The study
    drew one subset for the whole batch and did not re-sort it, which also shuffled the
    order of the kept examples; here the order is kept.)
    """

    def __init__(self, config: ModelConfig) -> None:
        self.keep = config.context_keep
        self.n = config.context_n
        self.cut_at = config.context_cut_at
        self.shrink = config.context_shrink

    def examples_at(self, loop: int, n_examples: int) -> int:
        """How many of `n_examples` examples loop `loop` (0-based) sees."""
        if self.keep == "all" or loop + 1 < self.cut_at:
            return n_examples
        if self.shrink == 0:
            return min(self.n, n_examples)
        return max(min(self.n, n_examples), n_examples - self.shrink * (loop + 2 - self.cut_at))

    def random_ranks(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [B, N]
        n_examples = (tokens.shape[1] - 1) // 2
        first_tokens = tokens[:, 0].detach().cpu().numpy()  # [B, d]: x_1 of every prompt
        keys = torch.empty(tokens.shape[0], n_examples)  # [B, N]
        generator = torch.Generator()
        for row, first in enumerate(first_tokens):
            generator.manual_seed(zlib.crc32(first.tobytes()))
            keys[row] = torch.rand(n_examples, generator=generator)
        return keys.argsort(1).argsort(1).to(tokens.device)  # rank of each example's key

    def kept_points(self, tokens: torch.Tensor, b: int) -> list[torch.Tensor | None]:
        """Per loop: None (every point kept) or bool [B, P], True for the points it sees."""
        batch, seq = tokens.shape[:2]
        n_examples = (seq - 1) // 2
        counts = [self.examples_at(loop, n_examples) for loop in range(b)]
        if all(count >= n_examples for count in counts):
            return [None] * b
        index = torch.arange(n_examples, device=tokens.device).expand(batch, n_examples)  # [B, N]
        if self.keep == "random":
            index = self.random_ranks(tokens)  # [B, N]
        elif self.keep == "last":
            index = index.flip(1)  # the last example ranks first
        query = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)  # [B, 1]
        return [None if count >= n_examples else torch.cat([index < count, query], 1) for count in counts]


class StateSelection:
    """Which part of the state is carried from one loop into the next (seeds 001 and 002).

    "last_in_place" keeps the state of the last n = round(state_fraction * S) tokens where
    they are and zeroes the rest (seed 001's n_last_tokens; the injected prompt stays whole).
    "last_shifted" moves those n states to positions 0..n-1 and zeroes the rest (seed 002).
    Shifting hands position i the state of the later position S - n + i, which has seen the
    tokens after i, including the label y of an x at i: the shifted variant is not causal.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.keep = config.state_keep
        self.fraction = config.state_fraction

    def carried(self, state: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        seq = state.shape[1]
        n = round(self.fraction * seq)
        if self.keep == "all" or n >= seq:
            return state
        last = state[:, seq - n :]  # [B, n, h]
        if self.keep == "last_in_place":
            return torch.cat([torch.zeros_like(state[:, : seq - n]), last], 1)  # [B, S, h]
        return torch.cat([last, torch.zeros_like(state[:, n:])], 1)  # [B, S, h], shifted to the front


def attention_allowed(kept: torch.Tensor, causal: bool) -> torch.Tensor:
    """bool [B, 1, S, S] from kept points [B, P]: keys of dropped examples are masked; every
    token still sees itself, so a dropped token's row is never empty."""
    batch, n_points = kept.shape
    tokens_kept = torch.cat([kept[:, :-1].repeat_interleave(2, dim=1), kept[:, -1:]], 1)  # [B, S]
    seq = tokens_kept.shape[1]
    allowed = tokens_kept[:, None, None, :].expand(batch, 1, seq, seq)  # [B, 1, S, S] by key
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool, device=kept.device).tril()
    return allowed | torch.eye(seq, dtype=torch.bool, device=kept.device)


# ----------------------------------------------------------------------------- the model


class BaseLoopedTransformer(nn.Module):
    """One weight-tied stack applied `b` times with the prompt injected every loop.

    With loop_stacks = k > 1, k distinct stacks take turns, one per loop: loop j (0-based)
    runs stack j mod k (seed 002's A->B for k = 2; a run of b loops may end on A, where seed
    002 appended one more B: here loop j's output is read as it is, at every b).

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
        # A->B: the stacks after the first, in loop order (none for the looped model).
        self.other_stacks = nn.ModuleList(LayerStack(config) for _ in range(config.loop_stacks - 1))
        self.injection = build_injection(config)
        self.context_selection = ContextSelection(config)
        self.state_selection = StateSelection(config)
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
        kept = self.context_selection.kept_points(tokens, b)  # per loop: None or [B, P]
        state = self.injection.initial_state(e)  # [B, S, h]
        for loop in range(b):
            stack = self.stack_for(loop)
            if kept[loop] is not None:
                stack = partial(stack, allowed=attention_allowed(kept[loop], self.config.causal))
            with torch.set_grad_enabled(torch.is_grad_enabled() and loop >= first_with_grad):
                if loop > 0:  # the initial state is not carried from a loop, so it is left whole
                    state = self.state_selection.carried(state)  # [B, S, h]
                state = self.injection.step(state, e, stack)  # [B, S, h]
            yield state

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
            return None
        everything = torch.ones(tokens.shape[0], (tokens.shape[1] + 1) // 2, dtype=torch.bool, device=tokens.device)
        return torch.stack([everything if mask is None else mask for mask in kept])  # [b, B, P]

    def forward(self, tokens: torch.Tensor, b: int, grad_window: int | None = None) -> torch.Tensor:
        preds = [self.read_out(state) for state in self.states(tokens, b, grad_window)]
        return torch.stack(preds)  # [b, B, P]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def flops_per_loop(model: BaseLoopedTransformer, n_points: int) -> int:
    """Forward FLOPs of one loop on one prompt of `n_points` points (2P - 1 tokens).

    Matrix products and convolutions as torch's FlopCounterMode counts them, with two terms
    written out because the counter misses them on some devices (the fused CPU kernels):
    attention's scores and weighted sum, 4 S^2 h per layer (the full square: the kernel
    computes the masked half too), and the LSTM's gate products, 16 h^2 per token and layer.
    Element-wise work (activations, norms, the SSM's scan) is not counted. Embedding and
    readout, which run once per prompt or read one channel, are left out.
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
    return counted
