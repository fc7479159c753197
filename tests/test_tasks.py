"""Prompt layout, the linear-regression sampler and the classical baselines."""

import pytest
import torch

from baselines import averaging, least_squares, nearest_neighbours, ridge
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


def test_least_squares_exact_once_examples_reach_n_dims():
    task = LinearRegression(n_dims=5)
    xs, ys = task.sample_xy(64, 12, make_generator(0, "validation"))
    preds = least_squares(xs, ys)
    assert (preds[:, 0] == 0).all()
    errors = (preds - ys).abs()
    assert errors[:, 5:].max() < 1e-4  # 5 or more examples: exact
    assert errors[:, 1:5].mean() > 0.1  # fewer: underdetermined


def test_baselines_use_only_the_prefix():
    task = LinearRegression(n_dims=3)
    xs, ys = task.sample_xy(8, 10, make_generator(1, "validation"))
    for estimator in (least_squares, ridge, averaging, nearest_neighbours):
        preds = estimator(xs, ys)
        changed_ys = ys.clone()
        changed_ys[:, 6:] += 100.0  # the answers at and after position 6 are hidden from 0..6
        changed = estimator(xs, changed_ys)
        torch.testing.assert_close(changed[:, :7], preds[:, :7], msg=estimator.__name__)


def test_ridge_averaging_and_knn_values():
    xs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])
    ys = torch.tensor([[2.0, 3.0, 5.0, 4.0]])
    # averaging at position 2: w = mean(y_j x_j) = ([2, 0] + [0, 3]) / 2 = [1, 1.5]
    assert averaging(xs, ys)[0, 2].item() == pytest.approx(2.5)
    # ridge at position 2, alpha 1: (I + I)^-1 [2, 3] = [1, 1.5]
    assert ridge(xs, ys, alpha=1.0)[0, 2].item() == pytest.approx(2.5)
    # 1-NN at position 3 (x = [2, 0]): nearest earlier x is [1, 0] with y = 2
    assert nearest_neighbours(xs, ys, k=1)[0, 3].item() == pytest.approx(2.0)
    # 3-NN at position 3 averages all three earlier answers
    assert nearest_neighbours(xs, ys, k=3)[0, 3].item() == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="ridge alpha=0 must be > 0"):
        ridge(xs, ys, alpha=0)
    with pytest.raises(ValueError, match="nearest_neighbours k=0 must be an integer >= 1"):
        nearest_neighbours(xs, ys, k=0)
