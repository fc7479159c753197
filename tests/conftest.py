"""Test set-up: one torch thread per test process, and `ROOT`, the repository root, for tests that
run files of the checkout (scripts, benchmarks, notebooks). The library itself is imported as an
installed project (`pip install -r requirements.txt` installs it with `-e .`)."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def separate_results_root(tmp_path, monkeypatch):
    """Every test writes scratch output (the runner's store of trained runs included) under its own
    temporary folder, so no test reuses another's training."""
    monkeypatch.setenv("LOOPED_RESULTS_ROOT", str(tmp_path / "results root"))


def tiny_specs(seeds, steps: int = 4, launches: int = 1) -> list:
    """RunSpecs of a 2-dimensional toy model, one per seed, named `tiny_<seed>` (seconds to train)."""
    from runner import EvalConfig, RunSpec
    from tasks import LinearRegression
    from transformer import ModelConfig
    from utils import TrainConfig

    model = ModelConfig(n_dims=2, n_layers=1, n_heads=2, hidden_dim=8, mlp_hidden=16, context=9)
    return [
        RunSpec(
            name=f"tiny_{seed}",
            model=model,
            task=LinearRegression(2).to_dict(),
            train=TrainConfig(steps=steps, batch_size=4, b=2, n_points=5, seed=seed, eval_prompts=8),
            evaluation=EvalConfig(launches=launches, batches_per_launch=1, batch_size=8, extrapolation_b=(1, 2)),
            labels={"model": "tiny", "seed": seed},
        )
        for seed in seeds
    ]


def interrupt_at(monkeypatch, stepper_class: type, step: int):
    """Make `stepper_class.step` raise KeyboardInterrupt at training step `step`, like a kill in the
    middle of training; returns the real `step` (to restore it, or to wrap it)."""
    real_step = stepper_class.step

    def step_or_interrupt(self, done):
        if done == step:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, done)

    monkeypatch.setattr(stepper_class, "step", step_or_interrupt)
    return real_step
