"""The iterative algorithms a loop may run (baselines.ALGORITHMS) and the implied-weight probe
(evaluation.implied_weights): each algorithm reaches least squares, the probe recovers a
predictor that is linear in the query exactly."""

import re

import pytest
import torch
from torch import nn

from baselines import ALGORITHMS, gd_iterates, newton_iterates, ridge_path
from tasks import LinearRegression
from transformer import ModelConfig
from utils import (
    AlgorithmProbe,
    build_model,
    closest_iterates,
    closest_table,
    fit_algorithm,
    implied_weights,
    make_generator,
    probe_table,
)


def context(batch=5, n=12, d=4, seed=0, scales=None):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)  # [B, n, d]
    if scales is not None:
        xs = xs * torch.tensor(scales, dtype=torch.float64)
    w = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    return xs, (xs @ w.unsqueeze(-1)).squeeze(-1), w  # [B, n, d], [B, n], [B, d]


def least_squares_weights(xs, ys):
    return (torch.linalg.pinv(xs) @ ys.unsqueeze(-1)).squeeze(-1)  # [B, d]


def test_every_algorithm_is_named():
    assert set(ALGORITHMS) == {"gradient descent", "preconditioned gradient descent", "iterative Newton", "ridge path"}


def test_gradient_descent_reaches_least_squares():
    xs, ys, w = context()
    largest = torch.linalg.eigvalsh(xs.transpose(1, 2) @ xs / xs.shape[1])[:, -1].max()
    iterates = gd_iterates(xs, ys, steps=3000, lr=float(1 / largest))
    assert iterates.shape == (3001, 5, 4) and iterates[0].abs().max() == 0
    torch.testing.assert_close(iterates[-1], w, rtol=0, atol=1e-8)
    errors = (iterates - w).norm(dim=-1).mean(-1)  # monotone for a step below 2 / largest eigenvalue
    assert (errors[1:] <= errors[:-1] + 1e-12).all()


def test_gradient_descent_is_one_step_with_the_contexts_own_inverse_covariance():
    xs, ys, w = context(batch=1)
    gram = xs[0].T @ xs[0] / xs.shape[1]
    torch.testing.assert_close(gd_iterates(xs, ys, 1, lr=1.0, preconditioner=torch.linalg.inv(gram))[1], w)


def test_preconditioning_with_the_population_covariance_helps_on_skewed_inputs():
    scales = [3.0, 1.0, 0.5, 0.2]
    xs, ys, w = context(n=40, scales=scales, seed=3)
    covariance_inverse = torch.diag(1 / torch.tensor(scales, dtype=torch.float64) ** 2)
    plain = gd_iterates(xs, ys, 20, lr=1 / 9.5)
    preconditioned = gd_iterates(xs, ys, 20, lr=0.9, preconditioner=covariance_inverse)
    assert (preconditioned[-1] - w).norm() < 0.1 * (plain[-1] - w).norm()


@pytest.mark.parametrize("n", [12, 3])
def test_iterative_newton_reaches_the_minimum_norm_least_squares(n):
    xs, ys, _ = context(n=n)
    iterates = newton_iterates(xs, ys, 40)
    assert iterates[0].abs().max() == 0
    torch.testing.assert_close(iterates[-1], least_squares_weights(xs, ys), rtol=0, atol=1e-8)


def test_ridge_path_goes_from_zero_to_least_squares():
    xs, ys, w = context()
    path = ridge_path(xs, ys, [1e3, 1.0, 1e-12])
    assert path[0].abs().max() == 0 and path[1].norm() < 0.05 * w.norm()
    torch.testing.assert_close(path[-1], w, rtol=0, atol=1e-8)
    gram = xs.transpose(1, 2) @ xs / 12
    closed = torch.linalg.solve(gram + torch.eye(4, dtype=torch.float64), xs.transpose(1, 2) @ ys.unsqueeze(-1) / 12)
    torch.testing.assert_close(path[2], closed.squeeze(-1))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda xs, ys: gd_iterates(xs, ys, 3, lr=0.0), "gd_iterates lr=0.0 must be a finite number > 0"),
        (lambda xs, ys: gd_iterates(xs, ys, -1, lr=0.1), "gd_iterates steps=-1 must be an integer >= 0"),
        (lambda xs, ys: newton_iterates(xs[0], ys, 3), "newton_iterates: xs must be [B, n, d] and ys [B, n]"),
        (lambda xs, ys: ridge_path(xs, ys, [-1.0]), "ridge_path lambda=-1.0 must be a finite number >= 0"),
    ],
)
def test_algorithm_errors(call, message):
    xs, ys, _ = context()
    with pytest.raises(ValueError, match=re.escape(message)):
        call(xs, ys)


class LeastSquaresReader(nn.Module):
    """A stand-in model whose query prediction at loop j is x_q . w_ls + j: linear in the query."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # implied_weights reads the device from a parameter

    def forward(self, tokens, b):
        xs, ys = tokens[:, 0::2].double(), tokens[:, 1::2, 0].double()  # [K, n + 1, d], [K, n]
        w = least_squares_weights(xs[:, :-1], ys)  # [K, d]
        query = (xs[:, -1] * w).sum(-1)  # [K]
        preds = torch.zeros(b, tokens.shape[0], xs.shape[1], dtype=torch.float64)
        for loop in range(b):
            preds[loop, :, -1] = query + loop
        return preds


def test_implied_weights_recover_a_linear_predictor_exactly():
    xs, ys, w = context(batch=3)
    queries = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    probe = implied_weights(LeastSquaresReader(), xs, ys, 2, queries)
    assert probe["weights"].shape == (2, 3, 4) and probe["r2"].shape == (2, 3)
    torch.testing.assert_close(probe["weights"], w.expand(2, 3, 4), rtol=0, atol=1e-8)
    torch.testing.assert_close(
        probe["intercept"], torch.tensor([[0.0] * 3, [1.0] * 3], dtype=torch.float64), rtol=0, atol=1e-8
    )
    torch.testing.assert_close(probe["r2"], torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-10)


def test_implied_weights_of_a_looped_model_use_only_the_context_and_the_query():
    """The probe's fit reproduces the model's own query predictions where they are linear, and its
    R^2 is at most 1; the queries' labels never enter (they are zeros in the prompt, and causal)."""
    model = build_model(ModelConfig(n_dims=4, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=25), 0)
    xs, ys = LinearRegression(4).sample_xy(2, 12, make_generator(0, "train"))
    queries = torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    probe = implied_weights(model, xs, ys, 3, queries, chunk=7)  # chunks give the same predictions
    assert probe["weights"].shape == (3, 2, 4) and (probe["r2"] <= 1 + 1e-12).all()
    again = implied_weights(model, xs, ys, 3, queries)
    torch.testing.assert_close(again["weights"], probe["weights"])


def test_implied_weights_errors():
    model = LeastSquaresReader()
    xs, ys, _ = context()
    with pytest.raises(ValueError, match=re.escape("queries must be [K, d=4], got (10, 3)")):
        implied_weights(model, xs, ys, 1, torch.zeros(10, 3))
    with pytest.raises(ValueError, match=re.escape("queries: K=5 must exceed d + 1 to fit w and c")):
        implied_weights(model, xs, ys, 1, torch.zeros(5, 4))


def test_closest_iterates_and_fit_algorithm_recover_a_known_schedule():
    """Loops that are gradient descent at step 2 j with step size 0.3: the matcher finds step 2 j at distance 0,
    and the fit picks 0.3 among the candidates."""
    xs, ys, w = context(batch=6)
    truth = gd_iterates(xs, ys, steps=40, lr=0.3)  # [41, B, d]
    weights = truth[2 : 2 * 6 + 1 : 2]  # loops 1..6 = steps 2, 4, ..., 12: [6, B, d]
    match = closest_iterates(weights, truth, w)
    assert match["step"].tolist() == [2, 4, 6, 8, 10, 12] and match["distance"].abs().max() == 0
    assert match["distances"].shape == (6, 41)
    best, scores = fit_algorithm(weights, lambda lr: gd_iterates(xs, ys, steps=40, lr=lr), (0.1, 0.3, 0.5), w)
    assert best == 0.3 and scores[0.3] == 0 and min(scores[0.1], scores[0.5]) > 0
    # a single shared step per loop: a context whose loops run faster does not get a step of its own
    shifted = weights.clone()
    shifted[:, 0] = truth[4 : 4 * 6 + 1 : 4, 0]
    assert closest_iterates(shifted, truth, w)["distance"].max() > 0
    with pytest.raises(ValueError, match=r"weights must be \[b, B, d\] and iterates \[K \+ 1, B, d\]"):
        closest_iterates(weights[:, :3], truth, w)
    with pytest.raises(ValueError, match=r"loops=7 exceeds the 6 loops of weights"):
        fit_algorithm(weights, lambda lr: truth, (0.3,), w, loops=7)


def probe(**changes):
    settings = dict(tasks={"isotropic": LinearRegression(2), "skewed": LinearRegression(2, x_variances=(1.6, 0.4))},
                    n_examples=4, b=3, contexts=3, queries=8, gd_rates=(0.1, 0.5), ridge=((1.0, 0.5),), gd_steps=4,
                    newton_steps=3, ridge_steps=3, lengths=(3,), noises=(0.0, 0.5), curve_prompts=4,
                    seeds={"tuning": 1, "report": 2, "queries": 3, "curves": 4})
    return AlgorithmProbe(**{**settings, **changes})


def test_the_algorithm_probe_reads_every_loop_of_a_model_per_input_kind():
    model = build_model(ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=9), 0)
    out = probe()(model)
    assert set(out["kinds"]) == {"isotropic", "skewed"} and set(out["curves"]) == {"N=3, noise 0", "N=3, noise 0.5"}
    kind = out["kinds"]["skewed"]
    assert list(kind["fitted"]) == list(ALGORITHMS) and kind["fitted"]["iterative Newton"] is None
    assert kind["fitted"]["gradient descent"] in (0.1, 0.5) and kind["fitted"]["ridge path"] == (1.0, 0.5)
    for name in ALGORITHMS:  # one distance and matched step per loop
        assert len(kind["probe"][name]["distance"]) == 3 and all(0 <= s <= 4 for s in kind["probe"][name]["step"])
    assert len(kind["probe"]["r2"]) == 3 and min(kind["probe"]["r2_min"]) <= min(kind["probe"]["r2"])
    assert all(len(curve) == 3 for curve in out["curves"]["N=3, noise 0"].values())
    again = probe()(model)  # every prompt set comes from its own seed (threads may reorder a sum: the last bits differ)
    assert again["kinds"]["skewed"]["fitted"] == kind["fitted"]
    assert again["curves"]["N=3, noise 0.5"]["model"] == pytest.approx(out["curves"]["N=3, noise 0.5"]["model"])


def test_the_algorithm_probe_needs_steps_for_every_loop_and_its_seeds():
    with pytest.raises(ValueError, match="must cover"):
        probe(newton_steps=2)
    with pytest.raises(ValueError, match="lacks"):
        probe(seeds={"tuning": 1})


def test_the_probe_tables_state_each_loops_numbers_and_the_closest_algorithm():
    def fake(distances, r2=0.9):  # one run's probe over 2 loops; gradient descent's distance is `distances`
        probe = {name: {"distance": [0.5, 0.5], "step": [1, 2]} for name in ALGORITHMS}
        probe["gradient descent"] = {"distance": distances, "step": [3, 4]}
        return {**probe, "r2": [r2, r2], "r2_min": [r2 - 0.1, r2 - 0.2], "to least squares": [0.2, 0.1]}

    groups = {"trained a, probed a": [fake([0.1, 0.9]), fake([0.3, 0.7], r2=0.7)]}
    rows = probe_table(groups, [1, 2]).splitlines()
    assert rows[0].startswith("| model / prompts | loop | R^2 (mean) | R^2 (worst context) | to least squares |")
    assert rows[2] == ("| trained a, probed a | 1 | 0.8 | 0.6 | 0.2 | 0.2 (step 3, 3) | 0.5 (step 1, 1) | "
                       "0.5 (step 1, 1) | 0.5 (step 1, 1) | gradient descent |")
    assert rows[3].endswith("| preconditioned gradient descent |")  # at loop 2 gd's 0.8 is not the closest
    assert closest_table(groups, [1, 2]).splitlines()[2:] == [
        "| 1 | gradient descent 0.2 |", "| 2 | preconditioned gradient descent 0.5 |"]
