"""What a looped model is: `ModelConfig`, the flat list of its choices, and the component configs it is made of.

Owns `ModelConfig` (every architectural choice, as the flat fields that run records store, with old choice
names mapped to the current ones), the six component configs it composes, each frozen and validating its own
fields (`StackConfig`: the layers one loop applies; `InjectionConfig`: how the prompt enters each loop;
`PositionalConfig`: the positional encoding; `ContextConfig`: which examples each loop attends to;
`StateConfig`: what one loop hands to the next; `LoopConfig`: what changes from loop to loop), the choice
lists, `check_fixed_point` (whether every loop applies the same map) and `check_loops`. The model that these
configs describe is in `transformer.py`, which re-exports every public name of this module.

Why flat fields and component views: a run record stores `ModelConfig.to_dict()`, the flat dict of its fields,
and a re-run compares it with the spec it would write; records, checkpoints and notebooks build the config as
`ModelConfig(**flat_dict)`. So the flat fields are what `ModelConfig` stores, and each component config is a
view built from them on creation (`ModelConfig.stack_config`, ...). A rule between fields of one component
lives in that component's `__post_init__`; `ModelConfig.__post_init__` keeps only the two rules between
components. Every error names the `ModelConfig` field a user set, and what it allows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

from checks import is_real, require, require_choice, require_int, require_real

__all__ = [
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
    "StackConfig",
    "InjectionConfig",
    "PositionalConfig",
    "ContextConfig",
    "StateConfig",
    "LoopConfig",
    "ModelConfig",
    "check_loops",
    "check_fixed_point",
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

# The defaults that two "no effect" rules compare with (a value other than the default of a setting that
# cannot act is an error). `ModelConfig` uses the same constants, so the rule and the default cannot drift.
DEFAULT_EMA_ALPHA = 0.5
DEFAULT_PE_STD = 1.0

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


# ----------------------------------------------------------------------------- the component configs
# Each is built by `ModelConfig` from its flat fields (named in the docstring, `ModelConfig.<field>`),
# and each error names that flat field: it is the keyword the user wrote.


@dataclass(frozen=True)
class StackConfig:
    """The layers one loop applies (`LayerStack`): ModelConfig's n_layers, n_heads, hidden_dim, mlp_hidden,
    block, mixer, ssm_state, causal, final_norm and init, under the same names.

    block:     "laptev": out = x + MLP(LN2(x + Attn(LN1 x))), the Laptev study's residual;
               "gpt2": the standard pre-LN block, with a final LayerNorm closing the stack;
               "lstm": one unidirectional LSTM layer (input = hidden = hidden_dim, zero initial
               states on every call), so n_layers of them are the Aleksandr study's
               nn.LSTM(num_layers=L).
    mixer:     the token mixer inside a transformer layer: "attention", or "ssm", a Mamba-style
               selective state-space scan (`SelectiveSSM`) with ssm_state states per channel.
               LSTM and SSM are causal by construction: they need causal=True (and, a rule between
               components, context_keep="all": a key mask has no meaning for a recurrence).
    causal:    causal attention mask (True) or full bidirectional attention (False).
    final_norm: a LayerNorm closing every call of the stack, so that the state is normalised
               every loop. None: the block's own choice (GPT-2 closes with ln_f; the Laptev layer
               and the LSTM have none); True or False force it, so that only the normalisation
               changes between two models.
    init:      the initial weights. "torch": PyTorch's defaults (linear weights U(+-1/sqrt(fan_in)),
               std 1/sqrt(3 fan_in), about 0.10 at width 32; a learned PE table N(0, 1)).
               "gpt2": GPT-2's, as the paper's code gets them from Hugging Face's GPT2Model:
               inside the looped stacks and the learned PE table, weights N(0, 0.02), biases 0,
               and each residual projection (attention out, MLP out) N(0, 0.02 / sqrt(2 n_layers));
               the read-in and read-out keep PyTorch's defaults, as in the paper's code
               (`gpt2_init`). It needs attention layers.
    """

    n_layers: int
    n_heads: int
    hidden_dim: int
    mlp_hidden: int
    block: str
    mixer: str
    ssm_state: int
    causal: bool
    final_norm: bool | None
    init: str

    def __post_init__(self) -> None:
        for field in ("n_layers", "n_heads", "hidden_dim", "mlp_hidden", "ssm_state"):
            require_int(f"ModelConfig.{field}", getattr(self, field))
        require(
            self.hidden_dim % self.n_heads == 0,
            f"ModelConfig.hidden_dim={self.hidden_dim} must be divisible by ModelConfig.n_heads={self.n_heads}",
        )
        require_choice("ModelConfig.block", self.block, BLOCK_CHOICES)
        require_choice("ModelConfig.mixer", self.mixer, MIXER_CHOICES)
        require(
            self.block != "lstm" or self.mixer == "attention",
            f"ModelConfig.mixer={self.mixer!r} needs a transformer block, but block='lstm' has no mixer",
        )
        require(isinstance(self.causal, bool), f"ModelConfig.causal={self.causal!r} must be True or False")
        require(
            self.final_norm is None or isinstance(self.final_norm, bool),
            f"ModelConfig.final_norm={self.final_norm!r} must be None (the block's own), True or False",
        )
        require(
            self.causal or not self.recurrent,
            f"ModelConfig.causal=False is not allowed with {self.recurrent}, which is causal by construction",
        )
        require_choice("ModelConfig.init", self.init, INIT_CHOICES)
        require(
            self.init == "torch" or not self.recurrent,
            f"ModelConfig.init={self.init!r} is GPT-2's initialisation of attention layers; it needs "
            f"block 'laptev' or 'gpt2' and mixer 'attention' (got block={self.block!r}, mixer={self.mixer!r})",
        )

    @property
    def recurrent(self) -> str | None:
        """The setting that makes the stack a recurrence ("block='lstm'" or "mixer='ssm'"), None for attention."""
        return "block='lstm'" if self.block == "lstm" else "mixer='ssm'" if self.mixer == "ssm" else None

    @property
    def normalised(self) -> bool:
        """Whether a LayerNorm closes every call of the stack: `final_norm`, or the block's own choice."""
        return self.block == "gpt2" if self.final_norm is None else self.final_norm


@dataclass(frozen=True)
class InjectionConfig:
    """How the embedded prompt e enters each loop (see `Injection` subclasses): ModelConfig's injection
    (here `kind`) and ema_alpha, the moving average's a (fixed for "ema", the initial value for "ema_learned")."""

    kind: str
    ema_alpha: float

    def __post_init__(self) -> None:
        require_choice("ModelConfig.injection", self.kind, INJECTION_CHOICES)
        if self.kind == "ema":
            # A fixed a may be 0 (no recurrence); a learned one starts at logit(a), finite only inside (0, 1).
            require(
                is_real(self.ema_alpha) and 0 <= self.ema_alpha < 1,
                f"ModelConfig.ema_alpha={self.ema_alpha!r} must be a finite number in [0, 1)",
            )
        else:
            require_real("ModelConfig.ema_alpha", self.ema_alpha, 0, 1, strict=True)
        # A setting that can have no effect is an error: a report would describe it as if it had one.
        require(
            self.kind in ("ema", "ema_learned") or self.ema_alpha == DEFAULT_EMA_ALPHA,
            f"ModelConfig.ema_alpha={self.ema_alpha!r} has no effect with injection={self.kind!r}; "
            "it is the moving average's a for injection 'ema' or 'ema_learned'",
        )

    @property
    def learned_alpha(self) -> bool:
        """Whether the moving average's a is a parameter ("ema_learned")."""
        return self.kind == "ema_learned"


@dataclass(frozen=True)
class PositionalConfig:
    """The positional encoding (`PositionalEncoding`): ModelConfig's pe (here `kind`), pe_at (`at`), pe_std
    (`std`), and init, which decides how a learned table is drawn.

    kind:  "none" | "learned" (nn.Embedding(context, h)) | "sinusoidal" (1/10000^(2i/h))
           | "sinusoidal_laptev" (the Laptev study's frequencies 1/(ln 10000)^(2i/h)); added where `at` says.
    at:    "prompt": the PE is added once to the embedded prompt e, so it enters every loop through the
           injection (the Laptev study; this repository's default). "loop": it is added to the stack's
           input on every loop, after the injection, as GPT-2's backbone adds wpe inside every call of the
           paper's code. The two agree for additive injection, s + (x + p); they differ for the others: the
           paper's multiplicative rule is f(s * x + p), "prompt" gives f(s * (x + p)).
    std:   the learned table's initial standard deviation with init "torch": 1.0 is nn.Embedding's N(0, 1),
           GPT-2 uses 0.02 (drawn as N(0, 1) and scaled, so the rest of the initialisation is the same draw).
           Only for pe="learned" and init="torch" (GPT-2's initialisation fixes it at 0.02).
    """

    kind: str
    at: str
    std: float
    init: str

    def __post_init__(self) -> None:
        require_choice("ModelConfig.pe", self.kind, PE_CHOICES)
        require_choice("ModelConfig.pe_at", self.at, PE_AT_CHOICES)
        require(
            self.at == "prompt" or self.kind != "none",
            "ModelConfig.pe_at='loop' has no effect with pe='none'; leave it 'prompt'",
        )
        require_real("ModelConfig.pe_std", self.std, 0, None, strict=True)
        require(
            self.std == DEFAULT_PE_STD or (self.kind == "learned" and self.init == "torch"),
            f"ModelConfig.pe_std={self.std!r} has no effect with pe={self.kind!r}, init={self.init!r}; it is the "
            "learned table's initial std with init 'torch' (GPT-2's initialisation fixes it at 0.02)",
        )

    @property
    def per_loop(self) -> bool:
        """Whether the PE is added to the stack's input on every loop (pe_at "loop") rather than to e once."""
        return self.at == "loop"


@dataclass(frozen=True)
class ContextConfig:
    """Which in-context examples each loop may attend to (`ContextSelection`): ModelConfig's context_keep,
    context_n, context_cut_at, context_shrink and context_compute, here without the prefix.

    keep:    "all" (every loop sees the whole prompt) | "first" | "last" | "random" keeps `n` examples
             from loop `cut_at` on (1: before the first loop); shrink > 0 drops that many examples per
             loop instead, from all of them down to `n`. The query is always kept. "random_batch" is the
             Laptev study's own random cut: one draw of `n` examples for the whole batch, new for every
             batch, kept in the drawn (shuffled) order; it needs compute "drop". With shuffling, a point's
             prediction may use examples that came after it in the prompt, and with a cut after loop 1 its
             own label too, which those later tokens' loop-1 states have read (the query, run last, has no
             label to leak).
    compute: "mask": dropped examples stay in the sequence as keys no one may attend to (every token is
             still computed); "drop": the stack runs on the kept tokens only, gathered into a shorter
             sequence (`components.on_tokens`), which saves their compute. For kept tokens in prompt order
             the two give the same predictions.
    """

    keep: str
    n: int | None
    cut_at: int
    shrink: int
    compute: str

    def __post_init__(self) -> None:
        require_choice("ModelConfig.context_keep", self.keep, CONTEXT_KEEP_CHOICES)
        require_int("ModelConfig.context_shrink", self.shrink, minimum=0)
        if self.keep == "all":
            require(
                self.n is None and not self.shrink,
                "ModelConfig.context_n and context_shrink need context_keep in ('first', 'last', 'random'), "
                f"but context_keep='all' (got context_n={self.n!r}, context_shrink={self.shrink!r})",
            )
        else:
            require_int("ModelConfig.context_n", self.n)
        require_int("ModelConfig.context_cut_at", self.cut_at)
        require_choice("ModelConfig.context_compute", self.compute, CONTEXT_COMPUTE_CHOICES)
        require(
            self.compute == "mask" or self.keep != "all",
            f"ModelConfig.context_compute={self.compute!r} has no effect with context_keep='all' "
            "(nothing is dropped); leave it 'mask'",
        )
        require(
            self.keep != "random_batch" or self.compute == "drop",
            "ModelConfig.context_keep='random_batch' shuffles the kept examples, which a key mask cannot do; "
            "it needs context_compute='drop'",
        )

    @property
    def drops(self) -> bool:
        """Whether a loop runs on its kept tokens only (compute "drop") rather than masking the others."""
        return self.compute == "drop"


@dataclass(frozen=True)
class StateConfig:
    """How much of the state is carried into the next loop (`StateSelection`): ModelConfig's state_keep,
    state_fraction and state_compute, here without the prefix.

    keep, fraction: "all", or the last round(fraction * S) tokens, kept "last_in_place" (the Aleksandr
             study; the rest zeroed) or "last_shifted" to the front (the Murawiecki study). fraction 0
             carries nothing: every loop sees only e.
    compute: "all": every token runs every loop (the tokens not carried restart from 0 + e and stay keys
             for the others); "carried": loops after the first run the stack on the carried tokens only
             (`components.on_tokens`), which is the compute the carried state was meant to save, and
             predict only there. Needs keep "last_in_place" with fraction > 0 (and, a rule between
             components, context_keep "all").
    """

    keep: str
    fraction: float
    compute: str

    def __post_init__(self) -> None:
        require_choice("ModelConfig.state_keep", self.keep, STATE_KEEP_CHOICES)
        require_real("ModelConfig.state_fraction", self.fraction, 0, 1)
        require(
            self.keep != "all" or self.fraction == 1,
            f"ModelConfig.state_fraction={self.fraction!r} must be 1 when state_keep='all'",
        )
        require_choice("ModelConfig.state_compute", self.compute, STATE_COMPUTE_CHOICES)
        require(
            self.compute == "all" or (self.keep == "last_in_place" and self.fraction > 0),
            f"ModelConfig.state_compute={self.compute!r} runs later loops on the carried tokens only; it needs "
            f"state_keep='last_in_place' with state_fraction > 0 (got state_keep={self.keep!r}, "
            f"state_fraction={self.fraction!r})",
        )


@dataclass(frozen=True)
class LoopConfig:
    """What changes from one loop to the next besides the state: ModelConfig's loop_stacks (here `stacks`)
    and loop_embedding (`embedding`).

    stacks:    how many distinct stacks of n_layers layers the loops cycle through, one per loop: 1 is the
               looped model, 2 is the Murawiecki study's A->B (A, B, A, B, ...).
    embedding: "none" or "sinusoidal": a loop-index (timestep) signal added to the stack's input on every
               loop, the sinusoid of the loop's number (1, 2, ...; frequencies 1/10000^(2i/h)), as the
               Universal Transformer adds a timestep embedding (Dehghani et al. 2019); a sinusoid is defined
               at every loop count, so it extends to any b.
    """

    stacks: int
    embedding: str

    def __post_init__(self) -> None:
        require_int("ModelConfig.loop_stacks", self.stacks)
        require_choice("ModelConfig.loop_embedding", self.embedding, LOOP_EMBEDDING_CHOICES)

    @property
    def signal(self) -> bool:
        """Whether a loop-index signal is added to the stack's input."""
        return self.embedding != "none"


# ----------------------------------------------------------------------------- the model's config


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of a looped model, as flat fields. Invalid values raise `ValueError`.

    n_dims is the prompt's dimension and context the most tokens a prompt may have (the PE table's length);
    every other field belongs to one component config, which documents it and checks it:

        stack_config       `StackConfig`       n_layers, n_heads, hidden_dim, mlp_hidden, block, mixer,
                                               ssm_state, causal, final_norm, init
        injection_config   `InjectionConfig`   injection, ema_alpha
        positional_config  `PositionalConfig`  pe, pe_at, pe_std (and init)
        context_config     `ContextConfig`     context_keep, context_n, context_cut_at, context_shrink,
                                               context_compute
        state_config       `StateConfig`       state_keep, state_fraction, state_compute
        loop_config        `LoopConfig`        loop_stacks, loop_embedding

    Each component is built from these fields when the config is, and checks itself; the config then checks
    the two rules between components: a recurrent stack (LSTM or SSM) cannot mask keys, so it needs
    context_keep "all", and state_compute "carried" runs later loops on the carried tokens, which a context
    selection cannot also cut, so it needs context_keep "all" too.

    The flat fields are the stored form: `to_dict` is the flat dict a run record stores and a re-run compares
    with, and `ModelConfig(**values)` reads it back. Their defaults are what a record written before a field
    existed is read with, so none may change. Old choice names (`RENAMED_VALUES`, e.g. block="seed000") are
    accepted and replaced by the current ones, so `to_dict` always writes the current names.
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
    ema_alpha: float = DEFAULT_EMA_ALPHA
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
    pe_std: float = DEFAULT_PE_STD
    final_norm: bool | None = None
    loop_embedding: str = "none"

    def __post_init__(self) -> None:
        # Old choice names first, so that they pass validation and are stored under the new ones
        # (the dataclass is frozen, hence object.__setattr__).
        for field, value in current_names({field: getattr(self, field) for field in RENAMED_VALUES}).items():
            object.__setattr__(self, field, value)
        require_int("ModelConfig.n_dims", self.n_dims)
        require_int("ModelConfig.context", self.context)
        # Building each component checks its own fields, in this order.
        stack, _, _, context, state, _ = self.components
        require(
            context.keep == "all" or not stack.recurrent,
            f"ModelConfig.context_keep={context.keep!r} is not allowed with {stack.recurrent}: "
            "a recurrence cannot mask keys; use context_keep='all'",
        )
        require(
            state.compute == "all" or context.keep == "all",
            f"ModelConfig.state_compute={state.compute!r} runs later loops on the carried tokens only, which a "
            f"context selection cannot also cut; it needs context_keep='all' (got context_keep={context.keep!r})",
        )

    @property
    def components(
        self,
    ) -> tuple[StackConfig, InjectionConfig, PositionalConfig, ContextConfig, StateConfig, LoopConfig]:
        """The six component configs, in the order they are checked."""
        return (
            self.stack_config,
            self.injection_config,
            self.positional_config,
            self.context_config,
            self.state_config,
            self.loop_config,
        )

    # Each view is built once, on first use (`__post_init__` uses them all), from the flat fields: a frozen
    # dataclass keeps a cached_property in its instance dict, outside the fields that `to_dict` and `==` read.

    @cached_property
    def stack_config(self) -> StackConfig:
        """The layers one loop applies."""
        return StackConfig(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_dim=self.hidden_dim,
            mlp_hidden=self.mlp_hidden,
            block=self.block,
            mixer=self.mixer,
            ssm_state=self.ssm_state,
            causal=self.causal,
            final_norm=self.final_norm,
            init=self.init,
        )

    @cached_property
    def injection_config(self) -> InjectionConfig:
        """How the embedded prompt enters each loop."""
        return InjectionConfig(kind=self.injection, ema_alpha=self.ema_alpha)

    @cached_property
    def positional_config(self) -> PositionalConfig:
        """The positional encoding."""
        return PositionalConfig(kind=self.pe, at=self.pe_at, std=self.pe_std, init=self.init)

    @cached_property
    def context_config(self) -> ContextConfig:
        """Which in-context examples each loop attends to."""
        return ContextConfig(
            keep=self.context_keep,
            n=self.context_n,
            cut_at=self.context_cut_at,
            shrink=self.context_shrink,
            compute=self.context_compute,
        )

    @cached_property
    def state_config(self) -> StateConfig:
        """What one loop hands to the next."""
        return StateConfig(keep=self.state_keep, fraction=self.state_fraction, compute=self.state_compute)

    @cached_property
    def loop_config(self) -> LoopConfig:
        """What changes from loop to loop besides the state."""
        return LoopConfig(stacks=self.loop_stacks, embedding=self.loop_embedding)

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
