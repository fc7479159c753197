"""The classical baselines: exactness where theory says so, prefix-only predictions, values."""

import math

import pytest
import torch

from baselines import (
    BASELINES,
    _lasso_weights,
    averaging,
    baseline_position_errors,
    baseline_prompt_errors,
    greedy_tree,
    lasso,
    least_squares,
    nearest_neighbours,
    ridge,
    two_layer_net_gd,
)
from tasks import LinearRegression, build_prompt
from utils import make_generator


def _sparse_prompts(batch: int, n_points: int, n_dims: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noiseless y = x . w with w ~ N(0, I) restricted to its first k coordinates."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n_points, n_dims, generator=gen)  # [B, P, d]
    w = torch.randn(batch, n_dims, generator=gen)  # [B, d]
    w[:, k:] = 0
    return xs, (xs @ w.unsqueeze(-1)).squeeze(-1)  # [B, P]


def _relu_net_prompts(batch: int, n_points: int, n_dims: int, hidden: int, seed: int):
    """y = sqrt(2 / hidden) a . relu(W x), W and a standard normal per prompt (Garg et al.'s ReLU task)."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n_points, n_dims, generator=gen)  # [B, P, d]
    w = torch.randn(batch, hidden, n_dims, generator=gen)  # [B, h, d]
    a = torch.randn(batch, hidden, 1, generator=gen)  # [B, h, 1]
    return xs, math.sqrt(2 / hidden) * (torch.relu(xs @ w.transpose(1, 2)) @ a).squeeze(-1)  # [B, P]


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
    estimators = {
        "least_squares": least_squares,
        "ridge": ridge,
        "averaging": averaging,
        "nearest_neighbours": nearest_neighbours,
        "lasso": lasso,
        "two_layer_net_gd": lambda x, y: two_layer_net_gd(x, y, steps=20),
        "greedy_tree": greedy_tree,
    }
    for name, estimator in estimators.items():
        preds = estimator(xs, ys)
        assert (preds[:, 0] == 0).all(), name
        changed_ys = ys.clone()
        changed_ys[:, 6:] += 100.0  # the answers at and after position 6 are hidden from 0..6
        changed = estimator(xs, changed_ys)
        torch.testing.assert_close(changed[:, :7], preds[:, :7], msg=name)
        assert (changed[:, 7:] - preds[:, 7:]).abs().max() > 1.0, name  # ... and seen from 7 on


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


# ----------------------------------------------------------------------------- Lasso


def test_lasso_value_on_an_orthogonal_design():
    # Two examples x = [s, 0], [0, s] with s = sqrt(2): X^T X / 2 = I, so w = soft(X^T y / 2, alpha).
    s = math.sqrt(2)
    xs = torch.tensor([[[s, 0.0], [0.0, s], [1.0, 1.0]]], dtype=torch.float64)
    ys = torch.tensor([[1.0, -0.5, 0.0]], dtype=torch.float64)
    # X^T y / 2 = [s / 2, -s / 4] = [0.7071, -0.3536]; alpha 0.5 keeps 0.2071 of the first, zeroes the second.
    assert lasso(xs, ys, alpha=0.5)[0, 2].item() == pytest.approx(s / 2 - 0.5, abs=1e-12)
    # alpha 0.1 keeps both: w = [s / 2 - 0.1, -s / 4 + 0.1]
    assert lasso(xs, ys, alpha=0.1)[0, 2].item() == pytest.approx(s / 4, abs=1e-12)
    # One example [s, 0] with y = 1: w_0 = soft(s, 0.5) / 2, and the query [0, s] gets nothing of it.
    assert lasso(xs, ys, alpha=0.5)[0, 1].item() == 0.0


def test_lasso_solves_the_problem_to_rounding():
    # The optimality (KKT) conditions of (1/(2i))||Xw - y||^2 + alpha||w||_1, at every prefix:
    # g = X^T (y - X w) / i equals alpha sign(w_j) where w_j != 0 and |g_j| <= alpha where w_j = 0.
    xs, ys = _sparse_prompts(32, 25, 10, 3, seed=0)
    ys = ys + 0.1 * torch.randn(ys.shape, generator=torch.Generator().manual_seed(1))  # noise: no exact fit
    alpha = 0.05
    w = _lasso_weights(xs, ys, alpha, iterations=200)  # [B, P, d]
    x64, y64 = xs.double(), ys.double()
    assert (w[:, 0] == 0).all()
    for i in range(1, xs.shape[1]):
        residual = y64[:, :i] - (x64[:, :i] @ w[:, i].unsqueeze(-1)).squeeze(-1)  # [B, i]
        g = (x64[:, :i] * residual.unsqueeze(-1)).sum(1) / i  # [B, d]
        on = w[:, i] != 0
        assert ((g - alpha * w[:, i].sign()).abs() <= 1e-10)[on].all(), i
        assert (g.abs() <= alpha + 1e-10)[~on].all(), i
        assert on.sum(-1).max() <= i  # a Lasso solution uses at most i coordinates
    # Coordinate descent (the fallback when the path is cut after one step) never beats the path's objective,
    # and gets close: to rounding where overdetermined, within 1e-3 where columns are collinear.
    fallback = _lasso_weights(xs, ys, alpha, iterations=1)

    def objective(weights: torch.Tensor) -> torch.Tensor:
        fit = weights @ x64.transpose(1, 2)  # fit[:, i, j] = x_j . w_i, [B, P, P]
        prefix = torch.ones(25, 25, dtype=torch.float64).tril(-1)  # [P, P], example j < i
        sse = ((fit - y64.unsqueeze(1)).square() * prefix).sum(-1)  # [B, P]
        return sse / (2 * torch.arange(25).clamp(min=1)) + alpha * weights.abs().sum(-1)  # [B, P]

    gap = objective(fallback) - objective(w)  # [B, P]
    assert gap.min() > -1e-12
    assert gap.max() < 1e-3
    assert gap[:, 10:].max() < 1e-12
    assert (fallback[:, 10:] - w[:, 10:]).abs().max() < 1e-6


def test_lasso_recovers_a_sparse_w():
    xs, ys = _sparse_prompts(64, 30, 10, 2, seed=2)
    lasso_err = (lasso(xs, ys) - ys).square().mean(0)  # [P]
    ls_err = (least_squares(xs, ys) - ys).square().mean(0)  # [P]
    # From 20 examples on, only alpha's shrinkage is left: ~alpha / |w_j| relative, squared ~1e-4.
    assert lasso_err[20:].sum() < 1e-3 * ys[:, 20:].square().mean(0).sum()
    # 6..9 examples (3k <= i < d): least squares is underdetermined, the Lasso mostly finds the support.
    assert lasso_err[6:10].mean() < 0.3 * ls_err[6:10].mean()


def test_lasso_with_tiny_alpha_is_least_squares_when_overdetermined():
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(16, 20, 5, generator=gen)  # [B, P, d]
    w = torch.randn(16, 5, 1, generator=gen)
    ys = (xs @ w).squeeze(-1)  # [B, P]
    noisy = ys + 0.5 * torch.randn(ys.shape, generator=gen)  # least squares no longer recovers w
    for targets in (ys, noisy):
        ls = least_squares(xs, targets)
        tiny = lasso(xs, targets, alpha=1e-8)
        torch.testing.assert_close(tiny[:, 10:], ls[:, 10:], atol=1e-5, rtol=0)
    # ... while a real alpha does not (the comparison above can fail).
    assert (lasso(xs, noisy, alpha=0.1)[:, 10:] - least_squares(xs, noisy)[:, 10:]).abs().max() > 1e-2


# ----------------------------------------------------------------------------- 2-layer net


def test_two_layer_net_fits_a_relu_network():
    xs, ys = _relu_net_prompts(32, 40, 4, 100, seed=4)
    last = slice(30, 40)

    def error(preds: torch.Tensor) -> float:
        return (preds - ys)[:, last].square().mean().item()

    net = error(two_layer_net_gd(xs, ys))
    assert net < 0.25 * error(torch.zeros_like(ys))
    assert net < 0.25 * error(averaging(xs, ys))
    assert net < 0.25 * error(least_squares(xs, ys))  # the target is far from linear


def test_two_layer_net_matches_autograd_adam():
    # The same network, trained with torch.nn-style autograd and torch.optim.Adam on one prefix.
    xs, ys = _relu_net_prompts(3, 8, 3, 10, seed=5)
    hidden, steps, lr, seed = 16, 30, 0.02, 7
    preds = two_layer_net_gd(xs.double(), ys.double(), hidden=hidden, steps=steps, lr=lr, seed=seed)
    n_dims = xs.shape[-1]
    for b, i in ((0, 1), (1, 3), (2, 7)):
        gen = torch.Generator().manual_seed(seed)
        # The documented initialisation: W^T [d, h], c [h], a [h], b [], each U(-1, 1) / sqrt(fan_in), in this order.
        shapes = (((n_dims, hidden), n_dims), ((hidden,), n_dims), ((hidden,), hidden), ((), hidden))
        params = [
            ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(fan)).requires_grad_()
            for shape, fan in shapes
        ]
        weight_t, bias, out_w, out_b = params
        optimizer = torch.optim.Adam(params, lr=lr, foreach=False)
        x, y = xs[b, :i].double(), ys[b, :i].double()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = ((torch.relu(x @ weight_t + bias) @ out_w + out_b - y) ** 2).mean()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            expected = torch.relu(xs[b, i].double() @ weight_t + bias) @ out_w + out_b
        assert preds[b, i].item() == pytest.approx(expected.item(), abs=1e-9), (b, i)


def test_two_layer_net_is_seeded_and_per_prompt():
    xs, ys = _relu_net_prompts(6, 7, 3, 10, seed=6)
    preds = two_layer_net_gd(xs, ys, steps=10)
    assert torch.equal(preds, two_layer_net_gd(xs, ys, steps=10))
    assert not torch.allclose(preds, two_layer_net_gd(xs, ys, steps=10, seed=1))
    # Every fit starts from the same initialisation: a prompt's predictions ignore the rest of the batch.
    torch.testing.assert_close(two_layer_net_gd(xs[2:4], ys[2:4], steps=10), preds[2:4], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- greedy tree


def test_greedy_tree_stump_is_exact_once_both_sides_are_seen():
    gen = torch.Generator().manual_seed(8)
    xs = torch.randn(64, 12, 3, generator=gen)  # [B, P, d]
    ys = torch.where(xs[..., 1] > 0, 2.0, -1.0)  # [B, P]
    signs = xs > 0  # [B, P, d]
    checked = 0
    for depth in (1, 4):
        preds = greedy_tree(xs, ys, depth=depth)
        for i in range(1, xs.shape[1]):
            both_sides = signs[:, :i, 1].any(1) & (~signs[:, :i, 1]).any(1)  # [B]
            # Another coordinate with the same sign pattern on the prefix would split equally well.
            same = (signs[:, :i] == signs[:, :i, 1:2]).all(1) | (signs[:, :i] != signs[:, :i, 1:2]).all(1)  # [B, d]
            identified = both_sides & (same.sum(-1) == 1)  # [B]
            assert (preds[identified, i] == ys[identified, i]).all(), (depth, i)
            checked += int(identified.sum())
            one_side = ~both_sides
            assert (preds[one_side, i] == ys[one_side, :i].mean(1)).all()  # a constant prefix predicts it
    assert checked > 800  # most of the 2 * 64 * 11 predictions were checked


def test_greedy_tree_recovers_a_depth_2_sign_tree():
    gen = torch.Generator().manual_seed(9)
    xs = torch.randn(32, 80, 3, generator=gen)  # [B, P, d]
    x0, x1, x2 = xs.unbind(-1)
    # Root tests x0; its left child x1, its right child x2. The root split separates means -2 and 2.
    ys = torch.where(x0 > 0, torch.where(x2 > 0, 3.0, 1.0), torch.where(x1 > 0, -1.0, -3.0))  # [B, P]
    for depth in (2, 4):
        assert (greedy_tree(xs, ys, depth=depth)[:, 40:] == ys[:, 40:]).all(), depth
    # A stump cannot: it predicts the side means (about -2 and 2).
    assert (greedy_tree(xs, ys, depth=1)[:, 40:] - ys[:, 40:]).abs().min() > 0.5


def test_greedy_tree_predicts_means_where_it_cannot_split():
    xs = torch.tensor([[[1.0, 2.0], [0.5, 1.0], [3.0, 0.1], [-1.0, -1.0], [-2.0, 1.0]]])
    ys = torch.tensor([[1.0, 2.0, 6.0, 10.0, 0.0]])
    preds = greedy_tree(xs, ys, depth=4)
    assert preds[0, 0] == 0  # nothing seen
    assert preds[0, 1] == 1.0  # one example: a leaf, on either side of any split
    # Examples 0..2 lie on the same side of every split; the query's side is empty: the parent's mean.
    assert preds[0, 3].item() == pytest.approx(3.0)
    # Examples 0..3: the best split is x[0] > 0 (or x[1], the same partition): [1, 2, 6] vs [10].
    # The query x = [-2, 1] goes left on x[0]: the leaf holding only example 3.
    assert preds[0, 4].item() == pytest.approx(10.0)


# ----------------------------------------------------------------------------- arguments and registry


def test_new_baselines_reject_bad_arguments():
    xs, ys = torch.randn(2, 4, 3), torch.randn(2, 4)
    for bad, message in (
        (lambda: lasso(xs, ys, alpha=0), "lasso alpha=0 must be a finite number > 0"),
        (lambda: lasso(xs, ys, alpha=-0.1), "lasso alpha=-0.1 must be a finite number > 0"),
        (lambda: lasso(xs, ys, alpha=float("nan")), "lasso alpha=nan must be a finite number > 0"),
        (lambda: lasso(xs, ys, iterations=0), "lasso iterations=0 must be an integer >= 1"),
        (lambda: greedy_tree(xs, ys, depth=0), "greedy_tree depth=0 must be an integer >= 1"),
        (lambda: greedy_tree(xs, ys, depth=2.0), "greedy_tree depth=2.0 must be an integer >= 1"),
        (lambda: two_layer_net_gd(xs, ys, hidden=0), "two_layer_net_gd hidden=0 must be an integer >= 1"),
        (lambda: two_layer_net_gd(xs, ys, steps=0), "two_layer_net_gd steps=0 must be an integer >= 1"),
        (lambda: two_layer_net_gd(xs, ys, lr=0.0), "two_layer_net_gd lr=0.0 must be a finite number > 0"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            bad()


def test_baseline_position_errors_scale_and_registry():
    xs, ys = _sparse_prompts(16, 9, 3, 3, seed=10)
    tokens = build_prompt(xs, ys)  # [B, 2P-1, d]
    names = tuple(BASELINES)
    assert {"Lasso (alpha=0.01)", "2-layer net, GD", "greedy tree (depth 4)"} <= set(names)
    default = baseline_position_errors(tokens, ys, names)
    for name in names:
        # The default normaliser is n_dims, exactly as before the scale argument existed.
        expected = ((BASELINES[name](xs, ys) - ys).square().mean(0) / 3).tolist()
        assert default[name] == expected, name
        assert len(default[name]) == 9
    scaled = baseline_position_errors(tokens, ys, ("least squares", "greedy tree (depth 4)"), scale=1.0)
    for name, errors in scaled.items():
        assert errors == pytest.approx([3 * e for e in default[name]], rel=1e-6), name
    with pytest.raises(ValueError, match="unknown baselines"):
        baseline_position_errors(tokens, ys, ("lasso",))
    with pytest.raises(ValueError, match="baseline scale=0 must be a finite number > 0"):
        baseline_position_errors(tokens, ys, scale=0)
    # Per-prompt rows average to the per-position means (what the bootstrap band resamples).
    rows = baseline_prompt_errors(tokens, ys, "least squares")
    assert rows.shape == (16, 9)
    assert rows.mean(0).tolist() == pytest.approx(default["least squares"], rel=1e-6)
    with pytest.raises(ValueError, match="unknown baseline 'lasso'; choose from"):
        baseline_prompt_errors(tokens, ys, "lasso")
