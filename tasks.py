"""In-context tasks: function classes, the prompt layout, and classical baselines.

Owns how a prompt is made (sample x's, sample a function f, lay out x_1, f(x_1), ..., x_P as
tokens) and the estimators a looped model is compared against. Every estimator predicts y_i
at each prefix position i from the pairs (x_j, y_j), j < i, exactly like the model does.

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


# ----------------------------------------------------------------------------- baselines
# Each takes xs [B, P, d] and ys [B, P] and returns predictions [B, P]; the prediction at
# position i uses only (xs[:, :i], ys[:, :i]) and xs[:, i]. Position 0 predicts 0. They work
# in float64 so that least squares is exact to rounding once i >= d.


def _prefix_linear_fit(xs: torch.Tensor, ys: torch.Tensor, solve) -> torch.Tensor:
    xs64, ys64 = xs.double(), ys.double()
    preds = torch.zeros_like(ys64)  # [B, P]
    for i in range(1, xs.shape[1]):
        w = solve(xs64[:, :i], ys64[:, :i])  # [B, d]
        preds[:, i] = (xs64[:, i] * w).sum(-1)
    return preds.to(ys.dtype)


def least_squares(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares on the prefix (pseudo-inverse)."""
    return _prefix_linear_fit(xs, ys, lambda x, y: (torch.linalg.pinv(x) @ y.unsqueeze(-1)).squeeze(-1))


def ridge(xs: torch.Tensor, ys: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Ridge regression w = (X^T X + alpha I)^-1 X^T y on the prefix."""
    if not alpha > 0:
        raise ValueError(f"ridge alpha={alpha!r} must be > 0")

    def solve(x, y):
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        gram = x.transpose(1, 2) @ x + alpha * eye  # [B, d, d]
        return torch.linalg.solve(gram, (x.transpose(1, 2) @ y.unsqueeze(-1))).squeeze(-1)

    return _prefix_linear_fit(xs, ys, solve)


def averaging(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """w = mean_j y_j x_j (Garg et al.'s averaging estimator), then predict x_i . w."""
    return _prefix_linear_fit(xs, ys, lambda x, y: (x * y.unsqueeze(-1)).mean(1))


def nearest_neighbours(xs: torch.Tensor, ys: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean y of the k nearest prefix x's (all of them while fewer than k are known)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"nearest_neighbours k={k!r} must be an integer >= 1")
    xs64, ys64 = xs.double(), ys.double()
    preds = torch.zeros_like(ys64)
    for i in range(1, xs.shape[1]):
        dist = (xs64[:, :i] - xs64[:, i : i + 1]).square().sum(-1)  # [B, i]
        nearest = dist.topk(min(k, i), dim=1, largest=False).indices  # [B, k]
        preds[:, i] = ys64[:, :i].gather(1, nearest).mean(1)
    return preds.to(ys.dtype)


BASELINES = {
    "least squares": least_squares,
    "ridge (alpha=0.1)": ridge,
    "averaging": averaging,
    "3-nearest neighbours": nearest_neighbours,
}


def baseline_position_errors(
    tokens: torch.Tensor, ys: torch.Tensor, names: tuple[str, ...] = ("least squares", "averaging")
) -> dict[str, list[float]]:
    """Squared error / n_dims of each named baseline at every position, averaged over prompts."""
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {tuple(BASELINES)}")
    xs = tokens[:, 0::2]  # the x tokens [B, P, d]
    n_dims = tokens.shape[-1]
    return {name: ((BASELINES[name](xs, ys) - ys).square().mean(0) / n_dims).tolist() for name in names}
