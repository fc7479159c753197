"""Classical in-context estimators, the baselines a looped model is compared against, and the
iterative algorithms a loop may be running.

Owns every estimator and `baseline_position_errors`. Each estimator takes xs [B, P, d] and
ys [B, P] and returns predictions [B, P]; the prediction at position i uses only
(xs[:, :i], ys[:, :i]) and xs[:, i], exactly like the model. Position 0 predicts 0. They work
in float64 so that least squares is exact to rounding once i >= d.

The iterative algorithms (`gd_iterates`, `newton_iterates`, `ridge_path`, named in
`ALGORITHMS`) take one context, X [B, n, d] and y [B, n], and return the weight vector of
every step, [steps + 1, B, d], from w_0 = 0: the iterates a looped model's implied weights
(`evaluation.implied_weights`) are compared with, loop by loop.
"""

from __future__ import annotations

import math

import torch

from checks import require_int, require_real

_FALLBACK_SWEEPS = 1000


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


def _prefix_gram(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G = X^T X / i [B, P, d, d] and r = X^T y / i [B, P, d] of every prefix (zero for the empty prefix 0)."""
    xs64, ys64 = xs.double(), ys.double()
    batch, n_points, n_dims = xs64.shape
    outer = xs64.unsqueeze(-1) * xs64.unsqueeze(-2)  # [B, P, d, d]
    # Prefix i holds examples 0..i-1: an exclusive cumulative sum.
    gram = torch.zeros(batch, n_points, n_dims, n_dims, dtype=torch.float64, device=xs.device)  # [B, P, d, d]
    gram[:, 1:] = outer.cumsum(1)[:, :-1]
    corr = torch.zeros(batch, n_points, n_dims, dtype=torch.float64, device=xs.device)  # [B, P, d]
    corr[:, 1:] = (xs64 * ys64.unsqueeze(-1)).cumsum(1)[:, :-1]
    counts = torch.arange(n_points, dtype=torch.float64, device=xs.device).clamp(min=1)  # [P]
    return gram / counts.view(1, -1, 1, 1), corr / counts.view(1, -1, 1)


def _lasso_path(
    gram: torch.Tensor, corr: torch.Tensor, alpha: float, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Follow the Lasso solution path of every problem from lam = max |r_j| (where w = 0) down to alpha.

    Along the path g = r - G w satisfies g_j = lam s_j on the active set A (s: signs) and |g_j| <= lam
    off it, and w_A moves linearly: dw_A / d(-lam) = v with G_AA v = s_A. Each step goes to the next
    kink: an inactive |g_j| reaches lam (j joins), an active w_j reaches 0 (j leaves), or lam reaches
    alpha (done). Exact to rounding. Returns w [B, P, d] and whether each problem reached alpha [B, P].
    """
    n_dims = corr.shape[-1]
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=corr.device)
    lam = corr.abs().amax(-1)  # [B, P]
    done = lam <= alpha  # w = 0 is optimal there (also the empty prefix 0)
    failed = torch.zeros_like(done)  # [B, P]
    first = corr.abs().argmax(-1, keepdim=True)  # [B, P, 1]
    active = torch.zeros_like(corr, dtype=torch.bool).scatter_(-1, first, True) & ~done.unsqueeze(-1)  # [B, P, d]
    signs = torch.where(active, corr.sign(), 0.0)  # [B, P, d]
    w = torch.zeros_like(corr)  # [B, P, d]
    # Kinks closer than this are rounding (a coordinate that just joined or left), not events.
    tiny = 1e-12 * lam.unsqueeze(-1)  # [B, P, 1]
    for _ in range(max_steps):
        if done.all():
            break
        on = active.double()  # [B, P, d]
        system = gram * on.unsqueeze(-1) * on.unsqueeze(-2) + torch.diag_embed(1 - on)  # G_AA, identity off A
        direction, info = torch.linalg.solve_ex(system, signs)  # v [B, P, d] (0 off A), [B, P]
        rate = (gram @ direction.unsqueeze(-1)).squeeze(-1)  # g_j falls by rate_j per unit step, [B, P, d]
        grad = corr - (gram @ w.unsqueeze(-1)).squeeze(-1)  # [B, P, d]
        level = lam.unsqueeze(-1)  # [B, P, 1]
        # Inactive j joins when g_j - t rate_j = +-(lam - t).
        up = torch.where(~active & (rate < 1), (level - grad) / (1 - rate), inf)  # [B, P, d]
        down = torch.where(~active & (rate > -1), (level + grad) / (1 + rate), inf)  # [B, P, d]
        up, down = torch.where(up > tiny, up, inf), torch.where(down > tiny, down, inf)
        ratio = -w / direction.where(active, 1.0)  # [B, P, d]
        leave = torch.where(active & (ratio > tiny), ratio, inf)  # active w_j + t v_j = 0
        best, index = torch.cat([torch.minimum(up, down), leave], -1).min(-1)  # [B, P]
        singular = ~done & (info != 0)  # stops the path where it is; coordinate descent takes over
        failed = failed | singular
        stop = (lam - alpha <= best) | singular
        step = torch.where(done | singular, 0.0, torch.minimum(best, lam - alpha))  # [B, P]
        moving = (~done & ~singular).unsqueeze(-1)  # [B, P, 1]
        w = torch.where(moving, w + step.unsqueeze(-1) * direction, w)  # finished problems stay bit-identical
        lam = lam - step
        event = (~done & ~stop).unsqueeze(-1)  # [B, P, 1]
        coord = torch.nn.functional.one_hot(index % n_dims, n_dims).bool() & event  # [B, P, d]
        joining, leaving = coord & (index < n_dims).unsqueeze(-1), coord & (index >= n_dims).unsqueeze(-1)
        active = (active | joining) & ~leaving
        signs = torch.where(joining, torch.where(up <= down, 1.0, -1.0), torch.where(leaving, 0.0, signs))
        w = torch.where(leaving, 0.0, w)
        done = done | stop
    return w, done & ~failed


def _coordinate_descent(
    gram: torch.Tensor, corr: torch.Tensor, w: torch.Tensor, alpha: float, sweeps: int
) -> torch.Tensor:
    """Cyclic coordinate descent on the Lasso from w: w_j = soft(r_j - sum_{k != j} G_jk w_k, alpha) / G_jj."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)  # [B, P, d]
    safe_diag = torch.where(diag > 0, diag, 1.0)  # an all-zero column keeps w_j = 0 instead of dividing by 0
    w = w.clone()
    for _ in range(sweeps):
        for j in range(w.shape[-1]):
            rho = corr[..., j] - (gram[..., j, :] * w).sum(-1) + diag[..., j] * w[..., j]  # [B, P]
            shrunk = rho.sign() * (rho.abs() - alpha).clamp(min=0)  # [B, P]
            w[..., j] = torch.where(diag[..., j] > 0, shrunk / safe_diag[..., j], 0.0)
    return w


def _lasso_weights(xs: torch.Tensor, ys: torch.Tensor, alpha: float, iterations: int) -> torch.Tensor:
    """The Lasso weights of every prefix, w[:, i] fitted on examples 0..i-1 (w[:, 0] = 0): [B, P, d] float64."""
    gram, corr = _prefix_gram(xs, ys)  # [B, P, d, d], [B, P, d]
    w, reached = _lasso_path(gram, corr, alpha, iterations)  # [B, P, d], [B, P]
    if not reached.all():
        # Rare: the path ran out of steps or met a singular G_AA. Coordinate descent from where it stopped
        # converges from any start; the problems that did reach alpha are kept as they are.
        refined = _coordinate_descent(gram, corr, w, alpha, _FALLBACK_SWEEPS)  # [B, P, d]
        w = torch.where(reached.unsqueeze(-1), w, refined)
    return w


def lasso(xs: torch.Tensor, ys: torch.Tensor, alpha: float = 0.01, iterations: int = 200) -> torch.Tensor:
    """Lasso on the prefix, then predict x_i . w (Garg et al.'s sparse-regression baseline).

    w minimises (1 / (2 i)) ||X w - y||^2 + alpha ||w||_1 over the i prefix examples (sklearn's
    `Lasso(alpha, fit_intercept=False)` scaling); alpha = 0.01 is the middle of the paper's grid.
    It is solved exactly (to rounding) by following the Lasso path (homotopy) from the largest
    useful alpha down, batched over prompts and prefixes: each of at most `iterations` steps is one
    batched d x d solve, and the loop stops once every problem has reached alpha (the slowest of
    1280 Gaussian prompts needed 9 steps for d = 4, 13 for d = 10, 23 for d = 20). A problem the
    path does not finish (out of steps, or a singular active Gram matrix) is completed by 1000
    sweeps of coordinate descent.
    """
    require_real("lasso alpha", alpha, minimum=0, strict=True)
    require_int("lasso iterations", iterations)
    w = _lasso_weights(xs, ys, alpha, iterations)  # [B, P, d]
    return (xs.double() * w).sum(-1).to(ys.dtype)  # [B, P]


def two_layer_net_gd(
    xs: torch.Tensor,
    ys: torch.Tensor,
    hidden: int = 100,
    steps: int = 100,
    lr: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    """A fresh 2-layer ReLU network fitted to each prefix by full-batch Adam ("2-layer NN, GD" in Garg et al.).

    f(x) = a . relu(W x + c) + b with W [hidden, d], c [hidden], a [hidden] and a scalar b,
    initialised like torch's nn.Linear: a torch.Generator seeded with `seed` draws, in this order,
    W^T [d, hidden], c, a, b, each U(-1, 1) / sqrt(fan_in) (fan_in d for W and c, hidden for a and
    b). Every (prompt, prefix) fit starts from that same initialisation, so a prompt's predictions
    do not depend on the rest of the batch. The fit for prefix i (i >= 1) minimises the
    mean squared error over its i examples by `steps` full-batch Adam steps (betas 0.9, 0.999, eps
    1e-8) at learning rate `lr`, then predicts f(x_i); position 0 predicts 0. All B * (P - 1)
    networks train together (Adam is elementwise, so each moves on its own gradients only);
    gradients are written out by hand, one loop over prefix lengths per step, so that no work is
    spent on examples outside a prefix.

    Defaults: hidden 100 and 100 Adam steps as in the paper's baseline (which uses lr 5e-3 on
    minibatches of 100 examples, i.e. full batch at these prompt lengths). lr 0.01 fits a little
    better in as many steps, and more steps add little: on 4-dim ReLU-network prompts (256 of
    them) the squared error / d at 20 examples is 0.063 after 100 steps, 0.059 after 200, 0.057
    after 500 (least squares 0.66, averaging 0.69), while the cost grows linearly with steps.
    """
    require_int("two_layer_net_gd hidden", hidden)
    require_int("two_layer_net_gd steps", steps)
    require_real("two_layer_net_gd lr", lr, minimum=0, strict=True)
    xs64, ys64 = xs.double(), ys.double()
    batch, n_points, n_dims = xs64.shape
    preds = torch.zeros_like(ys64)  # [B, P]
    if n_points < 2:
        return preds.to(ys.dtype)
    n_fits = n_points - 1  # fit f sees examples 0..f and predicts point f + 1
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        draw = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1  # U(-1, 1) on the CPU generator
        return (draw / math.sqrt(fan_in)).to(xs.device)

    init_w, init_c = uniform((n_dims, hidden), n_dims), uniform((hidden,), n_dims)  # [d, h], [h]
    init_a, init_b = uniform((hidden,), hidden), uniform((), hidden)  # [h], []
    weight = init_w.expand(n_fits, batch, n_dims, hidden).clone()  # W^T of every fit, [F, B, d, h]
    bias = init_c.expand(n_fits, batch, hidden).clone()  # [F, B, h]
    out_w = init_a.expand(n_fits, batch, hidden).clone()  # [F, B, h]
    out_b = init_b.expand(n_fits, batch).clone()  # [F, B]
    params = [weight, bias, out_w, out_b]
    for param in params:
        param.grad = torch.zeros_like(param)  # filled in place below
    # Adam updates each element from its own gradient history, so one optimizer over the stacked
    # parameters is B * (P - 1) independent Adams. The fused kernel is ~3x faster than a loop of ops.
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=xs.device.type in ("cpu", "cuda"))
    for _ in range(steps):
        for f in range(n_fits):
            n = f + 1
            x, y = xs64[:, :n], ys64[:, :n]  # [B, n, d], [B, n]
            pre = torch.baddbmm(bias[f].unsqueeze(1), x, weight[f])  # [B, n, h]
            act = pre.clamp(min=0)  # [B, n, h]
            out = torch.baddbmm(out_b[f].view(batch, 1, 1), act, out_w[f].unsqueeze(-1)).squeeze(-1)  # [B, n]
            g_out = (out - y).mul_(2 / n)  # d(mean squared error) / d(out), [B, n]
            g_pre = (pre > 0) * g_out.unsqueeze(-1) * out_w[f].unsqueeze(1)  # [B, n, h]
            torch.bmm(x.transpose(1, 2), g_pre, out=weight.grad[f])  # [B, d, h]
            torch.sum(g_pre, 1, out=bias.grad[f])  # [B, h]
            torch.bmm(g_out.unsqueeze(1), act, out=out_w.grad[f].unsqueeze(1))  # [B, 1, h]
            torch.sum(g_out, 1, out=out_b.grad[f])  # [B]
        optimizer.step()
    query = xs64[:, 1:].transpose(0, 1).unsqueeze(-2)  # fit f predicts point f + 1, [F, B, 1, d]
    act = torch.relu((query @ weight).squeeze(-2) + bias)  # [F, B, h]
    preds[:, 1:] = ((act * out_w).sum(-1) + out_b).transpose(0, 1)
    return preds.to(ys.dtype)


def greedy_tree(xs: torch.Tensor, ys: torch.Tensor, depth: int = 4) -> torch.Tensor:
    """A regression tree grown greedily to `depth` on the prefix, then its leaf value at x_i.

    Each split tests x[c] > 0 (the decision-tree task's rule); at each node the coordinate c is
    the one whose two children have the least total squared error around their means (the first
    such c on ties). A node with fewer than 2 examples is a leaf; every other node above `depth`
    is split, so depth = 1 is a stump. A leaf predicts the mean y of its training examples, or its
    parent's prediction if it has none.

    A node's split depends only on its own examples, so only the query's path is grown: per level,
    a membership mask [P, B, P] of the examples in the query's node for every (prefix, prompt).
    """
    require_int("greedy_tree depth", depth)
    xs64, ys64 = xs.double(), ys.double()
    batch, n_points, n_dims = xs64.shape
    right = (xs64 > 0).double()  # [B, P, d] which side of each coordinate's split an example is on
    # member[i, b, j] = 1 while example j is in the node that the query of prefix i has reached (j < i).
    prefix = torch.ones(n_points, n_points, dtype=torch.float64, device=xs.device).tril(-1)  # [P, P]
    member = prefix.unsqueeze(1).expand(-1, batch, -1)  # [P, B, P]
    count = member.sum(-1)  # [P, B]
    preds = (member * ys64).sum(-1) / count.clamp(min=1)  # root mean; 0 for the empty prefix 0, [P, B]
    query_right = right.transpose(0, 1)  # the query of prefix i is point i, [P, B, d]
    y_right = ys64.unsqueeze(-1) * right  # [B, P, d]
    for _ in range(depth):
        total = (member * ys64).sum(-1)  # [P, B]
        n_right = torch.einsum("ibj,bjc->ibc", member, right)  # [P, B, d]
        s_right = torch.einsum("ibj,bjc->ibc", member, y_right)  # [P, B, d]
        n_left, s_left = count.unsqueeze(-1) - n_right, total.unsqueeze(-1) - s_right  # [P, B, d]
        # Children's squared error = sum y^2 - S_L^2 / n_L - S_R^2 / n_R, so maximise the last two terms.
        score = s_left.square() / n_left.clamp(min=1) + s_right.square() / n_right.clamp(min=1)  # [P, B, d]
        coord = score.argmax(-1, keepdim=True)  # [P, B, 1]
        goes_right = query_right.gather(-1, coord)  # [P, B, 1]
        example_right = right.unsqueeze(0).expand(n_points, -1, -1, -1)  # [P, B, P, d]
        example_right = example_right.gather(-1, coord.unsqueeze(-1).expand(-1, -1, n_points, 1)).squeeze(-1)
        child = member * (example_right == goes_right).double()  # [P, B, P]
        child_count = child.sum(-1)  # [P, B]
        split = count >= 2  # [P, B]
        member = torch.where(split.unsqueeze(-1), child, member)
        # An empty child keeps its parent's prediction; its count 0 stops further splits.
        has_examples = split & (child_count > 0)  # [P, B]
        child_mean = (child * ys64).sum(-1) / child_count.clamp(min=1)  # [P, B]
        preds = torch.where(has_examples, child_mean, preds)
        count = torch.where(split, child_count, count)
    return preds.transpose(0, 1).contiguous().to(ys.dtype)  # [B, P]


def _context(xs: torch.Tensor, ys: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """X [B, n, d] and y [B, n] in float64, checked."""
    if xs.dim() != 3 or ys.shape != xs.shape[:2]:
        raise ValueError(f"{name}: xs must be [B, n, d] and ys [B, n], got {tuple(xs.shape)} and {tuple(ys.shape)}")
    return xs.double(), ys.double()


def _moments(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X^T X / n [B, d, d] and X^T y / n [B, d] of one context."""
    n = X.shape[1]
    return X.transpose(1, 2) @ X / n, (X.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1) / n


def gd_iterates(
    xs: torch.Tensor, ys: torch.Tensor, steps: int, lr: float, preconditioner: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient descent on L(w) = |X w - y|^2 / (2 n) from w_0 = 0: w_{k+1} = w_k - lr P grad L(w_k).

    preconditioner: None (P = I, plain gradient descent) or a [d, d] matrix shared by every
    prompt, e.g. the inverse of the inputs' population covariance (preconditioned gradient
    descent, the algorithm Ahn et al. 2023 found in trained linear transformers). Returns the
    iterates [steps + 1, B, d]."""
    X, y = _context(xs, ys, "gd_iterates")
    require_int("gd_iterates steps", steps, minimum=0)
    require_real("gd_iterates lr", lr, minimum=0, strict=True)
    P = torch.eye(X.shape[-1], dtype=X.dtype) if preconditioner is None else preconditioner.to(X.dtype)
    gram, corr = _moments(X, y)  # [B, d, d], [B, d]
    w = torch.zeros_like(corr)  # [B, d]
    iterates = [w]
    for _ in range(steps):
        grad = (gram @ w.unsqueeze(-1)).squeeze(-1) - corr  # [B, d]
        w = w - lr * grad @ P.T  # [B, d]
        iterates.append(w)
    return torch.stack(iterates)  # [steps + 1, B, d]


def newton_iterates(xs: torch.Tensor, ys: torch.Tensor, steps: int) -> torch.Tensor:
    """Iterative Newton (Newton-Schulz) for the least-squares solution, as Fu et al. 2023 compare
    transformers with: M_0 = X^T X / |X^T X|_2^2, M_{k+1} = 2 M_k - M_k (X^T X) M_k, w_k = M_k X^T y.
    M_k converges to (X^T X)^+ quadratically once close; w_0 is set to 0 (the other algorithms'
    start) and w_1 = M_0 X^T y. Returns the iterates [steps + 1, B, d]."""
    X, y = _context(xs, ys, "newton_iterates")
    require_int("newton_iterates steps", steps, minimum=0)
    gram = X.transpose(1, 2) @ X  # [B, d, d]
    corr = X.transpose(1, 2) @ y.unsqueeze(-1)  # [B, d, 1]
    scale = torch.linalg.matrix_norm(gram, ord=2).clamp_min(1e-300)  # [B]: the largest eigenvalue
    M = gram / scale.square()[:, None, None]  # [B, d, d]
    iterates = [torch.zeros_like(corr.squeeze(-1))]
    for step in range(steps):
        if step > 0:
            M = 2 * M - M @ gram @ M  # [B, d, d]
        iterates.append((M @ corr).squeeze(-1))  # [B, d]
    return torch.stack(iterates)  # [steps + 1, B, d]


def ridge_path(xs: torch.Tensor, ys: torch.Tensor, lambdas: list[float]) -> torch.Tensor:
    """Ridge with a decreasing regularisation: w(lambda) = (X^T X / n + lambda I)^-1 X^T y / n for each
    lambda, after w_0 = 0 (lambda = infinity). Returns [len(lambdas) + 1, B, d]."""
    X, y = _context(xs, ys, "ridge_path")
    for value in lambdas:
        require_real("ridge_path lambda", value, minimum=0)
    gram, corr = _moments(X, y)  # [B, d, d], [B, d]
    eye = torch.eye(X.shape[2], dtype=X.dtype)
    iterates = [torch.zeros_like(corr)]
    for value in lambdas:
        iterates.append(torch.linalg.lstsq(gram + value * eye, corr.unsqueeze(-1)).solution.squeeze(-1))  # [B, d]
    return torch.stack(iterates)  # [len + 1, B, d]


# name -> (function, what its one hyperparameter is): the candidates of the "which algorithm" probe.
ALGORITHMS = {
    "gradient descent": (gd_iterates, "constant step size"),
    "preconditioned gradient descent": (gd_iterates, "step size, with the inputs' inverse population covariance"),
    "iterative Newton": (newton_iterates, "none"),
    "ridge path": (ridge_path, "lambda_k = lambda_0 * ratio^k"),
}


BASELINES = {
    "least squares": least_squares,
    "ridge (alpha=0.1)": ridge,
    "averaging": averaging,
    "3-nearest neighbours": nearest_neighbours,
    "Lasso (alpha=0.01)": lasso,
    "2-layer net, GD": two_layer_net_gd,
    "greedy tree (depth 4)": greedy_tree,
}


def _squared_errors(tokens: torch.Tensor, ys: torch.Tensor, name: str, scale: float | None) -> tuple:
    """(squared errors [B, P] of baseline `name`, the normaliser): n_dims unless `scale` is given."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {tuple(BASELINES)}")
    if scale is not None:
        require_real("baseline scale", scale, minimum=0, strict=True)
    xs = tokens[:, 0::2]  # the x tokens [B, P, d]
    return (BASELINES[name](xs, ys) - ys).square(), tokens.shape[-1] if scale is None else scale


def baseline_prompt_errors(
    tokens: torch.Tensor, ys: torch.Tensor, name: str, scale: float | None = None
) -> torch.Tensor:
    """Squared error / scale of baseline `name` for every prompt and position: [B, P].

    scale defaults to n_dims (E[y^2] for linear regression); pass the task's error_scale otherwise
    (the sparsity k for sparse regression, 1 for decision trees). The rows are what
    `utils.bootstrap_band` resamples.
    """
    squared, normaliser = _squared_errors(tokens, ys, name, scale)
    return squared / normaliser  # [B, P]


def baseline_position_errors(
    tokens: torch.Tensor,
    ys: torch.Tensor,
    names: tuple[str, ...] = ("least squares", "averaging"),
    scale: float | None = None,
) -> dict[str, list[float]]:
    """Squared error / scale of each named baseline at every position, averaged over prompts
    (scale as in `baseline_prompt_errors`)."""
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {tuple(BASELINES)}")
    means = {}
    for name in names:
        squared, normaliser = _squared_errors(tokens, ys, name, scale)
        means[name] = (squared.mean(0) / normaliser).tolist()  # mean, then divide: the committed reports' rounding
    return means
