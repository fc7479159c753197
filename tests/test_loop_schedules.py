"""The loop-count schedules Experiment 12 crosses with the bounded states: the log-normal Poisson count of Geiping
et al. 2025 (its draws' mean against `TrainConfig.mean_loops`, the clamp to 1..b, repeatability with the seed), the
uniform count around b_train, and the truncated gradient window every drawn count respects."""

import math

import numpy as np
import pytest
import torch

from tasks import LinearRegression
from training import SingleStepper
from transformer import ModelConfig
from utils import TrainConfig, build_model


def draws(config: TrainConfig, steps: int) -> np.ndarray:
    return np.array([config.loops_at(step) for step in range(steps)])


@pytest.mark.parametrize("b, mean, sigma", [(20, 9, 0.5), (30, 9, 0.5), (6, 3, 1.0)])
def test_poisson_lognormal_counts_have_the_mean_the_schedule_states(b, mean, sigma):
    config = TrainConfig(steps=1, b=b, loops_random=("poisson_lognormal", mean, sigma))
    counts = draws(config, 20000)
    standard_error = counts.std() / math.sqrt(len(counts))
    assert abs(counts.mean() - config.mean_loops()) < 4 * standard_error
    assert counts.min() >= 1 and counts.max() <= b


def test_poisson_lognormal_counts_are_clamped_to_one_and_to_b():
    # a cap well inside the distribution: many steps at b, none above; and none below 1 (1 + a Poisson count)
    capped = TrainConfig(steps=1, b=10, loops_random=("poisson_lognormal", 9, 0.5))
    counts = draws(capped, 5000)
    assert counts.max() == 10 and (counts == 10).mean() > 0.3 and counts.min() >= 1
    assert capped.mean_loops() < 1 + 9  # the cap takes a part of the mean away
    assert abs(counts.mean() - capped.mean_loops()) < 4 * counts.std() / math.sqrt(len(counts))
    small = TrainConfig(steps=1, b=2, loops_random=("poisson_lognormal", 1, 0.5))
    assert set(draws(small, 2000)) == {1, 2}  # a Poisson count of 0 runs one loop
    assert TrainConfig(steps=1, b=1, loops_random=("poisson_lognormal", 1, 0.5)).mean_loops() == 1


def test_the_draws_repeat_with_the_seed_and_differ_between_seeds():
    config = TrainConfig(steps=1, b=20, seed=3, loops_random=("poisson_lognormal", 9, 0.5))
    assert np.array_equal(draws(config, 500), draws(TrainConfig(**{**config.to_dict()}), 500))
    other = TrainConfig(steps=1, b=20, seed=4, loops_random=("poisson_lognormal", 9, 0.5))
    assert not np.array_equal(draws(config, 500), draws(other, 500))


def test_mean_loops_of_every_schedule():
    assert TrainConfig(steps=1, b=10).mean_loops() == 10
    uniform = TrainConfig(steps=1, b=15, loops_random=("uniform", 5))
    assert uniform.mean_loops() == 10  # b uniform in 5..15, around b_train = 10
    counts = draws(uniform, 20000)
    assert set(counts) == set(range(5, 16)) and abs(counts.mean() - 10) < 4 * counts.std() / math.sqrt(len(counts))
    curriculum = TrainConfig(steps=12, b=4, loops_curriculum=(1, 3))  # 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4
    assert curriculum.mean_loops() == 2.5
    fixed_point = TrainConfig(steps=1, b=30, supervise="last", solver="fixed_point")
    assert fixed_point.mean_loops() == 30  # the solve's evaluation cap, the loops its validation runs


def test_every_drawn_count_backpropagates_through_its_last_grad_window_loops_only():
    """Training step t runs loops_at(t) loops; the gradient flows through the last min(count, grad_window) of them
    (the earlier ones run without gradient), as in Geiping et al.'s truncated backpropagation."""
    window = 3
    config = TrainConfig(steps=40, batch_size=4, b=12, n_points=5, eval_prompts=4, grad_window=window,
                         loops_random=("poisson_lognormal", 4, 0.8))
    model = build_model(ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=9), 0)
    calls: list[bool] = []
    model.stack.register_forward_hook(lambda module, inputs, output: calls.append(torch.is_grad_enabled()))
    stepper = SingleStepper(model, LinearRegression(2), config)
    counts = []
    for step in range(config.steps):
        calls.clear()
        stepper.step(step)
        count = config.loops_at(step)
        counts.append(count)
        with_gradient = min(count, window)
        assert calls == [False] * (count - with_gradient) + [True] * with_gradient, (step, count, calls)
    assert min(counts) < window < max(counts)  # both sides of the window were drawn
