"""Quickstart: train one looped model on 5-dim linear regression and compare with baselines.

The README's "does it learn?" check: n_dims 5, 15 in-context examples (P = 16), hidden 64,
4 heads, 1 layer, b = 10, on one CPU thread. Prints the last-position error per dimension
of the trained model (last loop) next to least squares and averaging on 1280 fresh prompts.

    python scripts/quickstart.py [--steps 3000] [--seed 0]

`--steps 2` is the smoke size (tests/test_scripts.py).
"""

import argparse
import time

from baselines import averaging, least_squares
from tasks import LinearRegression, build_prompt
from transformer import ModelConfig, count_parameters
from utils import TrainConfig, build_model, make_generator, prediction_errors, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = LinearRegression(n_dims=5)
    model_config = ModelConfig(n_dims=5, n_layers=1, n_heads=4, hidden_dim=64, mlp_hidden=256, context=31)
    train_config = TrainConfig(steps=args.steps, batch_size=64, lr=1e-3, b=10, n_points=16, seed=args.seed)
    model = build_model(model_config, train_config.seed)
    print(f"model: {count_parameters(model):,} parameters; {train_config}")

    started = time.perf_counter()
    result = train(model, task, train_config, run=None, progress=False)
    print(f"trained {len(result.loss)} steps in {time.perf_counter() - started:.0f} s, status {result.status}")
    for entry in result.evals:
        print(
            f"  step {entry['step']:>6}: held-out query error (mean over loops) {entry['reference']:.4f},"
            f" last loop {entry['last_loop']:.4f}"
        )

    xs, ys = task.sample_xy(1280, train_config.n_points, make_generator(12345, "validation"))
    model_error = prediction_errors(model, build_prompt(xs, ys), ys, train_config.b)[-1, -1].item()
    for name, estimator in (("least squares", least_squares), ("averaging", averaging)):
        error = ((estimator(xs, ys)[:, -1] - ys[:, -1]).square().mean() / task.n_dims).item()
        print(f"{name:>14}: last-position error per dimension {error:.4f}")
    print(f"{'looped model':>14}: last-position error per dimension {model_error:.4f} (loop b={train_config.b})")


if __name__ == "__main__":
    main()
