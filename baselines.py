"""Classical in-context estimators, the baselines a looped model is compared against.

Owns every estimator and `baseline_position_errors`. Each estimator takes xs [B, P, d] and
ys [B, P] and returns predictions [B, P]; the prediction at position i uses only
(xs[:, :i], ys[:, :i]) and xs[:, i], exactly like the model. Position 0 predicts 0. They work
in float64 so that least squares is exact to rounding once i >= d.
"""

from __future__ import annotations

import torch


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
