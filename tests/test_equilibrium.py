"""The deep-equilibrium option: Anderson's fixed point, its implicit gradient against the
gradient of a converged unrolled loop, the model's `equilibrium` and training with it."""

import math
import re

import pytest
import torch

from equilibrium import anderson, implicit_fixed_point
from tasks import LinearRegression
from tracking import log_curves
from transformer import ModelConfig
from utils import TrainConfig, build_model, make_generator, train

torch.set_default_dtype(torch.float32)
SMALL = dict(n_dims=4, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23)


def test_anderson_solves_a_linear_contraction():
    gen = torch.Generator().manual_seed(0)
    a = 0.4 * torch.randn(3, 5, 5, generator=gen, dtype=torch.float64) / 5**0.5  # [B, 5, 5], spectral radius < 1
    c = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    z, info = anderson(
        lambda z: (a @ z.unsqueeze(-1)).squeeze(-1) + c, torch.zeros(3, 5, dtype=torch.float64), 50, 1e-12
    )
    exact = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - a, c.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(z, exact, rtol=0, atol=1e-10)
    assert info["residual"] < 1e-12 and info["iterations"] < 50


def test_anderson_keeps_going_when_a_prompt_already_sits_at_its_fixed_point():
    """A prompt at its fixed point has zero residuals: its least-squares system is all regularisation, which
    in float32 underflowed to a singular matrix (seen in a deep-equilibrium training run at smoke size)."""
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 6, generator=gen)
    z0[1] = 0.0  # f(0) = 0: this prompt starts at its fixed point
    z, info = anderson(lambda z: 0.5 * z, z0, 6, 0.0)  # tol 0: every evaluation is used
    assert info["iterations"] == 6 and torch.isfinite(z).all() and z[1].abs().max() == 0
    assert z.abs().max() < 1e-3


def test_implicit_gradient_is_the_gradient_of_the_converged_loop():
    gen = torch.Generator().manual_seed(1)
    weight = (0.3 * torch.randn(6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64).requires_grad_()
    f = lambda z: torch.tanh(z @ weight + x)
    z, _ = implicit_fixed_point(f, torch.zeros(4, 6, dtype=torch.float64), 100, 1e-12)
    implicit = torch.autograd.grad(z.square().sum(), (weight, x))
    unrolled = torch.zeros(4, 6, dtype=torch.float64)
    for _ in range(200):
        unrolled = f(unrolled)
    reference = torch.autograd.grad(unrolled.square().sum(), (weight, x))
    for a, b in zip(implicit, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def contracting_model(seed=2):
    """A small model whose loop contracts (final LayerNorm, shrunken MLP out), so it has a fixed point."""
    model = build_model(ModelConfig(**SMALL, final_norm=True), seed).double()
    with torch.no_grad():
        model.stack.layers[0].mlp[2].weight.mul_(0.2)
    return model


def test_model_equilibrium_is_the_long_loop_and_its_gradient():
    model = contracting_model()
    tokens, ys = LinearRegression(4).sample(3, 12, make_generator(0, "train"))
    tokens, ys = tokens.double(), ys.double()
    preds, info = model.equilibrium(tokens, 100, 1e-10)
    assert preds.shape == (1, 3, 12) and info["residual"] < 1e-10
    long_loop = model(tokens, 300)[-1]
    torch.testing.assert_close(preds[0], long_loop, rtol=0, atol=1e-8)
    implicit = torch.autograd.grad((preds[0] - ys).square().mean(), list(model.parameters()), allow_unused=True)
    unrolled = torch.autograd.grad((long_loop - ys).square().mean(), list(model.parameters()), allow_unused=True)
    for a, b in zip(implicit, unrolled, strict=True):
        if b is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_phantom_gradient_is_the_loops_after_the_solve_and_tends_to_the_implicit_gradient():
    """unroll = k: the predictions of the fixed point (k loops after a converged solve change nothing), and the
    gradient of k loops from the solve's output held constant: sum_{j<k} J^j df/dtheta, which tends to the implicit
    (I - J)^-1 df/dtheta as k grows and differs from it at k = 1 (Jacobian-free backpropagation)."""
    model = contracting_model()
    tokens, ys = LinearRegression(4).sample(3, 12, make_generator(0, "train"))
    tokens, ys = tokens.double(), ys.double()
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(unroll):
        preds, info = model.equilibrium(tokens, 100, 1e-10, unroll)
        grads = torch.autograd.grad((preds[0] - ys).square().mean(), params, allow_unused=True)
        return preds, info, torch.cat([g.flatten() for g in grads if g is not None])

    implicit_preds, _, implicit = gradient(None)
    long_preds, info, long_unroll = gradient(150)
    _, _, one_loop = gradient(1)
    assert info["residual"] < 1e-10
    torch.testing.assert_close(long_preds, implicit_preds, rtol=0, atol=1e-8)
    torch.testing.assert_close(long_unroll, implicit, rtol=1e-5, atol=1e-8)
    assert (one_loop - implicit).norm() > 1e-3 * implicit.norm()


@pytest.mark.parametrize("grad_window", [None, 2])  # the implicit gradient, the phantom gradient of 2 loops
def test_training_with_the_fixed_point_solver_is_finite_and_deterministic(grad_window):
    config = TrainConfig(
        grad_window=grad_window,
        steps=6,
        batch_size=8,
        lr=1e-3,
        b=12,
        n_points=12,
        supervise="last",
        solver="fixed_point",
        solver_tol=1e-3,
        eval_prompts=16,
    )
    results = [
        train(build_model(ModelConfig(**SMALL, final_norm=True), 3), LinearRegression(4), config, progress=False)
        for _ in range(2)
    ]
    assert results[0].status == "finished" and results[0].loss == results[1].loss
    assert all(torch.isfinite(torch.tensor(results[0].loss)))
    # every validation records how well the solve converged, so "finished" never hides a solve that did not
    residuals = [entry["solve_residual"] for entry in results[0].evals]
    assert len(residuals) == len(results[0].evals) and all(r >= 0 for r in residuals)
    assert residuals == [entry["solve_residual"] for entry in results[1].evals]


def test_unrolled_pretraining_trains_the_plain_loop_then_the_fixed_point():
    # solver_pretrain = 0.5 of 4 steps: steps 0 and 1 are the plain loop's (the same losses as a run
    # that unrolls throughout), steps 2 and 3 solve (the losses part from that run's)
    common = dict(steps=4, batch_size=8, lr=1e-3, b=12, n_points=12, supervise="last", eval_prompts=16)
    task, model_config = LinearRegression(4), ModelConfig(**SMALL, final_norm=True)
    pretrained = TrainConfig(**common, solver="fixed_point", solver_pretrain=0.5)
    assert [pretrained.solves_at(step) for step in range(4)] == [False, False, True, True]
    assert [TrainConfig(**common, solver="fixed_point").solves_at(step) for step in range(4)] == [True] * 4
    losses = {
        name: train(build_model(model_config, 3), task, config, progress=False).loss
        for name, config in (("pretrained", pretrained), ("unrolled", TrainConfig(**common)))
    }
    assert losses["pretrained"][:2] == losses["unrolled"][:2]
    assert losses["pretrained"][2] != losses["unrolled"][2]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(solver="implicit"), "TrainConfig.solver='implicit' is not allowed; choose one of"),
        (dict(solver_pretrain=0.2), "TrainConfig.solver_pretrain=0.2 has no effect with solver='unroll'"),
        (
            dict(solver="fixed_point", supervise="last", solver_pretrain=1.0),
            "TrainConfig.solver_pretrain=1.0 must be a fraction of the steps in [0, 1)",
        ),
        (dict(solver="fixed_point"), "TrainConfig.solver='fixed_point' supervises the fixed point alone"),
        (dict(solver_tol=1e-4), "TrainConfig.solver_tol=0.0001 has no effect with solver='unroll'"),
        (dict(solver="fixed_point", supervise="last", solver_tol=0.0), "TrainConfig.solver_tol=0.0 must be"),
    ],
)
def test_solver_config_errors(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(steps=2, b=4, n_points=12, **fields)


def test_a_model_without_one_map_has_no_fixed_point_to_solve():
    config = TrainConfig(steps=2, b=4, n_points=12, supervise="last", solver="fixed_point", eval_prompts=8)
    model = build_model(ModelConfig(**SMALL, loop_stacks=2), 0)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "a fixed-point solve needs the same map at every loop; ModelConfig has loop_stacks=2 (needs 1)"
        ),
    ):
        train(model, LinearRegression(4), config, progress=False)


def test_phantom_gradient_needs_at_least_one_loop():
    model = contracting_model()
    tokens, _ = LinearRegression(4).sample(2, 12, make_generator(0, "train"))
    with pytest.raises(ValueError, match=re.escape("unroll=0")):
        model.equilibrium(tokens.double(), 10, 1e-3, unroll=0)


class Logged:
    """A stand-in for a wandb run: every logged dict, by step."""

    def __init__(self):
        self.logged = {}

    def log(self, values, step):
        self.logged.setdefault(step, {}).update(values)


def test_every_solving_step_logs_its_solve_residual_and_the_penalty_its_estimate():
    """Where the solve fails shows step by step: each training step that solves records the largest relative
    residual of its forward solve (None for the unrolled pretraining steps), and with the Jacobian penalty its
    estimate; both are logged beside the loss and kept in the record."""
    common = dict(steps=6, batch_size=8, lr=1e-3, b=12, n_points=12, supervise="last", eval_prompts=16,
                  solver="fixed_point", solver_tol=1e-3, solver_pretrain=1 / 3)
    model_config, task = ModelConfig(**SMALL, final_norm=True), LinearRegression(4)
    run = Logged()
    result = train(build_model(model_config, 3), task, TrainConfig(**common), run=run, progress=False)
    residuals = result.diagnostics["solve_residual"]
    assert len(residuals) == len(result.loss) == 6 and residuals[:2] == [None, None]
    assert all(0 <= r < float("inf") for r in residuals[2:])
    assert [run.logged[step].get("train/solve_residual") for step in range(1, 7)] == residuals
    replayed = Logged()  # a run whose training is reused logs its stored curves: the same residuals
    log_curves(replayed, result)
    assert [replayed.logged[step].get("train/solve_residual") for step in range(1, 7)] == residuals
    assert result.to_dict()["diagnostics"] == {"solve_residual": residuals}
    penalised = train(build_model(model_config, 3), task, TrainConfig(**common, jacobian_penalty=0.1), progress=False)
    assert penalised.loss[0] == result.loss[0] and len(penalised.diagnostics["jacobian"]) == 6
    assert penalised.diagnostics["solve_residual"][:2] == [None, None]
    assert all(math.isfinite(x) for x in penalised.loss)
    plain_config = TrainConfig(steps=2, batch_size=8, b=3, n_points=12, eval_prompts=16)
    plain = train(build_model(model_config, 3), task, plain_config, progress=False)
    assert plain.diagnostics == {} and "diagnostics" not in plain.to_dict()  # an unrolled run's record is as it was
