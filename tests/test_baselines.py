"""The classical baselines: exactness where theory says so, prefix-only predictions, values."""

import pytest
import torch

from baselines import averaging, least_squares, nearest_neighbours, ridge
from tasks import LinearRegression
from utils import make_generator


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
