"""In-context tasks: function classes, the prompt layout, and classical baselines.

Owns how a prompt is made (sample x's, sample a function f, lay out x_1, f(x_1), ..., x_P as
tokens). The estimators a looped model is compared against live in `baselines.py`.

Token layout (seed 000): x_1, y_1, x_2, y_2, ..., x_P with the final y dropped, 2P-1 tokens of
width n_dims; each y token holds y in channel 0 and zeros elsewhere. P = N + 1 (N in-context
examples plus the query).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


def build_prompt(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Interleave xs [B, P, d] and ys [B, P] into tokens [B, 2P-1, d] (final y dropped)."""
    batch, n_points, n_dims = xs.shape
    y_tokens = torch.zeros_like(xs)  # [B, P, d]
    y_tokens[..., 0] = ys
    tokens = torch.stack([xs, y_tokens], dim=2).reshape(batch, 2 * n_points, n_dims)  # [B, 2P, d]
    return tokens[:, :-1]  # [B, 2P-1, d]


def _check_sizes(batch_size: int, n_points: int) -> None:
    for name, value in (("batch_size", batch_size), ("n_points", n_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")


@dataclass(frozen=True)
class LinearRegression:
    """y = x . w with w ~ N(0, I) and x ~ N(x_mean, x_std^2 I); no noise.

    `sample` returns (tokens [B, 2P-1, n_dims], ys [B, P]); `sample_xy` the raw (xs, ys).
    The generator decides device and stream; the same generator state gives the same prompts.
    """

    n_dims: int
    x_mean: float = 0.0
    x_std: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.n_dims, bool) or not isinstance(self.n_dims, int) or self.n_dims < 1:
            raise ValueError(f"LinearRegression.n_dims={self.n_dims!r} must be an integer >= 1")
        if not self.x_std >= 0:
            raise ValueError(f"LinearRegression.x_std={self.x_std!r} must be >= 0")

    def sample_xy(
        self, batch_size: int, n_points: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_sizes(batch_size, n_points)
        device = generator.device if generator is not None else torch.device("cpu")
        xs = torch.randn(batch_size, n_points, self.n_dims, generator=generator, device=device)
        xs = self.x_mean + self.x_std * xs  # [B, P, d]
        w = torch.randn(batch_size, self.n_dims, 1, generator=generator, device=device)  # [B, d, 1]
        ys = (xs @ w).squeeze(-1)  # [B, P]
        return xs, ys

    def sample(
        self, batch_size: int, n_points: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = self.sample_xy(batch_size, n_points, generator)
        return build_prompt(xs, ys), ys

    def with_x_std(self, x_std: float) -> LinearRegression:
        return LinearRegression(self.n_dims, self.x_mean, x_std)

    def to_dict(self) -> dict:
        return {"name": type(self).__name__, **asdict(self)}


TASKS = {"LinearRegression": LinearRegression}


def task_from_dict(spec: dict):
    """Rebuild a task from `task.to_dict()`."""
    spec = dict(spec)
    name = spec.pop("name")
    if name not in TASKS:
        raise ValueError(f"task name {name!r} is not known; choose one of {tuple(TASKS)}")
    return TASKS[name](**spec)
