"""In-context tasks: the prompt layout, the function classes and the out-of-distribution prompts.

Owns how a prompt is made (sample x's, sample a function f, lay out x_1, f(x_1), ..., x_P as
tokens), the function classes of Garg et al. 2022 (arXiv 2208.01066) and their out-of-distribution
(OOD) prompt suite. The estimators a looped model is compared against live in `baselines.py`.

Token layout (the Laptev study's): x_1, y_1, x_2, y_2, ..., x_P with the final y dropped, 2P-1 tokens of
width n_dims; each y token holds y in channel 0 and zeros elsewhere. P = N + 1 (N in-context
examples plus the query).

A `Task` owns the x's (x ~ N(x_mean, x_std^2 I), or with the fixed diagonal covariance
x_std^2 diag(x_variances) for ill-conditioned inputs; optionally with only the first `active_dims`
coordinates non-zero: the paper's dimension curriculum) and the layout; a subclass only says how
one random function per prompt is drawn and applied (`labels`). Every draw comes from the given
generator on its device, in a fixed order, so the same generator state gives the same prompts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Self

import torch

from checks import is_int, is_real, require_int


def build_prompt(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Interleave xs [B, P, d] and ys [B, P] into tokens [B, 2P-1, d] (final y dropped)."""
    batch, n_points, n_dims = xs.shape
    y_tokens = torch.zeros_like(xs)  # [B, P, d]
    y_tokens[..., 0] = ys
    tokens = torch.stack([xs, y_tokens], dim=2).reshape(batch, 2 * n_points, n_dims)  # [B, 2P, d]
    return tokens[:, :-1]  # [B, 2P-1, d]


def _check_sizes(batch_size: int, n_points: int) -> None:
    for name, value in (("batch_size", batch_size), ("n_points", n_points)):
        require_int(name, value)


def _device(generator: torch.Generator | None, fallback: torch.device | None = None) -> torch.device:
    """The device draws happen on: the generator's (its stream is device-specific)."""
    if generator is not None:
        return generator.device
    return fallback if fallback is not None else torch.device("cpu")


def _random_orthonormal(
    batch_size: int, n_dims: int, n_cols: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Haar-random orthonormal columns [B, n_dims, n_cols]: QR of a Gaussian with R's diagonal made positive."""
    gaussian = torch.randn(batch_size, n_dims, n_cols, generator=generator, device=device)  # [B, d, k]
    q, r = torch.linalg.qr(gaussian)  # [B, d, k], [B, k, k]
    # QR is unique only up to column signs; fixing diag(R) > 0 makes Q Haar-distributed (spans and
    # Q diag(lambda) Q^T, what the OOD kinds use, do not depend on the signs).
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)  # [B, k]
    return q * signs.unsqueeze(1)  # [B, d, k]


# ----------------------------------------------------------------------------- function classes


@dataclass(frozen=True)
class Task:
    """x ~ N(x_mean, x_std^2 I) in n_dims dimensions and one random function per prompt.

    `x_variances` (None, or one variance per coordinate) makes the inputs' covariance
    x_std^2 diag(x_variances), the same for every prompt: skewed inputs to train and test on
    (a fixed rotation would change nothing, as w ~ N(0, I) is rotation-invariant). `error_scale`
    stays n_dims, so give variances that sum to n_dims to keep E[y^2] = n_dims for the linear
    classes.

    `sample` returns (tokens [B, 2P-1, n_dims], ys [B, P]); `sample_xy` the raw (xs [B, P, d], ys).
    A subclass defines `labels(xs, generator) -> ys [B, P]`: it draws the prompt's function and
    applies it. `error_scale` is what squared errors are divided by (the error of predicting 0,
    E[y^2], for the in-distribution x's).
    """

    n_dims: int
    x_mean: float = 0.0
    x_std: float = 1.0
    x_variances: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not is_int(self.n_dims) or self.n_dims < 1:
            self._fail("n_dims", "must be an integer >= 1")
        if not is_real(self.x_mean):
            self._fail("x_mean", "must be a finite real number")
        if not (is_real(self.x_std) and self.x_std >= 0):
            self._fail("x_std", "must be >= 0 (a finite real number)")
        if self.x_variances is not None:
            if isinstance(self.x_variances, (str, bytes)) or not hasattr(self.x_variances, "__len__"):
                self._fail("x_variances", "must be None or a sequence of n_dims variances > 0")
            object.__setattr__(self, "x_variances", tuple(self.x_variances))  # a record's list reads back as a tuple
            if len(self.x_variances) != self.n_dims or not all(is_real(v) and v > 0 for v in self.x_variances):
                self._fail("x_variances", f"must be None or {self.n_dims} (n_dims) finite variances > 0")

    def _fail(self, name: str, rule: str) -> None:
        raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r} {rule}")

    @property
    def error_scale(self) -> float:
        return float(self.n_dims)

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one function per prompt and apply it: xs [B, P, d] -> ys [B, P]."""
        raise NotImplementedError(f"{type(self).__name__} does not define labels")

    def sample_xy(
        self,
        batch_size: int,
        n_points: int,
        generator: torch.Generator | None = None,
        active_dims: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x's [B, P, d] ~ N(x_mean, x_std^2 I) and their labels [B, P]; with `active_dims`, only the
        first `active_dims` coordinates of x vary (the others are 0: the dimension curriculum)."""
        _check_sizes(batch_size, n_points)
        if active_dims is not None and (not is_int(active_dims) or not 1 <= active_dims <= self.n_dims):
            raise ValueError(f"active_dims={active_dims!r} must be None or an integer in [1, n_dims={self.n_dims}]")
        xs = torch.randn(batch_size, n_points, self.n_dims, generator=generator, device=_device(generator))
        if self.x_variances is not None:
            xs = xs * torch.tensor(self.x_variances, device=xs.device).sqrt()  # [B, P, d] ~ N(0, diag(x_variances))
        xs = self.x_mean + self.x_std * xs  # [B, P, d]
        if active_dims is not None:
            xs[..., active_dims:] = 0.0  # the dimension curriculum: only the first active_dims coordinates vary
        return xs, self.labels(xs, generator)

    def sample(
        self, batch_size: int, n_points: int, generator: torch.Generator | None = None, **options
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of prompts: (tokens [B, 2P-1, d], ys [B, P]); options (`active_dims`) as in `sample_xy`."""
        xs, ys = self.sample_xy(batch_size, n_points, generator, **options)
        return build_prompt(xs, ys), ys

    def with_x_std(self, x_std: float) -> Self:
        return replace(self, x_std=x_std)

    def to_dict(self) -> dict:
        """{"name": the class, every field}; `x_variances` only when set, so that the records written
        before the field existed still equal their specs."""
        values = asdict(self)
        if values["x_variances"] is None:
            del values["x_variances"]
        else:
            values["x_variances"] = list(values["x_variances"])
        return {"name": type(self).__name__, **values}


def _linear_labels(xs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """y = x . w with w ~ N(0, I) per prompt; xs [B, P, d] -> ys [B, P]."""
    batch, _, n_dims = xs.shape
    w = torch.randn(batch, n_dims, 1, generator=generator, device=_device(generator, xs.device), dtype=xs.dtype)
    return (xs @ w).squeeze(-1)  # [B, P]


@dataclass(frozen=True)
class LinearRegression(Task):
    """y = x . w with w ~ N(0, I) per prompt; no noise. Draws: xs, then w [B, d, 1]."""

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return _linear_labels(xs, generator)  # [B, P]


@dataclass(frozen=True)
class NoisyLinearRegression(Task):
    """y = x . w + noise_std * N(0, 1) on every point, w ~ N(0, I) per prompt. Draws: xs, w, noise.

    With noise_std=0 the prompts are LinearRegression's for the same generator.
    """

    noise_std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (is_real(self.noise_std) and self.noise_std >= 0):
            self._fail("noise_std", "must be >= 0 (a finite real number)")

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        ys = _linear_labels(xs, generator)  # [B, P]
        noise = torch.randn(ys.shape, generator=generator, device=_device(generator, xs.device), dtype=xs.dtype)
        return ys + self.noise_std * noise  # [B, P]


@dataclass(frozen=True)
class SparseLinearRegression(Task):
    """y = x . w with w ~ N(0, I) and all but `sparsity` coordinates (chosen per prompt) zeroed.

    error_scale is `sparsity` (E[y^2] = k for x ~ N(0, I)). Draws: xs, w, then the support.
    """

    sparsity: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.sparsity) or not 1 <= self.sparsity <= self.n_dims:
            self._fail("sparsity", f"must be an integer in [1, n_dims={self.n_dims}]")

    @property
    def error_scale(self) -> float:
        return float(self.sparsity)

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, _, n_dims = xs.shape
        device = _device(generator, xs.device)
        w = torch.randn(batch, n_dims, 1, generator=generator, device=device, dtype=xs.dtype)  # [B, d, 1]
        # A uniformly random k-subset per prompt without a Python loop: the k smallest of d uniforms.
        order = torch.rand(batch, n_dims, generator=generator, device=device).argsort(dim=1)  # [B, d]
        keep = torch.zeros(batch, n_dims, dtype=torch.bool, device=device)
        keep.scatter_(1, order[:, : self.sparsity], True)  # [B, d]
        return (xs @ (w * keep.unsqueeze(-1))).squeeze(-1)  # [B, P]


@dataclass(frozen=True)
class ReLUNetwork(Task):
    """f(x) = sqrt(2 / hidden) * sum_j a_j relu(w_j . x), w_j ~ N(0, I_d), a_j ~ N(0, 1), per prompt.

    The sqrt(2 / hidden) makes E[y^2] = d for x ~ N(0, I), so error_scale is n_dims as for linear
    regression. Draws: xs, W [B, hidden, d], then a [B, hidden].
    """

    hidden: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.hidden) or self.hidden < 1:
            self._fail("hidden", "must be an integer >= 1")

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, _, n_dims = xs.shape
        device = _device(generator, xs.device)
        w = torch.randn(batch, self.hidden, n_dims, generator=generator, device=device, dtype=xs.dtype)  # [B, h, d]
        a = torch.randn(batch, self.hidden, 1, generator=generator, device=device, dtype=xs.dtype)  # [B, h, 1]
        hidden = torch.relu(xs @ w.transpose(1, 2))  # [B, P, h]
        return math.sqrt(2.0 / self.hidden) * (hidden @ a).squeeze(-1)  # [B, P]


@dataclass(frozen=True)
class DecisionTree(Task):
    """A full binary tree of `depth` per prompt: each internal node tests x[c] > 0 (go right) for a
    coordinate c uniform in 0..d-1, each of the 2^depth leaves holds a value ~ N(0, 1); y = the leaf
    x reaches. error_scale is 1 (E[y^2] = 1). Draws: xs, node coordinates [B, 2^depth - 1], leaves.

    Nodes are stored in heap order (node i has children 2i+1, 2i+2), so a batch walks down the tree
    together: one gather per level, no loop over prompts.
    """

    depth: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_int(self.depth) or self.depth < 1:
            self._fail("depth", "must be an integer >= 1")

    @property
    def error_scale(self) -> float:
        return 1.0

    def labels(self, xs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, n_points, n_dims = xs.shape
        device = _device(generator, xs.device)
        n_internal = 2**self.depth - 1
        coords = torch.randint(0, n_dims, (batch, n_internal), generator=generator, device=device)  # [B, 2^D-1]
        leaves = torch.randn(batch, n_internal + 1, generator=generator, device=device, dtype=xs.dtype)  # [B, 2^D]
        node = torch.zeros(batch, n_points, dtype=torch.long, device=xs.device)  # [B, P] heap index
        for _ in range(self.depth):
            coord = coords.to(xs.device).gather(1, node)  # [B, P] the coordinate each point's node tests
            right = xs.gather(2, coord.unsqueeze(-1)).squeeze(-1) > 0  # [B, P]
            node = 2 * node + 1 + right.long()
        return leaves.to(xs.device).gather(1, node - n_internal)  # [B, P]


TASKS: dict[str, type[Task]] = {
    cls.__name__: cls
    for cls in (LinearRegression, NoisyLinearRegression, SparseLinearRegression, ReLUNetwork, DecisionTree)
}


def task_from_dict(spec: dict) -> Task:
    """Rebuild a task from `task.to_dict()`."""
    spec = dict(spec)
    name = spec.pop("name")
    if name not in TASKS:
        raise ValueError(f"task name {name!r} is not known; choose one of {tuple(TASKS)}")
    return TASKS[name](**spec)


# ----------------------------------------------------------------------------- out-of-distribution prompts

OOD_KINDS = (
    "random_quadrants",
    "opposite_quadrants",
    "orthogonal_query",
    "query_from_context",
    "half_subspace",
    "skewed_covariance",
    "scaled_x",
    "scaled_y",
    "label_noise",
)


def sample_ood_xy(
    task: Task,
    kind: str,
    batch_size: int,
    n_points: int,
    generator: torch.Generator | None = None,
    scale: float = 2.0,
    noise_std: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw (xs [B, P, d], ys [B, P]) of an OOD prompt; see `sample_ood`."""
    if kind not in OOD_KINDS:
        raise ValueError(f"kind={kind!r} is not known; choose one of {OOD_KINDS}")
    if task.x_variances is not None:
        raise ValueError(f"{type(task).__name__}.x_variances is set: the OOD kinds change isotropic x's only")
    _check_sizes(batch_size, n_points)
    if not (is_real(scale) and scale > 0):
        raise ValueError(f"scale={scale!r} must be a finite real number > 0")
    if not (is_real(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std={noise_std!r} must be >= 0 (a finite real number)")
    n_dims, device = task.n_dims, _device(generator)

    # The y-changes and scaled_x start from the task's own prompt (same draws in the same order), so
    # for one generator state they differ from `task.sample_xy` only by the change itself.
    if kind in ("scaled_y", "label_noise"):
        xs, ys = task.sample_xy(batch_size, n_points, generator)
        if kind == "scaled_y":
            return xs, scale * ys
        noise = torch.randn(ys.shape, generator=generator, device=device, dtype=ys.dtype)  # [B, P]
        return xs, ys + noise_std * noise

    if kind == "orthogonal_query" and n_points > n_dims:
        raise ValueError(f"orthogonal_query needs n_points <= n_dims; got n_points={n_points}, n_dims={n_dims}")
    if kind == "query_from_context" and n_points < 2:
        raise ValueError(f"query_from_context needs n_points >= 2 (a context to copy); got n_points={n_points}")
    if kind == "half_subspace" and n_dims < 2:
        raise ValueError(f"half_subspace needs n_dims >= 2 (a subspace of dimension n_dims // 2); got n_dims={n_dims}")

    # The geometry is imposed on standardised x's z ~ N(0, I); x = x_mean + x_std * z afterwards, so
    # orthants, orthogonality and subspaces are about x - x_mean, and x_std keeps its meaning.
    if kind == "half_subspace":
        z = torch.randn(batch_size, n_points, n_dims // 2, generator=generator, device=device)  # [B, P, d/2]
        basis = _random_orthonormal(batch_size, n_dims, n_dims // 2, generator, device)  # [B, d, d/2]
        z = z @ basis.transpose(1, 2)  # [B, P, d]
    else:
        z = torch.randn(batch_size, n_points, n_dims, generator=generator, device=device)  # [B, P, d]

    if kind in ("random_quadrants", "opposite_quadrants"):
        signs = torch.randint(0, 2, (batch_size, 1, n_dims), generator=generator, device=device) * 2 - 1  # [B, 1, d]
        orthant = z.abs() * signs  # [B, P, d]
        z = torch.cat([orthant[:, :-1], z[:, -1:] if kind == "random_quadrants" else -orthant[:, -1:]], dim=1)
    elif kind == "orthogonal_query":
        # Gram-Schmidt of z_1..z_P is Q of z's QR with diag(R) > 0; each point keeps its Gaussian norm.
        q, r = torch.linalg.qr(z.transpose(1, 2))  # [B, d, P], [B, P, P]
        signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0)  # [B, P]
        z = (q * signs.unsqueeze(1)).transpose(1, 2) * z.norm(dim=-1, keepdim=True)  # [B, P, d]
    elif kind == "query_from_context":
        # Only the query copies (a uniformly chosen context point): were every x_i a copy of an
        # earlier one, all of a prompt's x's would equal x_1.
        source = torch.randint(0, n_points - 1, (batch_size,), generator=generator, device=device)  # [B]
        z = z.clone()
        z[:, -1] = z[torch.arange(batch_size, device=device), source]
    elif kind == "skewed_covariance":
        eigenvalues = 1.0 / torch.arange(1, n_dims + 1, device=device, dtype=z.dtype)  # [d]
        eigenvalues = eigenvalues * (n_dims / eigenvalues.sum())  # trace(S) = d, as for N(0, I)
        rotation = _random_orthonormal(batch_size, n_dims, n_dims, generator, device)  # [B, d, d]
        z = (z * eigenvalues.sqrt()) @ rotation.transpose(1, 2)  # [B, P, d] ~ N(0, Q diag(lambda) Q^T)
    elif kind == "scaled_x":
        z = scale * z

    xs = task.x_mean + task.x_std * z  # [B, P, d]
    return xs, task.labels(xs, generator)


def sample_ood(
    task: Task, kind: str, batch_size: int, n_points: int, generator: torch.Generator | None = None, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """An out-of-distribution prompt of `task` (Garg et al. 2022, section 4): (tokens [B, 2P-1, d], ys [B, P]).

    The x's are changed, then ys = task.labels(xs), then the y-changes apply. The layout is the usual
    one, so the prediction at position i still uses only the pairs before i. Geometric changes act on
    the standardised z = (x - x_mean) / x_std. Kinds (OOD_KINDS):
    - random_quadrants: context x's (positions 0..P-2) in one random orthant per prompt, the query anywhere;
    - opposite_quadrants: context in the orthant s, the query in -s;
    - orthogonal_query: each x_i orthogonal to every earlier x_j (Gram-Schmidt, Gaussian norms kept);
      needs n_points <= n_dims;
    - query_from_context: Gaussian context; the query is a copy of one context point (uniform);
    - half_subspace: x = U z, U a random d x (d // 2) orthonormal basis per prompt, z ~ N(0, I_{d//2});
    - skewed_covariance: x ~ N(0, Q diag(lambda) Q^T), lambda_i ~ 1/i with trace d, Q random per prompt;
    - scaled_x: (x - x_mean) multiplied by `scale` (the same draws as `task.sample_xy`);
    - scaled_y: y multiplied by `scale` (x's and function as `task.sample_xy`);
    - label_noise: y + noise_std * N(0, 1) on every point (x's and function as `task.sample_xy`).
    options: `scale` (default 2) and `noise_std` (default 1), passed to `sample_ood_xy`.
    Deterministic given the generator.
    """
    xs, ys = sample_ood_xy(task, kind, batch_size, n_points, generator, **options)
    return build_prompt(xs, ys), ys
