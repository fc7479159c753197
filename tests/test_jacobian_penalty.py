"""The Jacobian penalty on the loop map (Bai et al. 2021): the Hutchinson estimate against the exact Jacobian of a
tiny map and of a model's loop, its gradient, training with it (the data stream untouched, resumable) and its
refusals before any training."""

import math
import re

import pytest
import torch
from conftest import interrupt_at

from ensemble import check_ensemble
from equilibrium import jacobian_norm_estimate
from seeding import step_generator
from tasks import LinearRegression
from training import SingleStepper
from transformer import ModelConfig
from utils import TrainConfig, build_model, make_generator, train

SMALL = dict(n_dims=3, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=9)
TASK = LinearRegression(3)


def tiny_map(seed=0):
    """f(z) = tanh(z W + c) on z [3, 4] (three prompts of four entries), its parameter W and a point z."""
    gen = torch.Generator().manual_seed(seed)
    weight = (0.8 * torch.randn(4, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    c = torch.randn(4, dtype=torch.float64, generator=gen)
    z = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    return (lambda s: torch.tanh(s @ weight + c)), weight, z


def exact_estimate_and_error(f, z, samples):
    """||J||_F^2 / n from the full Jacobian, and the standard error of a `samples`-vector Hutchinson estimate:
    ||v^T J||^2 = v^T A v with A = J J^T has variance 2 tr(A^2) for Gaussian v."""
    n = z.numel()
    jacobian = torch.autograd.functional.jacobian(f, z).reshape(n, n)  # [n, n]
    a = jacobian @ jacobian.T
    return float(jacobian.square().sum() / n), math.sqrt(2 * float((a @ a).trace()) / samples) / n


def test_the_hutchinson_estimate_matches_the_exact_jacobian_of_a_tiny_map():
    f, _, z = tiny_map()
    samples = 4000
    exact, error = exact_estimate_and_error(f, z, samples)
    estimate = float(jacobian_norm_estimate(f, z, samples, torch.Generator().manual_seed(0)).detach())
    assert abs(estimate - exact) < 4 * error  # a fixed seed: the same draw every time
    assert error < 0.05 * exact  # and the test can tell a wrong normalisation (a factor 3 or 4) apart
    one = [jacobian_norm_estimate(f, z, 1, torch.Generator().manual_seed(s)).item() for s in range(3)]
    assert len(set(one)) == 3 and all(value > 0 for value in one)  # each vector is a new draw


def test_the_estimate_is_repeatable_and_its_gradient_is_the_exact_norms_gradient():
    f, weight, z = tiny_map(1)
    first = jacobian_norm_estimate(f, z, 3, torch.Generator().manual_seed(5))
    assert torch.equal(first, jacobian_norm_estimate(f, z, 3, torch.Generator().manual_seed(5)))
    # the gradient in W of many vectors' estimate against the gradient of the exact ||J||^2 / n
    (estimated,) = torch.autograd.grad(jacobian_norm_estimate(f, z, 4000, torch.Generator().manual_seed(2)), weight)
    jacobian = torch.autograd.functional.jacobian(f, z, create_graph=True)  # [3, 4, 3, 4]
    (exact,) = torch.autograd.grad(jacobian.square().sum() / z.numel(), weight)
    cosine = float((estimated * exact).sum() / (estimated.norm() * exact.norm()))
    assert cosine > 0.99 and abs(float(estimated.norm() / exact.norm()) - 1) < 0.1


def test_the_penalty_moves_the_map_and_not_what_produced_the_state():
    f, weight, _ = tiny_map(2)
    source = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    estimate = jacobian_norm_estimate(f, 2 * source, 2, torch.Generator().manual_seed(0))
    weight_grad, source_grad = torch.autograd.grad(estimate, (weight, source), allow_unused=True)
    assert source_grad is None and weight_grad.abs().sum() > 0
    with torch.no_grad():  # measured without gradient: a plain number, nothing to backpropagate
        assert not jacobian_norm_estimate(f, source, 2, torch.Generator().manual_seed(0)).requires_grad


def test_the_model_s_loop_jacobian_matches_the_exact_jacobian_of_its_loop():
    model = build_model(ModelConfig(**SMALL, final_norm=True, injection="ema", ema_alpha=0.5), 0).double()
    tokens, _ = TASK.sample(2, 3, make_generator(0, "train"))  # [2, 5, 3]
    tokens = tokens.double()
    _, state = model.loops(tokens, 4)  # [2, 5, 8]: the final state
    f = model.loop_map(model.embed_prompt(tokens))
    samples = 3000
    exact, error = exact_estimate_and_error(f, state.detach(), samples)
    estimate = float(model.loop_jacobian(tokens, state, samples, torch.Generator().manual_seed(0)).detach())
    assert abs(estimate - exact) < 4 * error and error < 0.1 * exact


def config(**overrides):
    base = dict(steps=8, batch_size=4, lr=1e-2, b=3, n_points=4, seed=3, eval_prompts=8, eval_every=0.5)
    return TrainConfig(**{**base, **overrides})


class RecordingTask(LinearRegression):
    """Linear regression that keeps every batch it draws (the training data stream, and validation's)."""

    def __init__(self, n_dims):
        super().__init__(n_dims)
        object.__setattr__(self, "batches", [])

    def sample(self, batch_size, n_points, generator=None, active_dims=None):
        tokens, ys = super().sample(batch_size, n_points, generator)
        self.batches.append(tokens.clone())
        return tokens, ys


def test_training_with_the_penalty_keeps_the_data_stream_and_logs_the_estimate():
    model_config = ModelConfig(**SMALL, final_norm=True)
    plain_task, penalised_task = RecordingTask(3), RecordingTask(3)
    plain = train(build_model(model_config, 3), plain_task, config(), progress=False)
    penalised_model = build_model(model_config, 3)
    penalised = train(penalised_model, penalised_task, config(jacobian_penalty=1.0, jacobian_samples=2), progress=False)
    # the vectors come from their own stream: the same prompts, step by step, as the run without the penalty
    assert all(torch.equal(a, b) for a, b in zip(plain_task.batches, penalised_task.batches, strict=True))
    assert penalised.loss[0] == plain.loss[0] and penalised.loss[1:] != plain.loss[1:]  # the first update differs
    jacobian = penalised.diagnostics["jacobian"]
    assert len(jacobian) == len(penalised.loss) == 8 and all(value > 0 for value in jacobian)
    assert "diagnostics" in penalised.to_dict() and "diagnostics" not in plain.to_dict()  # plain records unchanged
    again = train(build_model(model_config, 3), TASK, config(jacobian_penalty=1.0, jacobian_samples=2), progress=False)
    assert again.loss == penalised.loss and again.diagnostics == penalised.diagnostics


def test_a_strong_penalty_lowers_the_loop_s_jacobian():
    model_config = ModelConfig(**SMALL, final_norm=True)
    tokens, _ = TASK.sample(16, 4, make_generator(1, "validation"))

    def jacobian_after(penalty):
        model = build_model(model_config, 3)
        train(model, TASK, config(steps=30, lr=3e-2, jacobian_penalty=penalty), progress=False)
        with torch.no_grad():
            _, state = model.loops(tokens, 3)
        return model.loop_jacobian(tokens, state, 64, torch.Generator().manual_seed(0)).item()

    assert jacobian_after(10.0) < 0.5 * jacobian_after(0.0)


def test_a_resumed_penalised_run_draws_the_same_vectors(tmp_path, monkeypatch):
    model_config = ModelConfig(**SMALL, final_norm=True)
    train_config = config(jacobian_penalty=0.5, checkpoint_every=2)
    reference = train(build_model(model_config, 3), TASK, train_config, progress=False)
    path = tmp_path / "run.ckpt"
    real_step = interrupt_at(monkeypatch, SingleStepper, 5)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(model_config, 3), TASK, train_config, progress=False, checkpoint=path)
    monkeypatch.setattr(SingleStepper, "step", real_step)
    resumed = train(build_model(model_config, 3), TASK, train_config, progress=False, checkpoint=path)
    assert resumed.loss == reference.loss and resumed.diagnostics == reference.diagnostics


def test_step_generators_are_a_function_of_seed_stream_and_step():
    draw = lambda seed, step: torch.randn(3, generator=step_generator(seed, "jacobian", step))
    assert torch.equal(draw(1, 4), draw(1, 4))
    assert not torch.equal(draw(1, 4), draw(1, 5)) and not torch.equal(draw(1, 4), draw(2, 4))
    with pytest.raises(ValueError, match=re.escape("stream='noise' is not known")):
        step_generator(1, "noise", 0)
    with pytest.raises(ValueError, match=re.escape("step=-1 must be an integer >= 0")):
        step_generator(1, "jacobian", -1)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(jacobian_penalty=-1.0), "TrainConfig.jacobian_penalty=-1.0 must be a finite number >= 0"),
        (dict(jacobian_penalty=float("nan")), "TrainConfig.jacobian_penalty=nan must be a finite number >= 0"),
        (dict(jacobian_penalty=True), "TrainConfig.jacobian_penalty=True must be a finite number >= 0"),
        (dict(jacobian_penalty=1.0, jacobian_samples=0), "TrainConfig.jacobian_samples=0 must be an integer >= 1"),
        (dict(jacobian_samples=2), "TrainConfig.jacobian_samples=2 has no effect with jacobian_penalty=0"),
    ],
)
def test_penalty_config_errors(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config(**fields)


@pytest.mark.parametrize(
    "model_fields, wrong",
    [(dict(loop_stacks=2), "loop_stacks=2 (needs 1)"), (dict(loop_embedding="sinusoidal"), "loop_embedding=")],
)
def test_a_model_without_one_loop_map_is_refused_before_training(model_fields, wrong):
    model = build_model(ModelConfig(**SMALL, **model_fields), 0)
    before = [p.clone() for p in model.parameters()]
    message = "TrainConfig.jacobian_penalty=1.0 (the loop map's Jacobian) needs the same map at every loop; "
    with pytest.raises(ValueError, match=re.escape(message) + ".*" + re.escape(wrong)):
        train(model, TASK, config(jacobian_penalty=1.0), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_ensemble_refuses_the_penalty():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.jacobian_penalty=1.0 differentiates each member")):
        check_ensemble(ModelConfig(**SMALL), [config(jacobian_penalty=1.0), config(jacobian_penalty=1.0, seed=4)])
