"""The model: shapes, causality, injection semantics, variants and config errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import components
import transformer
from tasks import LinearRegression
from transformer import (
    BLOCK_CHOICES,
    BLOCKS,
    INJECTION_CHOICES,
    INJECTIONS,
    MIXER_CHOICES,
    MIXERS,
    PE_CHOICES,
    RENAMED_VALUES,
    BaseLoopedTransformer,
    LaptevLayer,
    ModelConfig,
    build_block,
    build_injection,
    build_mixer,
    count_parameters,
    sinusoidal_table,
)
from utils import build_model, make_generator

SMALL = dict(n_dims=4, n_layers=2, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23)


def prompts(batch=3, n_points=12, n_dims=4, seed=0):
    return LinearRegression(n_dims).sample(batch, n_points, make_generator(seed, "train"))


CONTEXT_VARIANTS = [
    dict(context_keep=keep, context_n=5, context_cut_at=cut_at, context_shrink=shrink)
    for keep in ("first", "last", "random")
    for cut_at, shrink in ((1, 0), (2, 0), (2, 3))
]


def all_variants():
    for pe in PE_CHOICES:
        for injection in INJECTION_CHOICES:
            for block in BLOCK_CHOICES:
                yield ModelConfig(**SMALL, pe=pe, injection=injection, block=block)
    for context in CONTEXT_VARIANTS:
        yield ModelConfig(**SMALL, pe="learned", **context)
        yield ModelConfig(**SMALL, pe="learned", **context, context_compute="drop")
    for injection in ("add", "multiplicative", "ema", "each_layer"):
        yield ModelConfig(**SMALL, pe="learned", injection=injection, pe_at="loop")
    for block in ("laptev", "gpt2"):
        yield ModelConfig(**SMALL, pe="learned", pe_std=0.02, block=block, final_norm=block == "laptev")
    yield ModelConfig(**SMALL, pe="learned", loop_embedding="sinusoidal", final_norm=True)
    for fraction in (0.0, 0.3, 1.0):
        yield ModelConfig(**SMALL, pe="learned", state_keep="last_in_place", state_fraction=fraction)
    yield ModelConfig(**SMALL, pe="learned", state_keep="last_in_place", state_fraction=0.3, state_compute="carried")
    for injection in ("add", "each_layer", "ema"):
        yield ModelConfig(**SMALL, pe="learned", injection=injection, mixer="ssm", ssm_state=4)
    for block in BLOCK_CHOICES:
        yield ModelConfig(**SMALL, pe="learned", block=block, loop_stacks=2)


def variant_id(config):
    name = f"{config.pe}-{config.injection}-{config.block}"
    if config.mixer != "attention":
        name += f"-{config.mixer}"
    if config.loop_stacks > 1:
        name += f"-stacks{config.loop_stacks}"
    if config.state_keep != "all":
        name += f"-{config.state_keep}{config.state_fraction}-{config.state_compute}"
    if config.context_keep != "all":
        name += f"-{config.context_keep}{config.context_n}-cut{config.context_cut_at}-shrink{config.context_shrink}"
        name += f"-{config.context_compute}"
    if config.pe_at != "prompt":
        name += f"-pe_at_{config.pe_at}"
    if config.loop_embedding != "none":
        name += f"-loop_embedding_{config.loop_embedding}"
    if config.pe_std != 1.0 or config.final_norm is not None:
        name += f"-pe_std{config.pe_std}-final_norm{config.final_norm}"
    return name


@pytest.mark.parametrize("config", list(all_variants()), ids=variant_id)
def test_output_shape_and_causality(config):
    """[b, B, P] out; perturbing any later token (x or y) never changes an earlier prediction."""
    model = build_model(config, seed=1).eval()
    tokens, _ = prompts()
    b = 3
    preds = model(tokens, b)
    predicted = model.predicted_points(tokens, b)  # None, or bool [b, B, P]
    assert preds.shape == (b, 3, 12)
    n_tokens = tokens.shape[1]
    for position in range(1, n_tokens):
        perturbed = tokens.clone()
        perturbed[:, position] += torch.randn_like(perturbed[:, position]) * 3
        changed = model(perturbed, b)
        # Predictions are read at x positions 0, 2, 4, ...: point i sits at token 2i.
        earlier_points = [i for i in range(12) if 2 * i < position]
        torch.testing.assert_close(changed[:, :, earlier_points], preds[:, :, earlier_points], rtol=0, atol=1e-6)
        # The perturbed token's own prediction (if it is an x) must be able to change, wherever it
        # is predicted (a dropped token that never runs keeps its initial state).
        if position % 2 == 0:
            point = position // 2
            where = (
                torch.ones_like(preds[:, :, point], dtype=torch.bool) if predicted is None else predicted[:, :, point]
            )
            if where.any():
                assert not torch.allclose(changed[:, :, point][where], preds[:, :, point][where])


def test_non_causal_model_sees_the_future():
    model = build_model(ModelConfig(**SMALL, causal=False), seed=1).eval()
    tokens, _ = prompts()
    perturbed = tokens.clone()
    perturbed[:, -1] += 1.0
    assert not torch.allclose(model(tokens, 2)[:, :, 0], model(perturbed, 2)[:, :, 0])


def test_add_injection_b1_is_one_block_pass_on_the_embedded_prompt():
    model = build_model(ModelConfig(**SMALL), seed=2).eval()
    tokens, _ = prompts()
    e = model.embed(tokens)
    expected = model.read_out(model.stack(torch.zeros_like(e) + e))
    torch.testing.assert_close(model(tokens, 1)[0], expected)


def test_add_injection_adds_the_prompt_every_loop():
    """Loop j = stack(state_{j-1} + e), with the same shared stack every time."""
    model = build_model(ModelConfig(**SMALL, pe="learned"), seed=3).eval()
    tokens, _ = prompts()
    e = model.embed_prompt(tokens)
    state = torch.zeros_like(e)
    expected = []
    for _ in range(4):
        state = model.stack(state + e)
        expected.append(model.read_out(state))
    torch.testing.assert_close(model(tokens, 4), torch.stack(expected))


def test_injection_variants_follow_their_rules():
    tokens, _ = prompts()
    for injection in ("none", "linear_add", "linear_cat", "each_layer"):
        model = build_model(ModelConfig(**SMALL, injection=injection), seed=4).eval()
        e = model.embed_prompt(tokens)
        stack = model.stack
        if injection == "none":
            state = stack(stack(e))
        elif injection == "linear_add":
            mix = model.injection.mix
            state = mix(stack(mix(stack(e) + e)) + e)
        elif injection == "linear_cat":
            mix = model.injection.mix
            first = mix(torch.cat([stack(e), e], -1))
            state = mix(torch.cat([stack(first), e], -1))
        else:
            state = torch.zeros_like(e)
            for _ in range(2):
                for layer in stack.layers:
                    state = layer(state + e)
        torch.testing.assert_close(model(tokens, 2)[-1], model.read_out(state), msg=injection)


def test_laptev_layer_residual_quirk():
    """The Laptev study's layer: the attention output only feeds the MLP, never the residual."""
    model = build_model(ModelConfig(**SMALL), seed=5).eval()
    layer = model.stack.layers[0]
    x = torch.randn(2, 7, 16)
    expected = x + layer.mlp(layer.ln2(x + layer.attn(layer.ln1(x))))
    torch.testing.assert_close(layer(x), expected)


def test_gpt2_block_is_standard_pre_ln():
    model = build_model(ModelConfig(**SMALL, block="gpt2"), seed=5).eval()
    layer = model.stack.layers[0]
    x = torch.randn(2, 7, 16)
    h = x + layer.attn(layer.ln1(x))
    torch.testing.assert_close(layer(x), h + layer.mlp(layer.ln2(h)))


def test_attention_matches_explicit_softmax():
    model = build_model(ModelConfig(**SMALL), seed=6).eval()
    attn = model.stack.layers[0].attn
    x = torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(attn(x), attn.proj(out))


def test_sinusoidal_frequencies_standard_and_laptev():
    standard = sinusoidal_table(50, 16, 10000.0)
    # channel 2i = sin(pos / 10000^(2i/16)); check channel 2 (i = 1) at position 7
    assert standard[7, 2].item() == pytest.approx(torch.sin(torch.tensor(7 / 10000 ** (2 / 16))).item(), abs=1e-6)
    model = build_model(ModelConfig(**SMALL, pe="sinusoidal_laptev"), seed=0)
    slowest = 1 / torch.log(torch.tensor(10000.0)) ** (14 / 16)
    assert model.positional.fixed[1, 14].item() == pytest.approx(torch.sin(slowest).item(), abs=1e-6)


def test_learned_pe_parameter_count_matches_study():
    small = dict(n_dims=8, n_layers=2, n_heads=4, hidden_dim=64, mlp_hidden=256, context=127)
    assert count_parameters(BaseLoopedTransformer(ModelConfig(**small))) == 101_064
    assert count_parameters(BaseLoopedTransformer(ModelConfig(**small, pe="learned"))) == 109_192


def test_grad_window_stops_gradient_before_the_window():
    """Loops before the last grad_window carry no gradient; values equal the full run's."""
    model = build_model(ModelConfig(**SMALL), seed=7)
    tokens, _ = prompts()
    preds = model(tokens, 5, grad_window=2)  # loops 1-3 without gradient, 4-5 with
    torch.testing.assert_close(preds.detach(), model(tokens, 5).detach())
    stack_params = list(model.stack.parameters())
    outside = torch.autograd.grad(preds[2].sum(), stack_params, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in outside)
    inside = torch.autograd.grad(preds[3].sum(), stack_params, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in inside)


def test_build_model_is_independent_of_global_rng():
    config = ModelConfig(**SMALL)
    torch.manual_seed(0)
    first = build_model(config, seed=11)
    torch.manual_seed(999)
    torch.randn(100)
    second = build_model(config, seed=11)
    for a, b in zip(first.parameters(), second.parameters(), strict=False):
        assert torch.equal(a, b)
    third = build_model(config, seed=12)
    assert not torch.equal(next(first.parameters()), next(third.parameters()))


@pytest.mark.parametrize("block", ["laptev", "gpt2"])
def test_gpt2_initialisation(block):
    """0.02 inside the looped stack and the PE table, 0.02 / sqrt(2 n_layers) on the residual
    projections, biases 0; the read-in and read-out are PyTorch's, as with init='torch'."""
    values = {**SMALL, "n_layers": 2, "hidden_dim": 64, "mlp_hidden": 256, "pe": "learned", "block": block}
    gpt2 = build_model(ModelConfig(**values, init="gpt2"), seed=3)
    default = build_model(ModelConfig(**values), seed=3)
    assert torch.equal(gpt2.embed.weight, default.embed.weight) and torch.equal(
        gpt2.readout.weight, default.readout.weight
    )
    residual = 0.02 / 2  # sqrt(2 * 2 layers)
    for layer in gpt2.stack.layers:
        assert layer.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert layer.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert layer.attn.proj.weight.std().item() == pytest.approx(residual, rel=0.1)
        assert layer.mlp[2].weight.std().item() == pytest.approx(residual, rel=0.05)
        assert not layer.attn.qkv.bias.any() and not layer.mlp[2].bias.any()
    assert gpt2.positional.table.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert default.positional.table.weight.std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding's N(0, 1)
    assert default.stack.layers[0].mlp[0].weight.std().item() == pytest.approx(1 / (3 * 64) ** 0.5, rel=0.05)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_dim=10, n_heads=4), "hidden_dim=10 must be divisible by ModelConfig.n_heads=4"),
        (dict(pe="rotary"), "ModelConfig.pe='rotary' is not allowed; choose one of"),
        (dict(injection="mul"), "ModelConfig.injection='mul' is not allowed; choose one of"),
        (dict(block="rnn"), "ModelConfig.block='rnn' is not allowed; choose one of"),
        (dict(n_layers=0), "ModelConfig.n_layers=0 must be an integer >= 1"),
        (dict(context=2.5), "ModelConfig.context=2.5 must be an integer >= 1"),
        (dict(causal="yes"), "ModelConfig.causal='yes' must be True or False"),
        (dict(n_heads=True), "ModelConfig.n_heads=True must be an integer >= 1"),
        (dict(pe=["learned"]), "ModelConfig.pe=['learned'] is not allowed; choose one of"),
        (dict(ema_alpha="0.5"), "ModelConfig.ema_alpha='0.5' must be a finite number in (0, 1)"),
        (dict(injection="ema", ema_alpha=float("nan")), "ModelConfig.ema_alpha=nan must be a finite number in [0, 1)"),
        (dict(init="xavier"), "ModelConfig.init='xavier' is not allowed; choose one of ('torch', 'gpt2')"),
        (dict(init="gpt2", block="lstm"), "ModelConfig.init='gpt2' is GPT-2's initialisation of attention layers"),
        (dict(init="gpt2", mixer="ssm"), "it needs block 'laptev' or 'gpt2' and mixer 'attention'"),
    ],
)
def test_model_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**{**SMALL, **overrides})


def test_context_too_short_and_bad_b_and_bad_tokens():
    config = ModelConfig(**{**SMALL, "context": 21})
    with pytest.raises(ValueError, match="n_points=12 has 23 tokens, more than ModelConfig.context=21"):
        config.check_prompt(12)
    with pytest.raises(ValueError, match="n_points=0 must be an integer >= 1"):
        config.check_prompt(0)
    model = build_model(config, seed=0)
    tokens, _ = prompts()
    with pytest.raises(ValueError, match="tokens have 23 positions, more than ModelConfig.context=21"):
        model(tokens, 1)
    model = build_model(ModelConfig(**SMALL), seed=0)
    for bad_b in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"b=.* must be an integer >= 1"):
            model(tokens, bad_b)
    with pytest.raises(ValueError, match="grad_window=0 must be an integer >= 1"):
        model(tokens, 2, grad_window=0)
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, seq, n_dims=4\]"):
        model(tokens[..., :3], 1)


# ----------------------------------------------------------------------------- names and registries


def test_every_choice_has_a_class_and_every_class_a_choice():
    assert set(INJECTIONS) == set(INJECTION_CHOICES)
    assert set(BLOCKS) == set(BLOCK_CHOICES)
    assert set(MIXERS) == set(MIXER_CHOICES)


def test_build_functions_pick_the_registered_class():
    for injection in INJECTION_CHOICES:
        config = ModelConfig(**SMALL, injection=injection)
        assert type(build_injection(config)) is INJECTIONS[injection]
    for block in BLOCK_CHOICES:
        assert type(build_block(ModelConfig(**SMALL, block=block))) is BLOCKS[block]
    for mixer in MIXER_CHOICES:
        assert type(build_mixer(ModelConfig(**SMALL, mixer=mixer))) is MIXERS[mixer]
    assert type(build_block(ModelConfig(**SMALL))) is LaptevLayer  # the default block


@pytest.mark.parametrize(
    "field, old, new", [(field, old, new) for field, names in RENAMED_VALUES.items() for old, new in names.items()]
)
def test_old_choice_names_are_read_as_the_new_ones(field, old, new):
    """Records and notebooks written before a rename still load, and save the current name."""
    assert new in {"block": BLOCK_CHOICES, "pe": PE_CHOICES}[field]
    assert old not in {"block": BLOCK_CHOICES, "pe": PE_CHOICES}[field]
    direct = ModelConfig(**SMALL, **{field: old})
    loaded = ModelConfig.from_dict({**ModelConfig(**SMALL).to_dict(), field: old})
    for config in (direct, loaded):
        assert getattr(config, field) == new and config.to_dict()[field] == new
        assert config == ModelConfig(**SMALL, **{field: new})
    # The same parameters and outputs as under the new name.
    tokens, _ = prompts()
    torch.testing.assert_close(
        build_model(direct, seed=3)(tokens, 2), build_model(ModelConfig(**SMALL, **{field: new}), seed=3)(tokens, 2)
    )


def test_the_renames_are_the_three_studies():
    assert RENAMED_VALUES == {"block": {"seed000": "laptev"}, "pe": {"sinusoidal_seed000": "sinusoidal_laptev"}}
    assert ModelConfig(n_dims=4).block == "laptev"


def test_transformer_reexports_the_components():
    """Every public name of components.py is importable from transformer, as before the split."""
    defined_here = [
        name
        for name, value in vars(components).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == "components"
    ]
    assert sorted(defined_here) == sorted(components.__all__)
    for name in components.__all__:
        assert getattr(transformer, name) is getattr(components, name), name
        assert name in transformer.__all__, name
    assert all(hasattr(transformer, name) for name in transformer.__all__)


def test_components_does_not_import_transformer():
    """Imports run one way: transformer imports components, never the reverse (at run time)."""
    code = "import sys, components; assert 'transformer' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_each_loop_runs_from_its_plan():
    tokens, _ = prompts()
    plain = build_model(ModelConfig(**SMALL), seed=0)
    e = plain.embed_prompt(tokens)  # [B, S, h]
    plans = list(plain.plans(tokens, e, 4, grad_window=2))
    assert [p.carry for p in plans] == [False, True, True, True]  # the initial state is not carried from a loop
    assert [p.grad for p in plans] == [False, False, True, True]
    assert all(p.tokens is None and p.added is None and p.stack is plain.stack for p in plans)
    varied = ModelConfig(
        **SMALL, loop_stacks=2, pe="learned", pe_at="loop", loop_embedding="sinusoidal",
        context_keep="first", context_n=3, context_compute="drop",
    )
    model = build_model(varied, seed=0)
    e = model.embed_prompt(tokens)  # [B, S, h]
    plans = list(model.plans(tokens, e, 3))
    assert [p.stack for p in plans] == [model.stack, model.other_stacks[0], model.stack]
    assert plans[0].tokens is None and plans[1].tokens.shape == (tokens.shape[0], 2 * 3 + 1)  # 3 examples, the query
    signal = model.loop_signal(3, e)  # [b, h]
    positions = model.loop_positions(e)  # [B, S, h]
    assert all(torch.equal(p.added, positions + signal[loop]) for loop, p in enumerate(plans))
