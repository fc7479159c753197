"""The looped transformer: its configuration, the loop, and the stack of layers it repeats.

Owns `ModelConfig` (every architectural choice, validated, with old choice names mapped to the
current ones), `BaseLoopedTransformer` (the loop the paper is about, in `states`), the shared
stack every variant runs (attention, MLP, the Laptev and GPT-2 layers, `LayerStack`, positional
encoding), the registries that map each choice name to the class that implements it, and
`flops_per_loop`. The parts that experiments swap in (injections, the SSM mixer, the LSTM layer,
context and state selection) are in `components.py`; every public name of that module is
re-exported here, so `from transformer import ...` keeps working for all of them.

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

The three studies this repository rebuilds are named after their authors' repositories: the
Laptev study (DaniilLaptev/TBankFoundations, the reference study), the Aleksandr study
(ALeksandr13254/looped-transformer) and the Murawiecki study (DMurawiecki/looped_transformer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import components
from checks import is_real, require, require_choice, require_int, require_real
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

__all__ = [
    # the config and its choices
    "PE_CHOICES",
    "INJECTION_CHOICES",
    "BLOCK_CHOICES",
    "MIXER_CHOICES",
    "CONTEXT_KEEP_CHOICES",
    "CONTEXT_COMPUTE_CHOICES",
    "PE_AT_CHOICES",
    "LOOP_EMBEDDING_CHOICES",
    "STATE_KEEP_CHOICES",
    "STATE_COMPUTE_CHOICES",
    "INIT_CHOICES",
    "RENAMED_VALUES",
    "current_names",
    "ModelConfig",
    "check_loops",
    "check_fixed_point",
    # the model
    "BaseLoopedTransformer",
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

PE_CHOICES = ("none", "learned", "sinusoidal", "sinusoidal_laptev")
INJECTION_CHOICES = ("add", "none", "linear_add", "linear_cat", "each_layer", "multiplicative", "ema", "ema_learned")
BLOCK_CHOICES = ("laptev", "gpt2", "lstm")
MIXER_CHOICES = ("attention", "ssm")
CONTEXT_KEEP_CHOICES = ("all", "first", "last", "random", "random_batch")
CONTEXT_COMPUTE_CHOICES = ("mask", "drop")
PE_AT_CHOICES = ("prompt", "loop")
LOOP_EMBEDDING_CHOICES = ("none", "sinusoidal")
STATE_KEEP_CHOICES = ("all", "last_in_place", "last_shifted")
STATE_COMPUTE_CHOICES = ("all", "carried")
INIT_CHOICES = ("torch", "gpt2")
GPT2_INIT_STD = 0.02

# Choice names that changed, per field: old name -> current name. Records, checkpoints and
# notebooks written with an old name still load; the config then holds (and saves) the new one.
RENAMED_VALUES: dict[str, dict[str, str]] = {
    "block": {"seed000": "laptev"},
    "pe": {"sinusoidal_seed000": "sinusoidal_laptev"},
}


def current_names(values: dict) -> dict:
    """`values` (field -> value) with every old choice name in `RENAMED_VALUES` replaced by its current name."""
    return {
        field: RENAMED_VALUES.get(field, {}).get(value, value) if isinstance(value, str) else value
        for field, value in values.items()
    }


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a looped model. Invalid values raise `ValueError`.

    pe:        "none" | "learned" (nn.Embedding(context, h)) | "sinusoidal" (1/10000^(2i/h))
               | "sinusoidal_laptev" (the Laptev study's frequencies 1/(ln 10000)^(2i/h));
               added where `pe_at` says.
    pe_at:     "prompt": the PE is added once to the embedded prompt e, so it enters every loop
               through the injection (the Laptev study; this repository's default). "loop": it
               is added to the stack's input on every loop, after the injection, as GPT-2's
               backbone adds wpe inside every call of the paper's code. The two agree for additive
               injection, s + (x + p); they differ for the others: the paper's multiplicative rule
               is f(s * x + p), "prompt" gives f(s * (x + p)).
    pe_std:    the learned PE table's initial standard deviation with init "torch": 1.0 is
               nn.Embedding's N(0, 1), GPT-2 uses 0.02 (drawn as N(0, 1) and scaled, so the rest
               of the initialisation is the same draw). Only for pe="learned" and init="torch".
    causal:    causal attention mask (True) or full bidirectional attention (False).
    injection: how the embedded prompt e enters each loop (see `Injection` subclasses);
               ema_alpha is the EMA's a (fixed for "ema", the initial value for "ema_learned").
    block:     "laptev": out = x + MLP(LN2(x + Attn(LN1 x))), the Laptev study's residual;
               "gpt2": the standard pre-LN block, with a final LayerNorm closing the stack;
               "lstm": one unidirectional LSTM layer (input = hidden = hidden_dim, zero initial
               states on every call), so n_layers of them are the Aleksandr study's
               nn.LSTM(num_layers=L).
    loop_embedding: "none" or "sinusoidal": a loop-index (timestep) signal added to the stack's
               input on every loop, the sinusoid of the loop's number (1, 2, ...; frequencies
               1/10000^(2i/h)), as the Universal Transformer adds a timestep embedding (Dehghani
               et al. 2019); a sinusoid is defined at every loop count, so it extends to any b.
    final_norm: a LayerNorm closing every call of the stack, so that the state is normalised
               every loop. None: the block's own choice (GPT-2 closes with ln_f; the Laptev layer
               and the LSTM have none); True or False force it, so that only the normalisation
               changes between two models.
    mixer:     the token mixer inside a transformer layer: "attention", or "ssm", a Mamba-style
               selective state-space scan (`SelectiveSSM`) with ssm_state states per channel.
               LSTM and SSM are causal by construction: they need causal=True and
               context_keep="all" (a key mask has no meaning for a recurrence).
    loop_stacks: how many distinct stacks of n_layers layers the loops cycle through, one per
               loop: 1 is the looped model, 2 is the Murawiecki study's A->B (A, B, A, B, ...).
    context_*: which in-context examples each loop may attend to (see `ContextSelection`):
               context_keep "all" (every loop sees the whole prompt) | "first" | "last" |
               "random" keeps context_n examples from loop context_cut_at on (1: before the
               first loop); context_shrink > 0 drops that many examples per loop instead, from
               all of them down to context_n. The query is always kept. "random_batch" is the
               Laptev study's own random cut: one draw of context_n examples for the whole batch,
               new for every batch, kept in the drawn (shuffled) order; it needs context_compute
               "drop". With shuffling, a point's prediction may use examples that came after it in
               the prompt, and with a cut after loop 1 its own label too, which those later
               tokens' loop-1 states have read (the query, run last, has no label to leak).
    context_compute: "mask": dropped examples stay in the sequence as keys no one may attend to
               (every token is still computed); "drop": the stack runs on the kept tokens only,
               gathered into a shorter sequence (`components.on_tokens`), which saves their
               compute. For kept tokens in prompt order the two give the same predictions.
    state_keep, state_fraction: how much of the state is carried into the next loop (see
               `StateSelection`): "all", or the last round(state_fraction * S) tokens, kept
               "last_in_place" (the Aleksandr study; the rest zeroed) or "last_shifted" to the
               front (the Murawiecki study). state_fraction 0 carries nothing: every loop sees only e.
    state_compute: "all": every token runs every loop (the tokens not carried restart from 0 + e
               and stay keys for the others); "carried": loops after the first run the stack on the
               carried tokens only (`components.on_tokens`), which is the compute the carried state
               was meant to save, and predict only there. Needs state_keep "last_in_place" with
               state_fraction > 0 and context_keep "all".
    init:      the initial weights. "torch": PyTorch's defaults (linear weights U(+-1/sqrt(fan_in)),
               std 1/sqrt(3 fan_in), about 0.10 at width 32; a learned PE table N(0, 1)).
               "gpt2": GPT-2's, as the paper's code gets them from Hugging Face's GPT2Model:
               inside the looped stacks and the learned PE table, weights N(0, 0.02), biases 0,
               and each residual projection (attention out, MLP out) N(0, 0.02 / sqrt(2 n_layers));
               the read-in and read-out keep PyTorch's defaults, as in the paper's code
               (`gpt2_init`).

    Old choice names (`RENAMED_VALUES`, e.g. block="seed000") are accepted and replaced by the
    current ones, so `to_dict` always writes the current names.
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
    block: str = "laptev"
    mixer: str = "attention"
    ssm_state: int = 16
    loop_stacks: int = 1
    ema_alpha: float = 0.5
    context_keep: str = "all"
    context_n: int | None = None
    context_cut_at: int = 2
    context_shrink: int = 0
    context_compute: str = "mask"
    state_keep: str = "all"
    state_fraction: float = 1.0
    state_compute: str = "all"
    init: str = "torch"
    pe_at: str = "prompt"
    pe_std: float = 1.0
    final_norm: bool | None = None
    loop_embedding: str = "none"

    def __post_init__(self) -> None:
        # Old choice names first, so that they pass validation and are stored under the new ones
        # (the dataclass is frozen, hence object.__setattr__).
        for field, value in current_names({field: getattr(self, field) for field in RENAMED_VALUES}).items():
            object.__setattr__(self, field, value)
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
            require_int(f"ModelConfig.{field}", getattr(self, field))
        require(
            self.hidden_dim % self.n_heads == 0,
            f"ModelConfig.hidden_dim={self.hidden_dim} must be divisible by ModelConfig.n_heads={self.n_heads}",
        )
        require_choice("ModelConfig.pe", self.pe, PE_CHOICES)
        require_choice("ModelConfig.injection", self.injection, INJECTION_CHOICES)
        require_choice("ModelConfig.block", self.block, BLOCK_CHOICES)
        require_choice("ModelConfig.mixer", self.mixer, MIXER_CHOICES)
        require(
            self.block != "lstm" or self.mixer == "attention",
            f"ModelConfig.mixer={self.mixer!r} needs a transformer block, but block='lstm' has no mixer",
        )
        require(isinstance(self.causal, bool), f"ModelConfig.causal={self.causal!r} must be True or False")
        if self.injection == "ema":
            # A fixed a may be 0 (no recurrence); a learned one starts at logit(a), finite only inside (0, 1).
            require(
                is_real(self.ema_alpha) and 0 <= self.ema_alpha < 1,
                f"ModelConfig.ema_alpha={self.ema_alpha!r} must be a finite number in [0, 1)",
            )
        else:
            require_real("ModelConfig.ema_alpha", self.ema_alpha, 0, 1, strict=True)
        # A setting that can have no effect is an error: a report would describe it as if it had one.
        require(
            self.injection in ("ema", "ema_learned") or self.ema_alpha == ModelConfig.ema_alpha,
            f"ModelConfig.ema_alpha={self.ema_alpha!r} has no effect with injection={self.injection!r}; "
            "it is the moving average's a for injection 'ema' or 'ema_learned'",
        )
        require_choice("ModelConfig.context_keep", self.context_keep, CONTEXT_KEEP_CHOICES)
        require_int("ModelConfig.context_shrink", self.context_shrink, minimum=0)
        if self.context_keep == "all":
            require(
                self.context_n is None and not self.context_shrink,
                "ModelConfig.context_n and context_shrink need context_keep in ('first', 'last', 'random'), "
                f"but context_keep='all' (got context_n={self.context_n!r}, context_shrink={self.context_shrink!r})",
            )
        else:
            require_int("ModelConfig.context_n", self.context_n)
        require_int("ModelConfig.context_cut_at", self.context_cut_at)
        require_choice("ModelConfig.context_compute", self.context_compute, CONTEXT_COMPUTE_CHOICES)
        require(
            self.context_compute == "mask" or self.context_keep != "all",
            f"ModelConfig.context_compute={self.context_compute!r} has no effect with context_keep='all' "
            "(nothing is dropped); leave it 'mask'",
        )
        require(
            self.context_keep != "random_batch" or self.context_compute == "drop",
            "ModelConfig.context_keep='random_batch' shuffles the kept examples, which a key mask cannot do; "
            "it needs context_compute='drop'",
        )
        require_choice("ModelConfig.pe_at", self.pe_at, PE_AT_CHOICES)
        require_choice("ModelConfig.loop_embedding", self.loop_embedding, LOOP_EMBEDDING_CHOICES)
        require(
            self.pe_at == "prompt" or self.pe != "none",
            "ModelConfig.pe_at='loop' has no effect with pe='none'; leave it 'prompt'",
        )
        require_real("ModelConfig.pe_std", self.pe_std, 0, None, strict=True)
        require(
            self.pe_std == ModelConfig.pe_std or (self.pe == "learned" and self.init == "torch"),
            f"ModelConfig.pe_std={self.pe_std!r} has no effect with pe={self.pe!r}, init={self.init!r}; it is the "
            "learned table's initial std with init 'torch' (GPT-2's initialisation fixes it at 0.02)",
        )
        require(
            self.final_norm is None or isinstance(self.final_norm, bool),
            f"ModelConfig.final_norm={self.final_norm!r} must be None (the block's own), True or False",
        )
        recurrent = "block='lstm'" if self.block == "lstm" else "mixer='ssm'" if self.mixer == "ssm" else None
        if recurrent:
            require(
                self.causal,
                f"ModelConfig.causal=False is not allowed with {recurrent}, which is causal by construction",
            )
            require(
                self.context_keep == "all",
                f"ModelConfig.context_keep={self.context_keep!r} is not allowed with {recurrent}: "
                "a recurrence cannot mask keys; use context_keep='all'",
            )
        require_choice("ModelConfig.init", self.init, INIT_CHOICES)
        require(
            self.init == "torch" or (self.block != "lstm" and self.mixer == "attention"),
            f"ModelConfig.init={self.init!r} is GPT-2's initialisation of attention layers; it needs "
            f"block 'laptev' or 'gpt2' and mixer 'attention' (got block={self.block!r}, mixer={self.mixer!r})",
        )
        require_choice("ModelConfig.state_keep", self.state_keep, STATE_KEEP_CHOICES)
        require_real("ModelConfig.state_fraction", self.state_fraction, 0, 1)
        require(
            self.state_keep != "all" or self.state_fraction == 1,
            f"ModelConfig.state_fraction={self.state_fraction!r} must be 1 when state_keep='all'",
        )
        require_choice("ModelConfig.state_compute", self.state_compute, STATE_COMPUTE_CHOICES)
        require(
            self.state_compute == "all"
            or (self.state_keep == "last_in_place" and self.state_fraction > 0 and self.context_keep == "all"),
            f"ModelConfig.state_compute={self.state_compute!r} runs later loops on the carried tokens only; it needs "
            f"state_keep='last_in_place' with state_fraction > 0 and context_keep='all' (got state_keep="
            f"{self.state_keep!r}, state_fraction={self.state_fraction!r}, context_keep={self.context_keep!r})",
        )

    def check_prompt(self, n_points: int) -> None:
        """Raise `ValueError` if a prompt of `n_points` points (2P-1 tokens) does not fit."""
        require_int("n_points", n_points)
        n_tokens = 2 * n_points - 1
        require(
            n_tokens <= self.context,
            f"a prompt of n_points={n_points} has {n_tokens} tokens, more than "
            f"ModelConfig.context={self.context}; raise context to at least {n_tokens}",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The inverse of `to_dict`; fields missing from older records take their defaults, and
        old choice names (`RENAMED_VALUES`) are read as the current ones."""
        return cls(**current_names(values))


def check_fixed_point(config: ModelConfig, purpose: str = "a fixed-point solve") -> None:
    """Raise `ValueError` unless every loop of `config` applies the same map, so that it has a fixed
    point to solve for (`BaseLoopedTransformer.equilibrium`) and one Jacobian to penalise
    (`BaseLoopedTransformer.loop_jacobian`); `purpose` names what needs it in the message."""
    different = {
        "loop_stacks": (config.loop_stacks, 1),
        "context_keep": (config.context_keep, "all"),
        "state_keep": (config.state_keep, "all"),
        "loop_embedding": (config.loop_embedding, "none"),
    }
    wrong = [f"{field}={value!r} (needs {needed!r})" for field, (value, needed) in different.items() if value != needed]
    require(not wrong, f"{purpose} needs the same map at every loop; ModelConfig has " + ", ".join(wrong))


def check_loops(b: int, name: str = "b") -> None:
    """Raise `ValueError` unless the loop count `b` (or `name`, e.g. grad_window) is an integer >= 1."""
    require_int(name, b)


# ----------------------------------------------------------------------------- the model


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
        return self.positional(embedded) if self.config.pe_at == "prompt" else embedded  # [B, S, h]

    def loop_positions(self, e: torch.Tensor) -> torch.Tensor | None:  # [B, S, h] -> [B, S, h] or None
        """What `pe_at="loop"` adds to the stack's input every loop: the PE table, per token."""
        if self.config.pe_at != "loop":
            return None
        return self.positional(torch.zeros_like(e))  # [B, S, h]

    def read_out(self, state: torch.Tensor) -> torch.Tensor:  # [B, S, h] -> [B, P]
        x_positions = state[:, 0::2]  # [B, P, h]
        return F.linear(x_positions, self.readout.weight[0], self.readout.bias[0])  # [B, P]

    def states(self, tokens: torch.Tensor, b: int, grad_window: int | None = None) -> Iterator[torch.Tensor]:
        """Yield the state [B, S, h] after each of the b loops: the loop itself.

        Loops before the last `grad_window` run without gradient (the paper's truncated
        backpropagation); `None` keeps the gradient through every loop.
        """
        check_loops(b)
        if grad_window is not None:
            check_loops(grad_window, "grad_window")
        e = self.embed_prompt(tokens)  # [B, S, h]
        positions = self.loop_positions(e)  # None, or [B, S, h] added to the stack's input every loop
        loop_signal = self.loop_signal(b, e)  # None, or [b, h]: loop j's timestep signal
        first_with_grad = 0 if grad_window is None else max(0, b - grad_window)
        drop = self.config.context_compute == "drop"
        # per loop: None (every token) or, when dropping, the token indices to run [B, S'], else the kept points
        kept = (self.context_selection.kept_tokens if drop else self.context_selection.kept_points)(tokens, b)
        carried = self.state_selection.running_tokens(tokens, b)  # per loop: None or the carried tokens [B, n]
        state = self.injection.initial_state(e)  # [B, S, h]
        for loop in range(b):
            stack = self.stack_for(loop)
            if kept[loop] is not None and not drop:
                stack = partial(stack, allowed=attention_allowed(kept[loop], self.config.causal))  # [B, 1, S, S]
            with torch.set_grad_enabled(torch.is_grad_enabled() and loop >= first_with_grad):
                if loop > 0:  # the initial state is not carried from a loop, so it is left whole
                    state = self.state_selection.carried(state)  # [B, S, h]
                index = carried[loop] if carried[loop] is not None else kept[loop] if drop else None
                added = positions  # what the stack's input gets this loop, besides the injected state
                if loop_signal is not None:
                    signal = loop_signal[loop].expand_as(e)  # [B, S, h]
                    added = signal if added is None else added + signal
                state = on_tokens(index, self._loop_step(stack), state, e, added)  # [B, S, h]
            yield state

    def loop_signal(self, b: int, e: torch.Tensor) -> torch.Tensor | None:  # -> [b, h] or None
        """The loop-index embedding of loops 1..b (`loop_embedding`), or None."""
        if self.config.loop_embedding == "none":
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
        normalised = config.block == "gpt2" if config.final_norm is None else config.final_norm
        self.final_norm = nn.LayerNorm(config.hidden_dim) if normalised else nn.Identity()

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
