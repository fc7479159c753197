"""Training and validation: determinism, resume, divergence, logging, saving and errors."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tasks import LinearRegression
from transformer import ModelConfig
from utils import (
    TrainConfig,
    bootstrap_band,
    build_model,
    evaluate,
    extrapolate,
    heldout_prompts,
    load_run,
    make_generator,
    prediction_errors,
    prompt_errors,
    save_run,
    save_svg,
    state_updates,
    step_times,
    train,
    validate,
)

MODEL = ModelConfig(n_dims=3, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=15)
TASK = LinearRegression(n_dims=3)


def config(**overrides):
    base = dict(steps=12, batch_size=8, lr=3e-3, b=3, n_points=8, seed=5, eval_prompts=32, eval_every=0.25)
    return TrainConfig(**{**base, **overrides})


def run(train_config, checkpoint=None, task=TASK):
    model = build_model(MODEL, train_config.seed)
    result = train(model, task, train_config, progress=False, checkpoint=checkpoint)
    return model, result


def test_same_seed_same_losses_and_weights():
    first_model, first = run(config())
    second_model, second = run(config())
    assert first.loss == second.loss and first.evals == second.evals
    for a, b in zip(first_model.parameters(), second_model.parameters(), strict=False):
        assert torch.equal(a, b)
    _, other = run(config(seed=6))
    assert other.loss != first.loss


def test_validation_schedule_and_metrics():
    _, result = run(config(steps=10, eval_every=0.2))
    assert [entry["step"] for entry in result.evals] == [0, 2, 4, 6, 8, 10]
    assert result.status == "finished" and len(result.loss) == 10
    for entry in result.evals:
        assert set(entry) == {"step", "reference", "last_loop"}


class Interrupting:
    """A task that raises after `limit` samples, like a kill in the middle of training."""

    def __init__(self, task, limit):
        self.task, self.limit, self.calls = task, limit, 0
        self.n_dims = task.n_dims

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt("simulated interruption")
        return self.task.sample(*args, **kwargs)

    def to_dict(self):
        return self.task.to_dict()  # the same task: its checkpoint resumes


@pytest.mark.parametrize(
    "checkpoint_every, schedule", [(0, {}), (5, {}), (5, dict(lr_schedule="cosine", warmup=0.2, clip_grad_norm=1.0))]
)
def test_resume_after_interruption_is_bit_identical(tmp_path, checkpoint_every, schedule):
    train_config = config(steps=20, checkpoint_every=checkpoint_every, **schedule)
    reference_model, reference = run(train_config)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(train_config, checkpoint=path, task=Interrupting(TASK, limit=13))
    assert path.exists()
    resumed_draws, fresh_draws = Interrupting(TASK, limit=10**6), Interrupting(TASK, limit=10**6)  # count batches
    resumed_model, resumed = run(train_config, checkpoint=path, task=resumed_draws)
    run(train_config, task=fresh_draws)
    assert resumed_draws.calls < fresh_draws.calls  # it picked up where the interrupted run stopped
    assert resumed.loss == reference.loss
    assert resumed.evals == reference.evals
    for a, b in zip(reference_model.state_dict().values(), resumed_model.state_dict().values(), strict=False):
        assert torch.equal(a, b)


class Exploding:
    """Linear regression whose sixth training batch has NaN labels."""

    n_dims = 3

    def __init__(self):
        self.calls = 0

    def sample(self, batch_size, n_points, generator=None):
        tokens, ys = TASK.sample(batch_size, n_points, generator)
        if batch_size == 32:  # the held-out set is drawn once with eval_prompts=32; skip it
            return tokens, ys
        self.calls += 1
        if self.calls == 6:
            ys = ys * float("nan")
        return tokens, ys

    def to_dict(self):
        return TASK.to_dict()  # linear regression, as far as a checkpoint is concerned


def test_non_finite_loss_stops_and_keeps_history():
    model = build_model(MODEL, 0)
    with pytest.warns(RuntimeWarning, match="training stopped at step 5: the loss is nan"):
        result = train(model, Exploding(), config(), progress=False)
    assert result.status == "diverged"
    assert len(result.loss) == 5 and all(torch.isfinite(torch.tensor(result.loss)))
    assert "5 finite losses" in result.message
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_diverged_run_resumed_from_its_checkpoint_stays_diverged(tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.warns(RuntimeWarning, match="training stopped at step 5"):
        first = train(build_model(MODEL, 0), Exploding(), config(), progress=False, checkpoint=path)
    assert path.exists()
    # The data would now be finite: a resumed run that trained on would report "finished".
    resumed = train(build_model(MODEL, 0), TASK, config(), progress=False, checkpoint=path)
    assert resumed.status == "diverged" and resumed.message == first.message
    assert resumed.loss == first.loss


def test_run_none_never_imports_wandb():
    code = (
        "import sys;"
        "from tasks import LinearRegression; from transformer import ModelConfig;"
        "from utils import TrainConfig, build_model, train;"
        "m = build_model(ModelConfig(3, 1, 2, 16, 32, 15), 0);"
        "train(m, LinearRegression(3), TrainConfig(steps=2, batch_size=4, b=2, n_points=8, eval_prompts=8), run=None);"
        "assert 'wandb' not in sys.modules, 'wandb was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("conftest").ROOT))


def test_run_object_receives_logs():
    class Recorder:
        def __init__(self):
            self.entries = []

        def log(self, data, step):
            self.entries.append((step, data))

    recorder = Recorder()
    train(build_model(MODEL, 0), TASK, config(steps=4, eval_every=0.5), run=recorder, progress=False)
    assert [s for s, d in recorder.entries if "train/loss" in d] == [1, 2, 3, 4]
    assert [s for s, d in recorder.entries if "eval/reference" in d] == [0, 2, 4]


def test_short_training_lowers_the_loss():
    """In-context learning of y = w x (d = 1): training loss and held-out error both fall."""
    model = build_model(ModelConfig(n_dims=1, n_layers=1, n_heads=2, hidden_dim=32, mlp_hidden=64, context=11), 5)
    train_config = TrainConfig(steps=800, batch_size=32, lr=3e-3, b=2, n_points=6, seed=5, eval_prompts=512)
    result = train(model, LinearRegression(1), train_config, progress=False)
    first, last = sum(result.loss[:100]) / 100, sum(result.loss[-100:]) / 100
    assert last < 0.9 * first
    assert result.evals[-1]["last_loop"] < 0.8 * result.evals[0]["last_loop"]


@pytest.mark.parametrize(
    "loss, supervise, grad_window", [("mae", "all", None), ("huber", "last", None), ("mse", "all", 2)]
)
def test_other_objectives_train(loss, supervise, grad_window):
    _, result = run(config(loss=loss, supervise=supervise, grad_window=grad_window, clip_grad_norm=1.0))
    assert result.status == "finished" and len(result.loss) == 12


def test_evaluate_extrapolate_and_validate_agree():
    model = build_model(MODEL, 0)
    heldout = heldout_prompts(TASK, 64, 8, seed=1)
    curve = extrapolate(model, heldout, [1, 2, 4])
    for index, b in enumerate([1, 2, 4]):
        metrics = evaluate(model, heldout, b)
        assert curve["reference"][index] == pytest.approx(metrics["reference"], rel=1e-5)
        assert curve["last_loop"][index] == pytest.approx(metrics["last_loop"], rel=1e-5)
    level2 = validate(
        model,
        TASK,
        b=2,
        n_points=8,
        seed=3,
        launches=4,
        batches_per_launch=2,
        batch_size=16,
        extrapolation_b=[1, 2],
        heldout=heldout,
    )
    stds = level2["launches"]["std"]
    assert len(stds) == 4 and all(0 <= s < 2 for s in stds)
    assert (
        level2["launches"]
        == validate(model, TASK, b=2, n_points=8, seed=3, launches=4, batches_per_launch=2, batch_size=16)["launches"]
    )
    assert level2["extrapolation"]["b"] == [1, 2]
    # The zero predictor scores std^2 (per dimension, y = x.w has variance d std^2): error grows with std.
    order = sorted(range(4), key=lambda i: stds[i])
    assert level2["launches"]["reference"][order[-1]] > level2["launches"]["reference"][order[0]]


def test_save_and_load_run_round_trip(tmp_path):
    model = build_model(MODEL, 0)
    save_run(tmp_path / "r", model, {"model_config": MODEL.to_dict(), "metrics": {"x": 1.0}})
    loaded, record = load_run(tmp_path / "r")
    assert record["metrics"] == {"x": 1.0}
    tokens, _ = TASK.sample(2, 8)
    torch.testing.assert_close(loaded(tokens, 2), model(tokens, 2))
    assert not list(tmp_path.glob("r/.*tmp"))


def test_svg_bytes_are_deterministic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(path):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [1, 4, 9], label="a")
        ax.fill_between([1, 2, 3], [0, 3, 8], [2, 5, 10], alpha=0.3)
        ax.set_yscale("log")
        ax.legend()
        save_svg(fig, path)
        plt.close(fig)
        return path.read_bytes()

    assert draw(tmp_path / "a.svg") == draw(tmp_path / "b.svg")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(steps=0), "TrainConfig.steps=0 must be an integer >= 1"),
        (dict(lr=0), "TrainConfig.lr=0 must be a finite number > 0"),
        (dict(lr=float("inf")), "TrainConfig.lr=inf must be a finite number > 0"),
        (dict(lr=True), "TrainConfig.lr=True must be a finite number > 0"),
        (dict(eval_seed="7"), "TrainConfig.eval_seed='7' must be an integer >= 0"),
        (dict(device="cuda:x"), "TrainConfig.device='cuda:x' is not allowed"),
        (dict(b=3, grad_window=4), "TrainConfig.grad_window=4 must be None or an integer in 1..b=3"),
        (dict(loss="l3"), "TrainConfig.loss='l3' is not allowed; choose one of"),
        (dict(supervise="first"), "TrainConfig.supervise='first' is not allowed; choose one of"),
        (dict(clip_grad_norm=0), "TrainConfig.clip_grad_norm=0 must be None or a finite number > 0"),
        (dict(device="tpu"), "TrainConfig.device='tpu' is not allowed; choose 'cpu', 'cuda' or 'cuda:N'"),
        (dict(threads=0), "TrainConfig.threads=0 must be None"),
        (dict(eval_every=0), r"TrainConfig.eval_every=0 must be in \(0, 1\]"),
        (dict(seed=-1), "TrainConfig.seed=-1 must be an integer >= 0"),
        (
            dict(b=3, loops_curriculum=(4, 10)),
            r"TrainConfig.loops_curriculum=\(4, 10\) must be None or \(b_start, every\)",
        ),
        (dict(loops_curriculum=(1, 0)), r"TrainConfig.loops_curriculum=\(1, 0\) must be None"),
        (dict(loops_random=("gaussian", 2)), r"TrainConfig.loops_random=\('gaussian', 2\) must be None, \('uniform'"),
        (dict(b=3, loops_random=("uniform", 4)), r"TrainConfig.loops_random=\('uniform', 4\) must be None"),
        (dict(loops_random=("poisson_lognormal", 2, 0.0)), r"loops_random=\('poisson_lognormal', 2, 0.0\) must be"),
        (
            dict(b=4, loops_random=("uniform", 1), loops_curriculum=(1, 3)),
            "TrainConfig.loops_random and loops_curriculum both set the loop count of a step; choose one",
        ),
        (
            dict(loops_curriculum=(1, 2, 0)),
            r"TrainConfig.loops_curriculum=\(1, 2, 0\) must be None or .* increment >= 1",
        ),
        (
            dict(lr_schedule="linear"),
            r"TrainConfig.lr_schedule='linear' is not allowed; choose one of \('constant', 'cosine'\)",
        ),
        (dict(warmup=1), r"TrainConfig.warmup=1 must be a fraction of the steps in \[0, 1\)"),
        (dict(warmup=-0.1), r"TrainConfig.warmup=-0.1 must be a fraction"),
        (dict(loops_curriculum=5), "TrainConfig.loops_curriculum=5 must be None"),
        (dict(n_points=8, points_curriculum=(9, 2, 1)), r"TrainConfig.points_curriculum=\(9, 2, 1\) must be None"),
        (dict(points_curriculum=(2, 2)), r"TrainConfig.points_curriculum=\(2, 2\) must be None"),
    ],
)
def test_train_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_train_rejects_bad_inputs_before_training():
    model = build_model(MODEL, 0)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="n_points=9 has 17 tokens, more than ModelConfig.context=15"):
        train(model, TASK, config(n_points=9), progress=False)
    with pytest.raises(ValueError, match="task.n_dims=4 differs from ModelConfig.n_dims=3"):
        train(model, LinearRegression(4), config(), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train(model, TASK, config(device="cuda"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))


def test_loops_curriculum_schedule_and_training():
    schedule = config(b=4, loops_curriculum=(1, 3))
    assert [schedule.loops_at(t) for t in range(12)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert config(b=4).loops_at(0) == 4
    # A curriculum that never leaves b=1 trains exactly as b=1 does (same data, same model).
    _, held_at_one = run(config(b=3, loops_curriculum=(1, 1000)))
    _, plain_one = run(config(b=1))
    assert held_at_one.loss == plain_one.loss
    _, growing = run(config(b=3, loops_curriculum=(1, 4)))
    assert growing.loss[:4] == plain_one.loss[:4] and growing.loss[4:] != plain_one.loss[4:]


def test_random_loop_counts_are_drawn_per_step_and_repeat_with_the_seed():
    uniform = config(b=6, loops_random=("uniform", 2))
    counts = [uniform.loops_at(t) for t in range(400)]
    assert set(counts) == {2, 3, 4, 5, 6} and counts == [uniform.loops_at(t) for t in range(400)]
    assert counts != [config(b=6, loops_random=("uniform", 2), seed=7).loops_at(t) for t in range(400)]
    heavy = config(b=50, loops_random=("poisson_lognormal", 8, 0.5))
    draws = np.array([heavy.loops_at(t) for t in range(4000)])
    assert draws.min() >= 1 and draws.max() <= 50 and abs(draws.mean() - 9) < 0.5  # 1 + a Poisson part of mean 8
    assert config(b=4, loops_random=("uniform", 4)).loops_at(3) == 4  # b_min = b: the fixed loop count


def test_random_loop_counts_with_truncated_backpropagation_train_and_resume_exactly(tmp_path):
    """Each step runs its own loop count, the gradient through its last grad_window loops only."""
    train_config = config(steps=20, b=5, grad_window=2, loops_random=("uniform", 1), checkpoint_every=5)
    reference_model, reference = run(train_config)
    assert all(math.isfinite(x) for x in reference.loss)
    _, fixed = run(config(steps=20, b=5, grad_window=2))
    assert reference.loss != fixed.loss  # the loop counts changed the losses
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(train_config, checkpoint=path, task=Interrupting(TASK, limit=13))
    resumed_draws = Interrupting(TASK, limit=10**6)  # counts the batches drawn
    resumed_model, resumed = run(train_config, checkpoint=path, task=resumed_draws)
    assert resumed_draws.calls < 20  # resumed: fewer batches than the 20 steps of a fresh run
    assert resumed.loss == reference.loss and resumed.evals == reference.evals


def test_the_loops_curriculum_can_grow_by_several_loops():
    schedule = config(b=4, loops_curriculum=(1, 3, 2))
    assert [schedule.loops_at(t) for t in range(10)] == [1, 1, 1, 3, 3, 3, 4, 4, 4, 4]
    assert config(b=4, loops_curriculum=(1, 3, 1)).loops_at(5) == config(b=4, loops_curriculum=(1, 3)).loops_at(5)


def test_learning_rate_schedules():
    warm_constant = config(steps=10, lr=1.0, warmup=0.2)
    assert [warm_constant.lr_at(t) for t in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = config(steps=12, lr=1.0, lr_schedule="cosine", warmup=1 / 6)  # 2 warm-up steps, 10 decaying
    assert [cosine.lr_at(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert cosine.lr_at(7) == pytest.approx(0.5)  # half-way through the decay
    assert 0 < cosine.lr_at(11) < 0.03 and all(cosine.lr_at(t) > cosine.lr_at(t + 1) for t in range(2, 11))
    assert config(lr=3e-3).lr_at(5) == 3e-3  # the default: constant, no warm-up


def test_every_step_trains_at_its_scheduled_learning_rate():
    """Step t of a warm-up run moves the weights as a constant run at lr_at(t) would: the first
    step of a 4-step warm-up to 3e-3 is a step at 7.5e-4."""
    warm = config(steps=8, warmup=0.5)
    _, warmed = run(warm)
    _, slow = run(config(steps=8, lr=warm.lr_at(0)))
    _, fast = run(config(steps=8))
    assert warmed.loss[:2] == slow.loss[:2]  # the loss of step 1 is measured after the step at lr_at(0)
    assert warmed.loss[1] != fast.loss[1]


def test_points_curriculum_schedule_and_training():
    schedule = config(n_points=8, points_curriculum=(3, 2, 2))
    assert [schedule.points_at(t) for t in range(8)] == [3, 3, 5, 5, 7, 7, 8, 8]
    # A curriculum that stays at 4 points trains exactly as 4-point prompts do.
    _, held_at_four = run(config(n_points=8, points_curriculum=(4, 1000, 1)))
    _, plain_four = run(config(n_points=4))
    assert held_at_four.loss == plain_four.loss


# ----------------------------------------------------------------------------- dimension curriculum and metrics


class RecordingTask(LinearRegression):
    """Linear regression that remembers the active_dims of every training batch."""

    def __init__(self, n_dims):
        super().__init__(n_dims)
        object.__setattr__(self, "calls", [])

    def sample(self, batch_size, n_points, generator=None, active_dims=None):
        self.calls.append(active_dims)
        tokens, ys = super().sample(batch_size, n_points, generator)
        if active_dims is not None:  # what a task does with it: zero the later coordinates
            tokens[:, 0::2, active_dims:] = 0
        return tokens, ys


def test_dims_curriculum_schedule_and_training_batches():
    config = TrainConfig(steps=9, batch_size=2, b=1, n_points=4, eval_prompts=4, dims_curriculum=(1, 3, 1))
    assert [config.dims_at(step, 3) for step in range(9)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert TrainConfig(steps=1).dims_at(5, 3) == 3  # no curriculum: every dimension
    task = RecordingTask(3)
    model = build_model(ModelConfig(n_dims=3, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=8, context=7), 0)
    train(model, task, config, progress=False)
    training_calls = [call for call in task.calls if call is not None]
    assert training_calls == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # validation draws use every dimension (None)
    with pytest.raises(ValueError, match=r"TrainConfig.dims_curriculum=\(4, 3, 1\) starts above task.n_dims=3"):
        train(model, task, TrainConfig(steps=2, n_points=4, eval_prompts=4, dims_curriculum=(4, 3, 1)), progress=False)
    with pytest.raises(ValueError, match=r"TrainConfig.dims_curriculum=\(0, 3, 1\) must be None or \(d_start, every"):
        TrainConfig(steps=2, dims_curriculum=(0, 3, 1))


def test_error_scale_divides_every_metric():
    model = build_model(MODEL, 1)
    tokens, ys = TASK.sample(16, 8, make_generator(0, "validation"))
    by_dims = prediction_errors(model, tokens, ys, 2)
    torch.testing.assert_close(prediction_errors(model, tokens, ys, 2, scale=1.0), by_dims * MODEL.n_dims)
    per_prompt = prompt_errors(model, tokens, ys, 2)  # [prompts, P]
    assert per_prompt.shape == (16, 8)
    torch.testing.assert_close(per_prompt.mean(0), by_dims[-1])


def test_bootstrap_band_brackets_the_mean_and_narrows_with_more_prompts():
    rng = np.random.default_rng(0)
    few, many = rng.exponential(size=(50, 3)), rng.exponential(size=(5000, 3))
    band_few, band_many = bootstrap_band(few), bootstrap_band(many)
    assert bootstrap_band(few) == band_few  # fixed seed: the band repeats
    for band in (band_few, band_many):
        assert all(lo < m < hi for lo, m, hi in zip(band["low"], band["mean"], band["high"], strict=True))
    width = lambda band: np.subtract(band["high"], band["low"]).mean()
    # The standard error falls as 1/sqrt(n): 100 times more prompts, a band about 10 times narrower.
    assert 5 < width(band_few) / width(band_many) < 20
    np.testing.assert_allclose(band_few["mean"], few.mean(0))
    with pytest.raises(ValueError, match="bootstrap_band needs at least 2 prompts, got 1"):
        bootstrap_band(few[:1])


def test_state_updates_vanish_without_recurrence_and_not_with_it():
    tokens, _ = TASK.sample(8, 8, make_generator(0, "validation"))
    looped = build_model(MODEL, 1)
    updates = state_updates(looped, tokens, 4)
    assert updates.shape == (4,) and updates[0].item() == pytest.approx(1.0)
    assert (updates[1:] > 1e-3).all()
    # Carrying no state makes every loop compute the same state: the updates after loop 1 are 0.
    frozen = build_model(dataclasses.replace(MODEL, state_keep="last_in_place", state_fraction=0.0), 1)
    assert state_updates(frozen, tokens, 4)[1:].abs().max() < 1e-6


def test_evaluation_helpers_restore_the_training_mode_when_they_raise():
    model = build_model(MODEL, 0).train()
    tokens, ys = TASK.sample(4, 8, make_generator(0, "validation"))
    with pytest.raises(ValueError, match="tokens must have shape"):
        prediction_errors(model, tokens[..., :2], ys, 2)  # wrong n_dims: the forward raises
    assert model.training
    model.eval()
    prediction_errors(model, tokens, ys, 2)
    assert not model.training


def test_a_checkpoint_of_another_spec_is_set_aside_not_resumed(tmp_path):
    # The interrupted run had lr 3e-3; the re-run under the same checkpoint path has lr 1e-3 and
    # fewer steps. Resuming would continue the old state and report the new spec.
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(config(steps=20, checkpoint_every=5), checkpoint=path, task=Interrupting(TASK, limit=13))
    changed = config(steps=10, lr=1e-3, checkpoint_every=5)
    _, fresh = run(changed)
    with pytest.warns(UserWarning, match="belongs to another run .* set aside as run.ckpt.set-aside"):
        _, rerun = run(changed, checkpoint=path)
    assert rerun.loss == fresh.loss and len(rerun.loss) == 10
    assert (tmp_path / "run.ckpt.set-aside").exists()


def test_a_checkpoint_of_another_task_is_set_aside_not_resumed(tmp_path):
    from tasks import NoisyLinearRegression

    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        run(config(steps=20, checkpoint_every=5), checkpoint=path, task=Interrupting(TASK, limit=13))
    noisy = NoisyLinearRegression(n_dims=3, noise_std=0.5)  # same model and training config, another task
    _, fresh = run(config(steps=20, checkpoint_every=5), task=noisy)
    with pytest.warns(UserWarning, match="belongs to another run .* set aside"):
        _, rerun = run(config(steps=20, checkpoint_every=5), checkpoint=path, task=noisy)
    assert rerun.loss == fresh.loss


def test_a_corrupt_checkpoint_is_named_set_aside_and_the_run_restarts(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"not a checkpoint")
    _, fresh = run(config())
    with pytest.warns(UserWarning, match=r"checkpoint .*run.ckpt cannot be read"):
        _, rerun = run(config(), checkpoint=path)
    assert rerun.loss == fresh.loss
    assert (tmp_path / "run.ckpt.set-aside").read_bytes() == b"not a checkpoint"


def test_long_loops_need_a_gradient_window_before_training():
    long = ModelConfig(n_dims=3, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=15)
    with pytest.raises(ValueError, match=r"TrainConfig.b=400 with grad_window=None backpropagates through 400 loops"):
        train(build_model(long, 0), TASK, config(b=400), progress=False)
    result = train(build_model(long, 0), TASK, config(b=400, grad_window=4, steps=1), progress=False)
    assert result.status == "finished"
    # a fixed-point solve with the implicit gradient stores no loop, whatever its iteration cap b
    normalised = dataclasses.replace(long, final_norm=True)
    solve = config(b=400, steps=1, solver="fixed_point", supervise="last")
    assert train(build_model(normalised, 0), TASK, solve, progress=False).status in ("finished", "diverged")
    with pytest.raises(ValueError, match="backpropagates through 400 loops"):  # unless it pretrains unrolled
        train(build_model(normalised, 0), TASK, dataclasses.replace(solve, solver_pretrain=0.5), progress=False)


def test_step_times_times_every_run_on_one_thread_and_leaves_the_thread_count():
    threads = torch.get_num_threads()
    wide = dataclasses.replace(MODEL, hidden_dim=32, mlp_hidden=64)
    times = step_times({"narrow": (MODEL, config(), TASK), "wide": (wide, config(b=5), TASK)}, steps=2, warmup=1)
    assert list(times) == ["narrow", "wide"]
    assert all(math.isfinite(ms) and ms > 0 for ms in times.values())
    assert torch.get_num_threads() == threads
    for bad in (dict(steps=0), dict(warmup=-1), dict(steps=1.5)):
        with pytest.raises(ValueError, match="step_times: steps="):
            step_times({"narrow": (MODEL, config(), TASK)}, **bad)
