"""Prompt layout and the task samplers."""

import pytest
import torch

from tasks import LinearRegression, build_prompt, task_from_dict
from utils import make_generator


def test_prompt_layout():
    xs = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    ys = torch.tensor([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    tokens = build_prompt(xs, ys)
    assert tokens.shape == (2, 5, 2)  # x1 y1 x2 y2 x3
    torch.testing.assert_close(tokens[:, 0::2], xs)
    torch.testing.assert_close(tokens[:, 1::2, 0], ys[:, :2])
    assert (tokens[:, 1::2, 1:] == 0).all()


def test_linear_regression_sampler_is_linear_and_seeded():
    task = LinearRegression(n_dims=6, x_mean=0.5, x_std=2.0)
    xs, ys = task.sample_xy(512, 20, make_generator(3, "train"))
    # ys are an exact linear function of xs, one w per prompt
    w = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution  # [B, d, 1]
    torch.testing.assert_close((xs @ w).squeeze(-1), ys, atol=1e-4, rtol=1e-4)
    assert xs.mean().item() == pytest.approx(0.5, abs=0.05)
    assert xs.std().item() == pytest.approx(2.0, abs=0.05)
    assert w.std().item() == pytest.approx(1.0, abs=0.1)
    again = task.sample_xy(512, 20, make_generator(3, "train"))
    assert torch.equal(again[0], xs) and torch.equal(again[1], ys)
    tokens, ys2 = task.sample(4, 20, make_generator(3, "train"))
    assert tokens.shape == (4, 39, 6) and ys2.shape == (4, 20)


def test_task_round_trip_and_errors():
    task = LinearRegression(n_dims=3, x_std=2.0)
    assert task_from_dict(task.to_dict()) == task
    with pytest.raises(ValueError, match="LinearRegression.n_dims=0 must be an integer >= 1"):
        LinearRegression(n_dims=0)
    with pytest.raises(ValueError, match="LinearRegression.x_std=-1 must be >= 0"):
        LinearRegression(n_dims=2, x_std=-1)
    with pytest.raises(ValueError, match="n_points=0 must be an integer >= 1"):
        task.sample(2, 0)
    with pytest.raises(ValueError, match="task name 'Nope' is not known"):
        task_from_dict({"name": "Nope"})
