"""The training configuration: `TrainConfig`, validated on creation, and its schedule.

Owns what one training run is (steps, batch, optimiser settings, loss, loops, curricula,
validation cadence, checkpoint cadence) and the schedule that says, for every training step,
how many loops run, how many points a prompt has and how many x coordinates are non-zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from checks import is_int, is_real, require, require_choice, require_int, require_real

LOSS_CHOICES = ("mse", "mae", "huber")
SUPERVISE_CHOICES = ("all", "last")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
LOOPS_RANDOM_CHOICES = ("uniform", "poisson_lognormal")
SOLVER_CHOICES = ("unroll", "fixed_point")


@dataclass(frozen=True)
class TrainConfig:
    """Everything about one training run. Invalid values raise `ValueError` on creation.

    grad_window: loops before the last `grad_window` run without gradient (None: all loops).
    supervise:   "all" (every loop that carries gradient) or "last" (the final loop only).
    eval_every:  level-1 validation at 0% and every this fraction of training.
    eval_prompts, eval_seed: the fixed held-out prompt set (its own seed, shared by all runs).
    checkpoint_every: steps between checkpoints when `train` is given a checkpoint path
                      (0: at every level-1 validation).
    lr_schedule, warmup: the learning rate of every step. The first round(warmup * steps) steps
                      rise linearly from lr / warmup_steps to lr; then "constant" keeps lr and
                      "cosine" decays it along half a cosine towards 0 (reached one step after the last).
    loops_curriculum: None (every step runs b loops), (b_start, every) or (b_start, every,
                      increment): training step t runs min(b, b_start + increment * (t // every))
                      loops (increment 1 when omitted), the paper's growing loop count (it adds
                      2 every 500 steps). Validation always runs b loops.
    loops_random:     None, ("uniform", b_min): training step t runs a loop count drawn uniformly
                      from b_min..b, or ("poisson_lognormal", mean, sigma): 1 + Poisson(exp(tau))
                      with tau ~ N(log(mean) - sigma^2 / 2, sigma) (the Poisson part has mean
                      `mean`), capped at b: the recurrent-depth models of Geiping et al. 2025, who
                      pair it with a short grad_window (truncated backpropagation: a step runs its
                      first count - grad_window loops without gradient, all of them when the count is
                      below the window). The 1 + keeps every count >= 1, as their sampler adds one;
                      the cap b is also the loop count validation runs, and `mean_loops` is b-bar.
                      The draw is a function of (seed, step) alone, so a resumed run draws the same
                      counts. Validation always runs b loops. Not with loops_curriculum.
    solver, solver_tol: "unroll" (every training step runs its b loops and backpropagates through
                      them) or "fixed_point": the deep-equilibrium model, which solves for the loop's
                      fixed point in at most b evaluations (Anderson acceleration, relative residual
                      solver_tol) and trains with the implicit gradient, supervising the fixed point
                      alone (needs supervise "last" and a fixed loop count). With grad_window = k it
                      trains with the phantom gradient instead: the solve runs without gradient and
                      k more loops from its output carry it (k = 1: Jacobian-free backpropagation);
                      their last is supervised. Validation still runs b plain loops.
    jacobian_penalty, jacobian_samples: lambda, the weight of a penalty on the loop map's Jacobian (Bai et
                      al. 2021's Jacobian regularisation; 0: none): every training step adds lambda times a
                      Hutchinson estimate of ||J||_F^2 / n, J the Jacobian of one loop s -> step(s, e) at the
                      step's final state (the last loop's output, or the fixed point of a solve) and n the
                      state's size, from `jacobian_samples` Gaussian vectors drawn from (seed, step) alone
                      (`seeding.step_generator`), so the training data stream is the one the run without the
                      penalty draws. Needs a model with one map at every loop (`check_fixed_point`).
    solver_pretrain:  with solver "fixed_point": the first round(solver_pretrain * steps) steps train
                      the plain loop instead (b loops, gradient as grad_window says, the last one
                      supervised), the weight-tied unrolled pretraining of Bai et al. 2019: the
                      solve then starts from a block that already maps a prompt to a useful state.
    points_curriculum: None or (P_start, every, increment): training step t uses
                      min(n_points, P_start + increment * (t // every)) points per prompt, the
                      paper's growing prompt length. Validation always uses n_points.
    dims_curriculum:  None or (d_start, every, increment): training step t draws x's whose
                      first min(n_dims, d_start + increment * (t // every)) coordinates are
                      non-zero (the paper's growing dimension; the task's `active_dims`).
                      Validation always uses every dimension.
    """

    steps: int
    batch_size: int = 64
    lr: float = 5e-4
    b: int = 10
    n_points: int = 64
    grad_window: int | None = None
    loss: str = "mse"
    huber_delta: float = 1.0
    supervise: str = "all"
    clip_grad_norm: float | None = None
    lr_schedule: str = "constant"
    warmup: float = 0.0
    seed: int = 42
    device: str = "cpu"
    threads: int | None = 1
    eval_every: float = 0.2
    eval_prompts: int = 640
    eval_seed: int = 4815162342 % 2**31
    checkpoint_every: int = 0
    loops_curriculum: tuple[int, int] | None = None
    loops_random: tuple | None = None
    solver: str = "unroll"
    solver_tol: float = 1e-3
    solver_pretrain: float = 0.0
    jacobian_penalty: float = 0.0
    jacobian_samples: int = 1
    points_curriculum: tuple[int, int, int] | None = None
    dims_curriculum: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "b", "n_points", "eval_prompts"):
            require_int(f"TrainConfig.{name}", getattr(self, name))
        require_real("TrainConfig.lr", self.lr, minimum=0, strict=True)
        require(
            self.grad_window is None or (is_int(self.grad_window) and 1 <= self.grad_window <= self.b),
            f"TrainConfig.grad_window={self.grad_window!r} must be None or an integer in 1..b={self.b}",
        )
        require_choice("TrainConfig.loss", self.loss, LOSS_CHOICES)
        require_choice("TrainConfig.supervise", self.supervise, SUPERVISE_CHOICES)
        require_choice("TrainConfig.lr_schedule", self.lr_schedule, LR_SCHEDULE_CHOICES)
        require(
            is_real(self.warmup) and 0 <= self.warmup < 1,
            f"TrainConfig.warmup={self.warmup!r} must be a fraction of the steps in [0, 1)",
        )
        require_real("TrainConfig.huber_delta", self.huber_delta, minimum=0, strict=True)
        require(
            self.clip_grad_norm is None or (is_real(self.clip_grad_norm) and self.clip_grad_norm > 0),
            f"TrainConfig.clip_grad_norm={self.clip_grad_norm!r} must be None or a finite number > 0",
        )
        require_int("TrainConfig.seed", self.seed, minimum=0)
        require_int("TrainConfig.eval_seed", self.eval_seed, minimum=0)
        require(
            isinstance(self.device, str)
            and (self.device in ("cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())),
            f"TrainConfig.device={self.device!r} is not allowed; choose 'cpu', 'cuda' or 'cuda:N'",
        )
        require(
            self.threads is None or (is_int(self.threads) and self.threads >= 1),
            f"TrainConfig.threads={self.threads!r} must be None (leave torch's setting) or an integer >= 1",
        )
        require(
            is_real(self.eval_every) and 0 < self.eval_every <= 1,
            f"TrainConfig.eval_every={self.eval_every!r} must be in (0, 1]",
        )
        require_int("TrainConfig.checkpoint_every", self.checkpoint_every, minimum=0)
        self._check_schedule(
            "loops_curriculum",
            (2, 3),
            self.b,
            f"(b_start, every) or (b_start, every, increment) with 1 <= b_start <= b={self.b}, every >= 1 "
            "and increment >= 1",
        )
        self._check_loops_random()
        require_choice("TrainConfig.solver", self.solver, SOLVER_CHOICES)
        require_real("TrainConfig.solver_tol", self.solver_tol, minimum=0, strict=True)
        if self.solver == "fixed_point":
            require(
                self.supervise == "last" and self.loops_curriculum is None and self.loops_random is None,
                "TrainConfig.solver='fixed_point' supervises the fixed point alone: it needs supervise='last' "
                f"and a fixed loop count (got supervise={self.supervise!r}, "
                f"loops_curriculum={self.loops_curriculum!r}, loops_random={self.loops_random!r})",
            )
        require(
            is_real(self.solver_pretrain) and 0 <= self.solver_pretrain < 1,
            f"TrainConfig.solver_pretrain={self.solver_pretrain!r} must be a fraction of the steps in [0, 1)",
        )
        if self.solver != "fixed_point":
            for name in ("solver_tol", "solver_pretrain"):
                require(
                    getattr(self, name) == getattr(TrainConfig, name),
                    f"TrainConfig.{name}={getattr(self, name)!r} has no effect with solver='unroll'",
                )
        require_real("TrainConfig.jacobian_penalty", self.jacobian_penalty, minimum=0)
        require_int("TrainConfig.jacobian_samples", self.jacobian_samples)
        require(
            self.jacobian_penalty > 0 or self.jacobian_samples == TrainConfig.jacobian_samples,
            f"TrainConfig.jacobian_samples={self.jacobian_samples!r} has no effect with jacobian_penalty=0; "
            "it is the number of Hutchinson vectors of the Jacobian penalty",
        )
        self._check_schedule(
            "points_curriculum",
            (3,),
            self.n_points,
            f"(P_start, every, increment) with 1 <= P_start <= n_points={self.n_points}, every >= 1 and increment >= 1",
        )
        # The ceiling is the task's n_dims, which `check_training` checks; here only the form.
        self._check_schedule(
            "dims_curriculum",
            (3,),
            10**9,
            "(d_start, every, increment) with d_start >= 1, every >= 1 and increment >= 1",
        )

    def _check_schedule(self, name: str, lengths: tuple[int, ...], ceiling: int, form: str) -> None:
        """A curriculum is None or (one of `lengths`) integers: a start in 1..ceiling, then values >= 1.
        Stored as a tuple (a record read back from JSON gives a list)."""
        value = getattr(self, name)
        if value is None:
            return
        require(
            isinstance(value, (tuple, list))
            and len(value) in lengths
            and all(is_int(v) for v in value)
            and 1 <= value[0] <= ceiling
            and all(v >= 1 for v in value[1:]),
            f"TrainConfig.{name}={value!r} must be None or {form}",
        )
        object.__setattr__(self, name, tuple(value))

    def _check_loops_random(self) -> None:
        value = self.loops_random
        if value is None:
            return
        form = (
            f"None, ('uniform', b_min) with 1 <= b_min <= b={self.b}, or ('poisson_lognormal', mean, sigma) with "
            f"1 <= mean <= b and sigma > 0"
        )
        ok = isinstance(value, (tuple, list)) and len(value) >= 1 and value[0] in LOOPS_RANDOM_CHOICES
        if ok and value[0] == "uniform":
            ok = len(value) == 2 and is_int(value[1]) and 1 <= value[1] <= self.b
        elif ok:
            ok = (
                len(value) == 3 and is_real(value[1]) and 1 <= value[1] <= self.b and is_real(value[2]) and value[2] > 0
            )
        require(ok, f"TrainConfig.loops_random={value!r} must be {form}")
        require(
            self.loops_curriculum is None,
            "TrainConfig.loops_random and loops_curriculum both set the loop count of a step; choose one",
        )
        object.__setattr__(self, "loops_random", tuple(value))

    def loops_at(self, step: int) -> int:
        """The loop count of training step `step` (0-based)."""
        if self.loops_random is not None:
            rng = np.random.default_rng([self.seed, step, 0x100B5])  # (seed, step) alone: resumable
            if self.loops_random[0] == "uniform":
                return int(rng.integers(self.loops_random[1], self.b + 1))
            _, mean, sigma = self.loops_random
            tau = rng.normal(math.log(mean) - sigma**2 / 2, sigma)
            return int(min(self.b, 1 + rng.poisson(math.exp(tau))))
        if self.loops_curriculum is None:
            return self.b
        start, every, *increment = self.loops_curriculum
        return min(self.b, start + (increment[0] if increment else 1) * (step // every))

    def mean_loops(self) -> float:
        """The mean training loop count, b-bar: what the field reports extrapolation against. b for a
        fixed count (and for the fixed-point solve, whose b caps its evaluations), the mean over the
        steps of a loop curriculum, and the expectation of a random count rather than its draws, so
        that every seed of a configuration has the same b-bar: (b_min + b) / 2 for "uniform", and for
        "poisson_lognormal" E[min(b, 1 + Poisson(exp(tau)))] over tau ~ N(log(mean) - sigma^2 / 2,
        sigma), by Gauss-Hermite quadrature over tau (the cap at b makes it a little below 1 + mean)."""
        if self.loops_random is None:
            if self.loops_curriculum is None:
                return float(self.b)
            return float(np.mean([self.loops_at(step) for step in range(self.steps)]))
        if self.loops_random[0] == "uniform":
            return (self.loops_random[1] + self.b) / 2
        _, mean, sigma = self.loops_random
        nodes, weights = np.polynomial.hermite.hermgauss(80)
        rates = np.exp(math.log(mean) - sigma**2 / 2 + math.sqrt(2) * sigma * nodes)  # [80]: exp(tau) at each node
        counts = np.arange(self.b - 1)  # [b - 1]: k = 0..b-2
        # E[min(b - 1, N)] = sum over k < b - 1 of P(N > k), P(N > k) = 1 - the Poisson cdf at k
        log_factorials = np.array([math.lgamma(k + 1) for k in counts])  # [b - 1]
        log_pmf = counts[None] * np.log(rates[:, None]) - rates[:, None] - log_factorials  # [80, b - 1]
        survival = 1 - np.cumsum(np.exp(log_pmf), axis=1)  # [80, b - 1]
        return float(1 + weights @ np.clip(survival, 0, 1).sum(1) / math.sqrt(math.pi))

    def solves_at(self, step: int) -> bool:
        """Whether training step `step` (0-based) solves for the fixed point (solver "fixed_point",
        after the `solver_pretrain` steps) rather than running the plain loop."""
        return self.solver == "fixed_point" and step >= round(self.solver_pretrain * self.steps)

    def warmup_steps(self) -> int:
        """How many steps the learning rate rises for (`warmup`)."""
        return round(self.warmup * self.steps)

    def lr_at(self, step: int) -> float:
        """The learning rate of training step `step` (0-based): `lr_schedule` after `warmup`."""
        warmup = self.warmup_steps()
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.lr_schedule == "constant":
            return self.lr
        decay_steps = max(1, self.steps - warmup)
        return 0.5 * self.lr * (1 + math.cos(math.pi * (step - warmup) / decay_steps))

    def points_at(self, step: int) -> int:
        """The prompt length (points) of training step `step` (0-based)."""
        if self.points_curriculum is None:
            return self.n_points
        start, every, increment = self.points_curriculum
        return min(self.n_points, start + increment * (step // every))

    def dims_at(self, step: int, n_dims: int) -> int:
        """The number of non-zero x coordinates at training step `step` (0-based)."""
        if self.dims_curriculum is None:
            return n_dims
        start, every, increment = self.dims_curriculum
        return min(n_dims, start + increment * (step // every))

    def eval_steps(self) -> list[int]:
        """Steps (counted as training steps done) at which level-1 validation runs."""
        n_evals = round(1 / self.eval_every)
        return sorted({round(k * self.steps / n_evals) for k in range(n_evals + 1)})

    def to_dict(self) -> dict:
        return asdict(self)
