"""What is looped (Experiment 7): stacks of distinct layers, A->B alternation, the LSTM layer,
the selective state-space mixer, and the per-loop FLOP count used to compare them."""

import math
import re

import pytest
import torch
from torch import nn

from tasks import LinearRegression
from transformer import ModelConfig, SelectiveSSM, count_parameters, flops_per_loop
from utils import TrainConfig, build_model, make_generator, train

SMALL = dict(n_dims=4, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23)


def prompts(batch=3, n_points=12, n_dims=4, seed=0):
    return LinearRegression(n_dims).sample(batch, n_points, make_generator(seed, "train"))


# ----------------------------------------------------------------------------- A->B


def test_a_to_b_with_identical_weights_is_the_looped_model():
    tokens, _ = prompts()
    a_to_b = build_model(ModelConfig(**SMALL, loop_stacks=2), seed=1).eval()
    a_to_b.other_stacks[0].load_state_dict(a_to_b.stack.state_dict())  # B := A
    looped = build_model(ModelConfig(**SMALL), seed=2).eval()
    missing, unexpected = looped.load_state_dict(a_to_b.state_dict(), strict=False)
    assert not missing and all(key.startswith("other_stacks.") for key in unexpected)
    torch.testing.assert_close(a_to_b(tokens, 5), looped(tokens, 5), rtol=0, atol=0)


def test_a_to_b_alternates_one_stack_per_loop():
    tokens, _ = prompts()
    model = build_model(ModelConfig(**SMALL, loop_stacks=2), seed=1).eval()
    a, b = model.stack, model.other_stacks[0]
    e = model.embed_prompt(tokens)
    state, expected = torch.zeros_like(e), []
    for stack in (a, b, a, b, a):  # add injection: s <- stack(s + e)
        state = stack(state + e)
        expected.append(model.read_out(state))
    torch.testing.assert_close(model(tokens, 5), torch.stack(expected))
    # A and B are different layers: swapping them changes the output.
    swapped = build_model(ModelConfig(**SMALL, loop_stacks=2), seed=1).eval()
    swapped.stack.load_state_dict(b.state_dict())
    swapped.other_stacks[0].load_state_dict(a.state_dict())
    assert not torch.allclose(swapped(tokens, 2), model(tokens, 2))


def test_a_to_b_has_the_parameters_of_two_stacks_and_the_compute_of_one():
    one = build_model(ModelConfig(**SMALL), seed=1)
    two = build_model(ModelConfig(**SMALL, loop_stacks=2), seed=1)
    assert count_parameters(two) == count_parameters(one) + count_parameters(one.stack)
    assert flops_per_loop(two, 12) == flops_per_loop(one, 12)


# ----------------------------------------------------------------------------- LSTM


def test_lstm_layers_are_the_aleksandr_studys_multilayer_lstm():
    """n_layers LSTM layers in a stack compute nn.LSTM(h, h, num_layers=n_layers) from zero states."""
    model = build_model(ModelConfig(**{**SMALL, "n_layers": 3}, block="lstm"), seed=1).eval()
    reference = nn.LSTM(16, 16, num_layers=3, batch_first=True)
    with torch.no_grad():
        for index, layer in enumerate(model.stack.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{name}_l{index}").copy_(getattr(layer.lstm, f"{name}_l0"))
    x = torch.randn(3, 23, 16)
    torch.testing.assert_close(model.stack(x), reference(x)[0])
    # No state survives between calls: a second call on the same input gives the same output.
    torch.testing.assert_close(model.stack(x), model.stack(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- selective SSM


def closed_form_scan(decay, drive, c_out):
    """y_t = sum_{s <= t} C_t . (prod_{s < r <= t} decay_r) drive_s, in float64, no recurrence."""
    decay, drive, c_out = decay.double(), drive.double(), c_out.double()
    seq = decay.shape[1]
    ys = []
    for t in range(seq):
        h = torch.zeros_like(drive[:, 0])
        for s in range(t + 1):
            product = decay[:, s + 1 : t + 1].prod(1) if s < t else torch.ones_like(h)
            h = h + product * drive[:, s]
        ys.append((h * c_out[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1)


def test_ssm_scan_matches_the_closed_form_of_its_recurrence():
    torch.manual_seed(0)
    ssm = SelectiveSSM(hidden_dim=8, d_state=4)
    x = torch.randn(2, 7, 8)
    # The module's own projections, then the scan written as a sum instead of a recurrence.
    u, gate, decay, drive, c_out = ssm.selection(x)
    assert ((decay > 0) & (decay < 1)).all()  # the recurrence is a contraction: it cannot blow up
    y = closed_form_scan(decay, drive, c_out).float() + u * ssm.D
    expected = ssm.out_proj(y * torch.nn.functional.silu(gate))
    torch.testing.assert_close(ssm(x), expected, rtol=1e-5, atol=1e-6)


def test_ssm_mixer_has_about_the_parameters_of_attention():
    hidden = dict(n_dims=4, n_heads=4, hidden_dim=32, mlp_hidden=128, context=23)
    attention = count_parameters(build_model(ModelConfig(**hidden), 0).stack.layers[0].attn)
    ssm = count_parameters(build_model(ModelConfig(**hidden, mixer="ssm", ssm_state=8), 0).stack.layers[0].attn)
    assert abs(ssm - attention) / attention < 0.05


def test_looped_ssm_trains_without_nan():
    """The Murawiecki study's SSM gave NaN everywhere; this one trains at a high learning rate and 6 loops."""
    model = build_model(ModelConfig(**SMALL, mixer="ssm", ssm_state=8), seed=3)
    config = TrainConfig(steps=40, batch_size=16, lr=1e-2, b=6, n_points=12, eval_prompts=32)
    result = train(model, LinearRegression(4), config, progress=False)
    assert result.status == "finished"
    assert all(math.isfinite(loss) for loss in result.loss)
    assert result.loss[-1] < result.loss[0]


# ----------------------------------------------------------------------------- compute and errors


def test_flops_per_loop_follow_the_layer_formulas():
    h, mlp, n_tokens = 32, 128, 23
    base = dict(n_dims=4, n_heads=4, hidden_dim=h, mlp_hidden=mlp, context=23)
    transformer_layer = n_tokens * (2 * h * 3 * h + 2 * h * h + 2 * 2 * h * mlp) + 4 * n_tokens**2 * h
    for layers in (1, 2):
        model = build_model(ModelConfig(**base, n_layers=layers), 0)
        assert flops_per_loop(model, 12) == layers * transformer_layer
    lstm = build_model(ModelConfig(**base, n_layers=3, block="lstm"), 0)
    assert flops_per_loop(lstm, 12) == 3 * 16 * h * h * n_tokens


def test_flops_per_loop_count_the_ssm_scan_once():
    """The scan is invisible to the matrix-product counter, so it is added by hand, once per layer."""
    from torch.utils.flop_counter import FlopCounterMode

    h, n_state, n_tokens = 32, 8, 23
    ssm = build_model(
        ModelConfig(
            n_dims=4, n_heads=4, hidden_dim=h, mlp_hidden=128, context=23, n_layers=2, mixer="ssm", ssm_state=n_state
        ),
        0,
    )
    decay, drive = torch.rand(1, n_tokens, h, n_state), torch.randn(1, n_tokens, h, n_state)
    with FlopCounterMode(display=False) as counter:
        SelectiveSSM.scan(decay, drive, torch.randn(1, n_tokens, n_state))
    assert counter.get_total_flops() == 0
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ssm.stack_for(0)(torch.zeros(1, n_tokens, h))
    assert flops_per_loop(ssm, 12) == counter.get_total_flops() + 2 * 7 * n_tokens * h * n_state


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block="lstm", causal=False), "ModelConfig.causal=False is not allowed with block='lstm'"),
        (dict(mixer="ssm", causal=False), "ModelConfig.causal=False is not allowed with mixer='ssm'"),
        (dict(mixer="ssm", context_keep="first", context_n=3), "ModelConfig.context_keep='first' is not allowed"),
        (dict(block="lstm", mixer="ssm"), "ModelConfig.mixer='ssm' needs a transformer block"),
        (dict(mixer="mamba"), "ModelConfig.mixer='mamba' is not allowed; choose one of"),
        (dict(loop_stacks=0), "ModelConfig.loop_stacks=0 must be an integer >= 1"),
        (dict(mixer="ssm", ssm_state=0), "ModelConfig.ssm_state=0 must be an integer >= 1"),
    ],
)
def test_block_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**{**SMALL, **overrides})
