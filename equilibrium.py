"""The fixed-point solve of a loop and its implicit gradient: the deep-equilibrium model (Bai et al. 2019).

Owns `anderson` (Anderson acceleration of z <- f(z), batched over prompts) and `implicit_fixed_point`
(a fixed point z* = f(z*) whose gradient is the implicit one: no loop is stored for backpropagation)
and `phantom_fixed_point` (the same solve, differentiated through a few plain loops from its output:
the phantom gradient), and `jacobian_norm_estimate` (a Hutchinson estimate of the loop map's squared
Jacobian norm: Bai et al. 2021's Jacobian regularisation, which keeps the map contractive so that its
solve converges). `BaseLoopedTransformer.equilibrium` applies either solve to the model's loop, and
`TrainConfig.solver` (with `grad_window` for the phantom gradient) picks them for training;
`TrainConfig.jacobian_penalty` adds the estimate to the training loss.

The implicit gradient: at z* = f(z*, theta), dz*/dtheta = (I - J)^-1 df/dtheta with J = df/dz at z*.
The forward solve runs without gradient; one more application z = f(z*) reconnects the graph to theta
and e, and a hook replaces the incoming gradient g by the solution y of y = J^T y + g (solved by the
same Anderson iteration on vector-Jacobian products), so that the graph of that one step carries
y^T df/dtheta: the memory of one loop, whatever the number of iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from checks import require_int, require_real


def anderson(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    max_iter: int,
    tol: float,
    memory: int = 5,
    mixing: float = 1.0,
    regularisation: float = 1e-8,
    observe: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Solve z = f(z) from z0 [B, ...] by Anderson acceleration with `memory` past iterates.

    Stops when every prompt's relative residual |f(z) - z| / |f(z)| is below `tol`, or after
    `max_iter` evaluations of f. Returns (z [B, ...], {"iterations", "residual"}: the largest
    relative residual over prompts at the end). Each prompt's iterates depend on that prompt alone
    (its mixing weights are its own), so a batch solves every prompt as a solve of it alone would.
    observe: None, or called after every evaluation of f with (its image f(z) [B, ...], each prompt's
    relative residual |f(z) - z| / |f(z)| [B]): a trace of the solve (halting on the residual reads it)."""
    require_int("anderson max_iter", max_iter)
    require_real("anderson tol", tol, minimum=0)
    require_int("anderson memory", memory)
    batch = z0.shape[0]
    flat = lambda z: z.reshape(batch, -1)
    xs, fs = [flat(z0)], [flat(f(z0))]  # iterates and their images, each [B, n]
    z, residual, iterations = fs[0], float("inf"), 1
    if observe is not None:
        observe(fs[0].view_as(z0), (fs[0] - xs[0]).norm(dim=1) / fs[0].norm(dim=1).clamp_min(1e-12))
    while iterations < max_iter and residual >= tol:
        iterations += 1
        x_hist, f_hist = torch.stack(xs[-memory:], 1), torch.stack(fs[-memory:], 1)  # [B, m, n]
        g = f_hist - x_hist  # [B, m, n]: residuals of the kept iterates
        m = g.shape[1]
        # Minimise |sum_i alpha_i g_i| subject to sum alpha = 1 (a small regularised linear system per prompt),
        # in float64 from the products on: near convergence the kept residuals are nearly parallel or zero, and
        # in float32 the system turned singular for single prompts (a prompt already at its fixed point has g = 0).
        g64 = g.double()  # [B, m, n]
        gram = g64 @ g64.transpose(1, 2)  # [B, m, m]
        # Regularised relative to the residuals' own size, with a floor for a prompt whose residuals are all 0.
        size = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-200)  # [B]
        gram = gram + regularisation * size[:, None, None] * torch.eye(m, dtype=gram.dtype, device=g.device)
        ones = torch.ones(batch, m, 1, dtype=gram.dtype, device=g.device)
        weights = torch.linalg.solve(gram, ones)  # [B, m, 1]
        alpha = (weights / weights.sum(1, keepdim=True)).to(g.dtype)  # [B, m, 1]
        z = (alpha * (mixing * f_hist + (1 - mixing) * x_hist)).sum(1)  # [B, n]
        image = flat(f(z.view_as(z0)))
        residuals = (image - z).norm(dim=1) / image.norm(dim=1).clamp_min(1e-12)  # [B]
        residual = float(residuals.max())
        if observe is not None:
            observe(image.view_as(z0), residuals)
        xs.append(z)
        fs.append(image)
        z = image
    return z.view_as(z0), {"iterations": float(iterations), "residual": residual}


def implicit_fixed_point(
    f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, max_iter: int, tol: float, memory: int = 5
) -> tuple[torch.Tensor, dict[str, float]]:
    """The fixed point of f from z0, differentiable by the implicit gradient (module docstring).
    Returns (z* [B, ...], the forward solve's {"iterations", "residual"})."""
    with torch.no_grad():
        z_star, info = anderson(f, z0, max_iter, tol, memory)
    if not torch.is_grad_enabled():
        return z_star, info
    z = f(z_star)  # one differentiable step: the graph to the parameters and the prompt
    if z.requires_grad:
        anchor = z_star.detach().requires_grad_()
        with torch.enable_grad():
            image = f(anchor)  # its vector-Jacobian products give J^T y

        def implicit(grad: torch.Tensor) -> torch.Tensor:
            vjp = lambda y: torch.autograd.grad(image, anchor, y, retain_graph=True)[0] + grad
            solution, _ = anderson(vjp, grad, max_iter, tol, memory)
            return solution

        z.register_hook(implicit)
    return z, info


def phantom_fixed_point(
    f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, max_iter: int, tol: float, unroll: int, memory: int = 5
) -> tuple[torch.Tensor, dict[str, float]]:
    """The fixed point of f from z0, differentiable by the phantom gradient (Geng et al. 2021): the solve
    runs without gradient and `unroll` plain applications of f from its output carry it (unroll = 1 is the
    Jacobian-free backpropagation of Fung et al. 2022). No backward solve, so the gradient stays finite
    where the forward solve has not converged. Returns (f^unroll(z*) [B, ...], the solve's info)."""
    require_int("unroll", unroll)
    with torch.no_grad():
        z, info = anderson(f, z0, max_iter, tol, memory)
    for _ in range(unroll):
        z = f(z)  # these applications carry the gradient
    return z, info


def jacobian_norm_estimate(
    f: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A Hutchinson estimate of ||J||_F^2 / n, J = df/dz at z [B, ...] and n = z.numel(): the mean over
    `samples` Gaussian vectors v (drawn on the CPU from `generator`) of ||v^T J||^2 / n, unbiased since
    E[v v^T] = I. Prompts do not interact, so J is block-diagonal and this is the mean over prompts of each
    one's ||J||_F^2 per state entry (Bai et al. 2021 normalise the same way). z is detached first: the
    estimate moves what f computes with (the parameters, the injected prompt), not what produced z. Where
    gradient is enabled the estimate is differentiable (a vector-Jacobian product with create_graph), so
    that lambda times it is a training loss; a scalar tensor."""
    require_int("jacobian_norm_estimate samples", samples)
    differentiable = torch.is_grad_enabled()
    anchor = z.detach().requires_grad_()
    total = anchor.new_zeros(())
    with torch.enable_grad():
        image = f(anchor)  # [B, ...]
        for index in range(samples):
            probe = torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)  # [B, ...]
            (vjp,) = torch.autograd.grad(
                image, anchor, probe, retain_graph=differentiable or index < samples - 1, create_graph=differentiable
            )  # [B, ...]: v^T J
            total = total + vjp.square().sum()
    return total / (samples * anchor.numel())
