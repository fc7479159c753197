"""Adaptive halting at inference (evaluation.loop_trace, evaluation.halting): each prompt stops
once its state stops moving."""

import re

import pytest
import torch

from tasks import LinearRegression
from transformer import ModelConfig
from utils import build_model, halting, loop_trace, make_generator, state_updates

MODEL = ModelConfig(n_dims=4, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23, final_norm=True)


def trace(b=12, batch=6):
    model = build_model(MODEL, seed=3)
    tokens, _ = LinearRegression(4).sample(batch, 12, make_generator(0, "train"))
    return model, tokens, loop_trace(model, tokens, b, chunk=4)


def test_loop_trace_is_the_per_prompt_view_of_state_updates_and_the_model():
    model, tokens, traced = trace()
    assert traced["updates"].shape == (12, 6) and traced["predictions"].shape == (12, 6)
    states = [torch.zeros(6, 23, 16)] + [s.detach() for s in model.states(tokens, 12)]  # s_0 = 0, then loops 1..12
    by_hand = torch.stack(
        [
            (new - old).flatten(1).norm(dim=1) / new.flatten(1).norm(dim=1)
            for old, new in zip(states, states[1:], strict=False)
        ]
    )  # [b, B]
    torch.testing.assert_close(traced["updates"], by_hand)
    torch.testing.assert_close(traced["updates"].mean(1), state_updates(model, tokens, 12))
    torch.testing.assert_close(traced["predictions"], model(tokens, 12)[:, :, -1].detach())
    torch.testing.assert_close(traced["updates"][0], torch.ones(6))


def test_halting_stops_at_the_first_small_update_and_never_before_loop_two():
    traced = {
        "updates": torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.05, 0.2], [0.01, 0.2, 0.3], [0.001, 0.001, 0.3]]),
        "predictions": torch.arange(12.0).view(4, 3),
    }
    loops, predictions = halting(traced, 0.1)
    assert loops.tolist() == [3, 2, 4]  # the third prompt never goes below: it runs every traced loop
    assert predictions.tolist() == [6.0, 4.0, 11.0]
    assert halting(traced, 0.0)[0].tolist() == [4, 4, 4] and halting(traced, 2.0)[0].tolist() == [2, 2, 2]


def test_a_smaller_tolerance_never_halts_earlier():
    _, _, traced = trace()
    used = [halting(traced, tolerance)[0] for tolerance in (0.3, 0.1, 0.03, 0.01, 0.0)]
    for looser, tighter in zip(used, used[1:], strict=False):
        assert (tighter >= looser).all()
    assert (used[-1] == 12).all()


def test_halting_errors():
    _, _, traced = trace(b=3, batch=2)
    with pytest.raises(ValueError, match=re.escape("halting tolerance=-0.1 must be a finite number >= 0")):
        halting(traced, -0.1)
