"""The variant components of the looped transformer: the parts one experiment swaps for another.

Owns the injection steps (`Injection` and its subclasses: how the embedded prompt e enters each
loop), the selective state-space mixer (`SelectiveSSM`, an alternative to attention inside a
layer), the LSTM layer (`LSTMLayer`, an alternative to a transformer layer), and the two
selection policies: `ContextSelection` (which in-context examples a loop may attend to, with
`attention_allowed` turning that into an attention mask) and `StateSelection` (how much of the
state one loop hands to the next), and `on_tokens`, the token-dropping mechanism that runs a
loop on a subset of the tokens only. The shared stack they plug into and the loop itself are in
`transformer.py`; the config they are built from is in `model_config.py`.

How parts are built (the same rule in both modules): a class that a `ModelConfig` field picks by
name takes plain values in `__init__`, so it can be built and tested alone, and reads its values
from the config in one classmethod, `from_config(config)`. The registries that map each choice
name to its class, and the `build_*` functions that use them, are in `transformer.py` (a kind such
as the mixer has one choice here and one there, so its registry can only live where both are
visible). The parts that read several fields of the config and are one class each
(`ContextSelection`, `StateSelection`, like `PositionalEncoding` and `LayerStack`) take the config
itself and read their component of it (`config.context_config`, `config.state_config`, ...).

Imports run one way: `transformer.py` imports this module; this module imports `ModelConfig`
(from `model_config.py`) for type hints only, never at run time.

Shapes: B batch, S = 2P-1 tokens, P points, N = P-1 in-context examples, h = hidden_dim.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # type hints only: the parts are built from a config, the config knows nothing of them
    from model_config import ModelConfig

__all__ = [
    "Injection",
    "AddInjection",
    "NoInjection",
    "LinearAddInjection",
    "LinearCatInjection",
    "EachLayerInjection",
    "MultiplicativeInjection",
    "EMAInjection",
    "SelectiveSSM",
    "LSTMLayer",
    "ContextSelection",
    "attention_allowed",
    "on_tokens",
    "StateSelection",
]

# One loop's layers, `LayerStack.forward`, possibly with an attention mask already bound:
# stack(x [B, S, h], before_each_layer=None) -> [B, S, h].
Stack = Callable[..., torch.Tensor]


# ----------------------------------------------------------------------------- injection


class Injection(nn.Module):
    """How the embedded prompt e enters the loop. Subclasses override `initial_state`/`step`.

    `step(state, e, stack)` runs one loop iteration and returns the new state, which is also
    what the readout sees.
    """

    @classmethod
    def from_config(cls, config: ModelConfig) -> Injection:
        return cls()  # most injections have no parameters of their own

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        return torch.zeros_like(e)  # [B, S, h]

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        raise NotImplementedError


class AddInjection(Injection):
    """s_0 = 0; s <- stack(s + e): the Laptev study's and the paper's injection."""

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return stack(state + e)  # [B, S, h]


class NoInjection(Injection):
    """s_0 = e; s <- stack(s): the prompt enters once, never again."""

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        return e  # [B, S, h]

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return stack(state)  # [B, S, h]


class _LearnedMixInjection(Injection):
    """s_0 = e; each loop ends in a learned linear map `mix` of `inputs` x h features to h."""

    inputs = 1  # how many h-wide inputs `mix` reads

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.mix = nn.Linear(self.inputs * hidden_dim, hidden_dim)

    @classmethod
    def from_config(cls, config: ModelConfig) -> _LearnedMixInjection:
        return cls(config.hidden_dim)

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        return e  # [B, S, h]


class LinearAddInjection(_LearnedMixInjection):
    """s_0 = e; s <- W(stack(s) + e), W a learned h->h linear map; read out after W."""

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return self.mix(stack(state) + e)  # [B, S, h]


class LinearCatInjection(_LearnedMixInjection):
    """s_0 = e; s <- W([stack(s); e]), W a learned 2h->h map over the feature axis."""

    inputs = 2

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return self.mix(torch.cat([stack(state), e], dim=-1))  # [B, S, 2h] -> [B, S, h]


class EachLayerInjection(Injection):
    """s_0 = 0; before every layer of every loop s <- s + e (b * L injections)."""

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return stack(state, before_each_layer=lambda x: x + e)  # [B, S, h]


class MultiplicativeInjection(Injection):
    """s_0 = 1; s <- stack(s * e), element-wise: the paper's multiplicative option (z = f(x * z)). With a PE,
    pe_at="loop" is the paper's f(s * x + p); the default pe_at="prompt" gives f(s * (x + p))."""

    def initial_state(self, e: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(e)  # [B, S, h]: the first loop sees e itself

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        return stack(state * e)  # [B, S, h]


class EMAInjection(Injection):
    """s_0 = 0; s <- stack(a * s + (1 - a) * e): the moving average proposed in the Murawiecki study.

    a = 0 makes every loop see only e (no recurrence). It is not add injection in disguise:
    a = 1/2 gives stack(s/2 + e/2), which is add injection with e halved (a scale a learned
    embedding can absorb, up to the PE's) **and the carried state halved every loop**. In a
    stack with no final normalisation (the Laptev layer) that halving damps the state, so a
    difference between EMA and add injection there may come from the damping rather than from
    the mixing rule. With `learned`, a = sigmoid(theta) and theta starts at logit(alpha).
    """

    def __init__(self, alpha: float, learned: bool) -> None:
        super().__init__()
        self.learned = learned
        if learned:
            self.logit = nn.Parameter(torch.tensor(math.log(alpha / (1 - alpha))))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha)))

    @classmethod
    def from_config(cls, config: ModelConfig) -> EMAInjection:
        # "ema" and "ema_learned" are one class: they differ only in whether a is a parameter.
        injection = config.injection_config
        return cls(injection.ema_alpha, learned=injection.learned_alpha)

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.logit) if self.learned else self.fixed_alpha  # a scalar in (0, 1)

    def step(self, state: torch.Tensor, e: torch.Tensor, stack: Stack) -> torch.Tensor:
        alpha = self.alpha
        return stack(alpha * state + (1 - alpha) * e)  # [B, S, h]


# ----------------------------------------------------------------------------- token mixer


class SelectiveSSM(nn.Module):
    """A Mamba-style selective state-space mixer (Gu and Dao 2023, arXiv 2312.00752) in plain PyTorch.

    Per channel c and state n, with input-dependent step dt_t, B_t, C_t (the "selection"):
        h_t[c, n] = exp(dt_t[c] * A[c, n]) * h_{t-1}[c, n] + dt_t[c] * B_t[n] * u_t[c]
        y_t[c]    = sum_n C_t[n] * h_t[c, n] + D[c] * u_t[c]
    where u is the input after a causal depthwise convolution and SiLU, and the output is
    gated by SiLU(z) of a second input projection. A = -exp(A_log) < 0 and dt > 0 make every
    decay factor lie in (0, 1), so the recurrence cannot grow without bound (the Murawiecki
    study's SSM produced NaN). expand = 1 keeps the parameter count close to attention's 4 h^2.
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
        self.D = nn.Parameter(torch.ones(inner))  # [inner]
        with torch.no_grad():
            dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))  # [inner]
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        self.out_proj = nn.Linear(inner, hidden_dim)

    @classmethod
    def from_config(cls, config: ModelConfig) -> SelectiveSSM:
        return cls(config.hidden_dim, config.ssm_state)

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

    def elementwise_flops(self, n_tokens: int) -> int:
        """FLOPs of the selection's and the scan's element-wise work on one sequence, which a
        matrix-product counter misses: per token, channel and state, the decay (a product and
        an exponential), the drive (a product), the update (a product and a sum) and the
        readout (a product and a sum): 7 S inner N. The scan is most of this mixer's cost at
        small widths, so a compute comparison that left it out would flatter the SSM."""
        inner = self.D.numel()
        return 7 * n_tokens * inner * self.d_state

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


# ----------------------------------------------------------------------------- LSTM block


class LSTMLayer(nn.Module):
    """One unidirectional LSTM layer in place of a transformer layer (the Aleksandr study's looped LSTM).

    Input and hidden size are hidden_dim and the initial (h, c) are zero on every call, so each
    loop starts the recurrence afresh; n_layers of these in a `LayerStack` compute exactly the
    Aleksandr study's nn.LSTM(hidden, hidden, num_layers=n_layers) (no residual, no normalisation).
    """

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden_dim, hidden_dim, batch_first=True)

    @classmethod
    def from_config(cls, config: ModelConfig) -> LSTMLayer:
        return cls(config.hidden_dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:  # [B, S, h]
        if allowed is not None:
            raise ValueError("an LSTM layer cannot apply an attention mask; use context_keep='all'")
        return self.lstm(x)[0]  # [B, S, h]: the hidden state of every position


# ----------------------------------------------------------------------------- context selection


class ContextSelection:
    """Which in-context examples each loop may attend to (the Laptev study, experiment 5).

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
    order of the kept examples; here the order is kept.) "random_batch" is the study's own:
    one random order of the examples per batch, drawn from a checksum of the batch's first
    token (so a new draw for every batch, the same draw on every call with that batch), its
    first `count` examples kept in that order. It exists only with context_compute "drop"
    (`kept_tokens`), since a key mask cannot reorder tokens.
    """

    def __init__(self, config: ModelConfig) -> None:
        context = config.context_config
        self.keep, self.n, self.cut_at, self.shrink = context.keep, context.n, context.cut_at, context.shrink

    def examples_at(self, loop: int, n_examples: int) -> int:
        """How many of `n_examples` examples loop `loop` (0-based) sees."""
        if self.keep == "all" or loop + 1 < self.cut_at:
            return n_examples
        if self.shrink == 0:
            return min(self.n, n_examples)
        return max(min(self.n, n_examples), n_examples - self.shrink * (loop + 2 - self.cut_at))

    def random_ranks(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [B, N]
        """The rank of each example's random key within its prompt, from a per-prompt seed."""
        n_examples = (tokens.shape[1] - 1) // 2
        first_tokens = tokens[:, 0].detach().cpu().numpy()  # [B, d]: x_1 of every prompt
        keys = torch.empty(tokens.shape[0], n_examples)  # [B, N]
        generator = torch.Generator()
        for row, first in enumerate(first_tokens):
            generator.manual_seed(zlib.crc32(first.tobytes()))
            keys[row] = torch.rand(n_examples, generator=generator)  # [N]
        return keys.argsort(1).argsort(1).to(tokens.device)  # [B, N]: rank of each example's key

    @staticmethod
    def batch_order(tokens: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [N]
        """ "random_batch": one random order of the N examples for the whole batch, from a
        seed that is the checksum of the batch's first token (x_1 of its first prompt)."""
        n_examples = (tokens.shape[1] - 1) // 2
        generator = torch.Generator()
        generator.manual_seed(zlib.crc32(tokens[0, 0].detach().cpu().numpy().tobytes()))
        return torch.randperm(n_examples, generator=generator).to(tokens.device)  # [N]

    def kept_tokens(self, tokens: torch.Tensor, b: int) -> list[torch.Tensor | None]:
        """Per loop: None (every token runs) or long [B, S']: the tokens the loop runs on, in
        the order they run, each kept example as its (x, y) pair and the query last."""
        batch, seq = tokens.shape[:2]
        n_examples = (seq - 1) // 2
        if self.keep == "random_batch":
            order = self.batch_order(tokens)  # [N]
            pairs = torch.stack([2 * order, 2 * order + 1], 1)  # [N, 2]: x then y of each example, drawn order
            query = torch.tensor([seq - 1], device=tokens.device)
            return [
                None
                if count >= n_examples
                else torch.cat([pairs[:count].flatten(), query]).expand(batch, 2 * count + 1)  # [B, S']
                for count in (self.examples_at(loop, n_examples) for loop in range(b))
            ]
        positions = torch.arange(seq, device=tokens.device).expand(batch, seq)  # [B, S]
        return [
            None if points is None else positions[_tokens_of(points)].view(batch, -1)  # [B, S'], in prompt order
            for points in self.kept_points(tokens, b)
        ]

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
        elif self.keep == "random_batch":
            index = self.batch_order(tokens).argsort().expand(batch, n_examples)  # [B, N]: place in the draw
        elif self.keep == "last":
            index = index.flip(1)  # [B, N]: the last example ranks first
        query = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)  # [B, 1]
        return [None if count >= n_examples else torch.cat([index < count, query], 1) for count in counts]  # [B, P]


def _tokens_of(kept: torch.Tensor) -> torch.Tensor:  # [B, P] -> [B, S]
    """bool [B, S] from kept points [B, P]: an example's x and y token, and the query."""
    return torch.cat([kept[:, :-1].repeat_interleave(2, dim=1), kept[:, -1:]], 1)  # [B, S]


def attention_allowed(kept: torch.Tensor, causal: bool) -> torch.Tensor:
    """bool [B, 1, S, S] from kept points [B, P]: keys of dropped examples are masked; every
    token still sees itself, so a dropped token's row is never empty."""
    batch, n_points = kept.shape
    tokens_kept = _tokens_of(kept)  # [B, S]
    seq = tokens_kept.shape[1]
    allowed = tokens_kept[:, None, None, :].expand(batch, 1, seq, seq)  # [B, 1, S, S] by key
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool, device=kept.device).tril()  # [B, 1, S, S]
    return allowed | torch.eye(seq, dtype=torch.bool, device=kept.device)  # [B, 1, S, S]


def on_tokens(
    index: torch.Tensor | None,
    step: Callable[..., torch.Tensor],
    state: torch.Tensor,
    *per_token: torch.Tensor | None,
) -> torch.Tensor:
    """The token-dropping mechanism: run `step(state, *per_token)` on the tokens `index` only.

    index: None (every token runs) or long [B, S']: which tokens run, in the order they run.
    The state and every per-token tensor ([B, S, h], or None) are gathered to [B, S', h], so
    attention, MLP and norms cost S' tokens instead of S; the result is written back into a
    copy of the state at those positions, and the tokens that did not run keep their state.
    A causal mask then applies to the gathered order."""
    if index is None:
        return step(state, *per_token)  # [B, S, h]
    where = index[..., None].expand(-1, -1, state.shape[-1])  # [B, S', h]
    gathered = [None if x is None else x.gather(1, where) for x in per_token]  # each [B, S', h]
    return state.scatter(1, where, step(state.gather(1, where), *gathered))  # [B, S, h]


# ----------------------------------------------------------------------------- state selection


class StateSelection:
    """Which part of the state is carried from one loop into the next (the Aleksandr and Murawiecki studies).

    "last_in_place" keeps the state of the last n = round(state_fraction * S) tokens where
    they are and zeroes the rest (the Aleksandr study's n_last_tokens; the injected prompt stays
    whole). "last_shifted" moves those n states to positions 0..n-1 and zeroes the rest (the
    Murawiecki study). Shifting hands position i the state of the later position S - n + i, which
    has seen the tokens after i, including the label y of an x at i: the shifted variant is not causal.

    With state_compute "carried", the loops after the first run on the n carried tokens alone
    (`running_tokens`, through `on_tokens`): the others are neither computed nor attended to, and
    only the x positions among the carried tokens are predicted (`predicted`).
    """

    def __init__(self, config: ModelConfig) -> None:
        state = config.state_config
        self.keep, self.fraction, self.compute = state.keep, state.fraction, state.compute

    def carried_count(self, seq: int) -> int:
        """How many of the S tokens carry their state into the next loop."""
        return seq if self.keep == "all" else min(seq, round(self.fraction * seq))

    def running_tokens(self, tokens: torch.Tensor, b: int) -> list[torch.Tensor | None]:
        """Per loop: None (every token runs) or long [B, n], the carried tokens that run
        (state_compute "carried": every loop after the first)."""
        if self.compute == "all":
            return [None] * b
        batch, seq = tokens.shape[:2]
        n = self.carried_count(seq)
        last = torch.arange(seq - n, seq, device=tokens.device).expand(batch, n)  # [B, n]
        return [None] + [last] * (b - 1)

    def predicted(self, tokens: torch.Tensor, b: int) -> list[torch.Tensor | None]:
        """Per loop: None (every point predicted) or bool [B, P], the x positions that ran."""
        if self.compute == "all":
            return [None] * b
        batch, seq = tokens.shape[:2]
        first_carried = seq - self.carried_count(seq)
        points = torch.arange(0, seq, 2, device=tokens.device) >= first_carried  # [P]: x at token 2i
        return [None] + [points.expand(batch, -1)] * (b - 1)

    def carried(self, state: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, S, h]
        seq = state.shape[1]
        n = self.carried_count(seq)
        if self.keep == "all" or n >= seq:
            return state
        last = state[:, seq - n :]  # [B, n, h]
        if self.keep == "last_in_place":
            return torch.cat([torch.zeros_like(state[:, : seq - n]), last], 1)  # [B, S, h]
        return torch.cat([last, torch.zeros_like(state[:, n:])], 1)  # [B, S, h], shifted to the front
