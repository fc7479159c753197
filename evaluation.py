"""Evaluation of trained models: level-1 and level-2 validation and the paper-grade measures.

Owns `prediction_errors`, `evaluate` (level 1: the held-out query error at loop count b),
`extrapolate` and `validate` (level 2: the reference study's protocol, plus loop counts beyond
training), `label_sensitivity` (does a prediction see its own answer?), `state_updates` (does
the loop reach a fixed point?), `loop_trace` and `halting` (stop each prompt once its state
stops moving), `implied_weights` (the linear predictor each loop implements on
a fixed context) and `AlgorithmProbe` (which iterative algorithm a model's loops track, Experiment 11's
probe, from `implied_weights`, `fit_algorithm` and `closest_iterates`, with its report tables `probe_table` and
`closest_table`), `prompt_errors` and
`bootstrap_band` (a mean over prompts with a bootstrap 5 to 95% band), and the fixed prompt sets they
score (`heldout_prompts`, `ood_prompts`, and `ood_baselines`, the classical estimators on the latter).

Metrics are squared errors divided by the task's `error_scale` (n_dims for linear regression,
the error of predicting 0). "reference" is the Laptev study's metric: the query error averaged
over loops 1..b. "last_loop" is the query error of loop b alone. Every helper puts the model in
eval mode and restores its previous mode on the way out, also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from baselines import ALGORITHMS, baseline_prompt_errors, gd_iterates, newton_iterates, ridge_path
from checks import is_int, is_real, require, require_int
from plots import fmt, markdown_table
from seeding import make_generator
from tasks import OOD_KINDS, NoisyLinearRegression, build_prompt, sample_ood
from transformer import check_loops


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run a block with `model.eval()` and restore its train/eval mode afterwards, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def error_scale(task) -> float:
    """What squared errors are divided by for `task`: its `error_scale` (the error of predicting
    0: n_dims for linear regression, the sparsity k for sparse regression, 1 for trees)."""
    return float(getattr(task, "error_scale", task.n_dims))


@torch.no_grad()
def prediction_errors(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    ys: torch.Tensor,
    b: int,
    batch_size: int = 256,
    scale: float | None = None,
    per_prompt: bool = False,
) -> torch.Tensor:
    """Squared error / scale of every loop at every position, averaged over prompts: [b, P].

    scale: the task's `error_scale`; None divides by n_dims (linear regression's).
    per_prompt: instead, loop b's error for every prompt and position, [n_prompts, P]
    (`prompt_errors`); NaN where the model does not predict a point.

    For a model that does not predict every point at every loop (`predicted_points`), each
    entry averages over the prompts where it predicts; NaN where it never does.
    """
    check_loops(b)
    scale = model.config.n_dims if scale is None else scale
    with eval_mode(model):
        device = next(model.parameters()).device
        total = torch.zeros(b, ys.shape[1], dtype=torch.float64, device=device)
        count = torch.zeros(b, ys.shape[1], dtype=torch.float64, device=device)
        rows = []  # per_prompt: loop b's squared errors [B, P] of every chunk
        predicted_points = getattr(model, "predicted_points", None)
        for start in range(0, tokens.shape[0], batch_size):
            chunk_tokens = tokens[start : start + batch_size].to(device)
            chunk_ys = ys[start : start + batch_size].to(device)
            preds = model(chunk_tokens, b)  # [b, B, P]
            squared = (preds - chunk_ys).square()  # [b, B, P]
            predicted = predicted_points(chunk_tokens, b) if predicted_points is not None else None
            if per_prompt:
                last = squared[-1] if predicted is None else torch.where(predicted[-1], squared[-1], torch.nan)
                rows.append(last.cpu())  # [B, P]
            elif predicted is None:
                total += squared.sum(1, dtype=torch.float64)  # [b, P]
                count += chunk_tokens.shape[0]
            else:
                total += torch.where(predicted, squared, 0).sum(1, dtype=torch.float64)  # [b, P]
                count += predicted.sum(1, dtype=torch.float64)
    if per_prompt:
        return torch.cat(rows) / scale  # [n_prompts, P]
    return (total / (count * scale)).float().cpu()


@torch.no_grad()
def label_sensitivity(model: torch.nn.Module, tokens: torch.Tensor, b: int, lag: int = 0) -> torch.Tensor:
    """How much the prediction at x_i moves when the label y_{i+lag} is shifted by +1: [P-1-lag].

    Mean |change| over prompts of loop b's prediction. With lag=0 this is the model's access to
    the very answer it predicts (label leakage): exactly 0 under a causal mask, where y_i comes
    after x_i. lag > 0 shifts a later, unrelated label instead, as a control.
    """
    check_loops(b)
    require_int("label_sensitivity lag", lag, minimum=0)
    with eval_mode(model):
        tokens = tokens.to(next(model.parameters()).device)
        n_points = (tokens.shape[1] + 1) // 2
        base = model(tokens, b)[-1]  # [B, P]
        changes = []
        for i in range(n_points - 1 - lag):
            shifted = tokens.clone()
            shifted[:, 2 * (i + lag) + 1, 0] += 1.0  # the y token of point i + lag (its value sits in channel 0)
            changes.append((model(shifted, b)[-1, :, i] - base[:, i]).abs().mean())
    return torch.stack(changes).cpu()


@torch.no_grad()
def implied_weights(
    model: torch.nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    b: int,
    queries: torch.Tensor,
    chunk: int = 4096,
) -> dict[str, torch.Tensor]:
    """The linear predictor each loop implements on a fixed context: a least-squares fit of the
    query's prediction as a function of the query.

    xs [B, n, d], ys [B, n]: the contexts; queries [K, d]: the query points, shared by every
    context (e.g. K >= 4 d draws from the task's x distribution). Under the causal mask the
    query's prediction at loop j depends on the context and the query alone, so for every
    context and loop it is fitted as w_j . x_q + c_j over the K queries. Returns float64 tensors:
    "weights" [b, B, d], "intercept" [b, B] and "r2" [b, B] (the fit's R^2, the linearity check:
    1 where the loop's predictor is exactly linear in the query)."""
    check_loops(b)
    require(
        xs.dim() == 3 and ys.shape == xs.shape[:2],
        f"xs must be [B, n, d] and ys [B, n], got {tuple(xs.shape)}, {tuple(ys.shape)}",
    )
    require(
        queries.dim() == 2 and queries.shape[1] == xs.shape[2],
        f"queries must be [K, d={xs.shape[2]}], got {tuple(queries.shape)}",
    )
    require(queries.shape[0] > queries.shape[1] + 1, f"queries: K={queries.shape[0]} must exceed d + 1 to fit w and c")
    require_int("implied_weights chunk", chunk)

    batch, n, d = xs.shape
    k = queries.shape[0]
    device = next(model.parameters()).device
    with eval_mode(model):
        preds = []
        for row in range(batch):
            point_xs = torch.cat([xs[row].expand(k, n, d), queries[:, None]], 1)  # [K, n + 1, d]
            point_ys = torch.cat([ys[row].expand(k, n), torch.zeros(k, 1, dtype=ys.dtype)], 1)  # [K, n + 1]
            tokens = build_prompt(point_xs, point_ys).to(device)  # [K, 2n + 1, d]: the query's label is never shown
            out = torch.cat([model(part, b)[:, :, -1] for part in tokens.split(chunk)], 1)  # [b, K]
            preds.append(out.double().cpu())
    predictions = torch.stack(preds, 1)  # [b, B, K]
    design = torch.cat([queries.double(), torch.ones(k, 1, dtype=torch.float64)], 1)  # [K, d + 1]
    solution = torch.linalg.lstsq(design, predictions.reshape(-1, k).T).solution.T.reshape(b, batch, d + 1)
    fitted = solution @ design.T  # [b, B, K]
    residual = (predictions - fitted).square().sum(-1)  # [b, B]
    total = (predictions - predictions.mean(-1, keepdim=True)).square().sum(-1).clamp_min(1e-300)  # [b, B]
    return {"weights": solution[..., :d], "intercept": solution[..., d], "r2": 1 - residual / total}


def closest_iterates(weights: torch.Tensor, iterates: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which step of an algorithm each loop's implied predictor is closest to.

    weights [b, B, d]: the loops' implied weight vectors on B contexts (`implied_weights`);
    iterates [K + 1, B, d]: an algorithm's iterates on the same contexts (`baselines.ALGORITHMS`);
    reference [B, d]: the scale of each context's distances (e.g. its least-squares solution).
    One step k is chosen per loop for all contexts together, the one with the lowest mean
    relative distance |w_j - a_k| / |reference|, so that "loop j is worth k steps" is a statement
    about the algorithm, not a per-prompt fit. Returns "step" [b] (integer), and in float64
    "distance" [b] and "distances" [b, K + 1] (every step's mean relative distance)."""
    require(
        weights.dim() == 3 and iterates.dim() == 3 and weights.shape[1:] == iterates.shape[1:],
        f"weights must be [b, B, d] and iterates [K + 1, B, d], got {tuple(weights.shape)}, {tuple(iterates.shape)}",
    )
    require(reference.shape == weights.shape[1:], f"reference must be [B, d]={tuple(weights.shape[1:])}")
    scale = reference.double().norm(dim=-1).clamp_min(1e-12)  # [B]
    gaps = weights.double()[:, None] - iterates.double()[None]  # [b, K + 1, B, d]
    distances = (gaps.norm(dim=-1) / scale).mean(-1)  # [b, K + 1]
    step = distances.argmin(1)  # [b]
    return {"step": step, "distance": distances.gather(1, step[:, None]).squeeze(1), "distances": distances}


def fit_algorithm(
    weights: torch.Tensor,
    iterates_for: Callable[[Any], torch.Tensor],
    candidates: Iterable[Any],
    reference: torch.Tensor,
    loops: int | None = None,
) -> tuple[Any, dict[Any, float]]:
    """The hyperparameter of an algorithm under which its iterates track the loops best.

    iterates_for(candidate) -> iterates [K + 1, B, d] on the contexts of `weights` [b, B, d];
    each candidate scores the mean over loops 1..`loops` (default all) of `closest_iterates`'
    distance. Run it on contexts of their own, not the ones reported, so that the chosen value
    is one per algorithm and not a per-prompt fit. Returns (the best candidate, {candidate: score})."""
    candidates = list(candidates)
    require(len(candidates) > 0, "fit_algorithm needs at least one candidate")
    loops = weights.shape[0] if loops is None else loops
    require_int("fit_algorithm loops", loops)
    require(loops <= weights.shape[0], f"loops={loops} exceeds the {weights.shape[0]} loops of weights")
    scores = {
        candidate: float(closest_iterates(weights[:loops], iterates_for(candidate), reference)["distance"].mean())
        for candidate in candidates
    }
    return min(candidates, key=lambda c: scores[c]), scores


@dataclass(frozen=True)
class AlgorithmProbe:
    """Which iterative algorithm (`baselines.ALGORITHMS`) a trained model's loops track, and how its error at every
    loop compares with theirs: Experiment 11's probe, one call per saved model.

    Per input kind of `tasks` ({kind: a linear-regression task}): each algorithm's hyperparameter (`gd_rates` for both
    gradient descents, `ridge` pairs (lambda_0, ratio) for the ridge path, none for Newton) is fitted by
    `fit_algorithm` on `contexts` contexts of `n_examples` from the "tuning" seed of `seeds`; on as many contexts
    from the "report" seed every loop 1..`b` is set beside each algorithm's closest iterate (`closest_iterates`),
    with the R^2 of the loop's implied predictor (`implied_weights`, on `queries` query points from the "queries"
    seed: mean and worst context) and its relative distance to least squares. On `curve_kind` inputs, per context
    length in `lengths` and label noise std in `noises`: the query error / d at every loop of the model and at every
    step of each algorithm at its fitted hyperparameter, on `curve_prompts` prompts from the "curves" seed. The
    algorithms run `gd_steps`, `newton_steps` and `ridge_steps` steps, each at least `b`."""

    tasks: Mapping[str, Any]
    n_examples: int
    b: int
    contexts: int
    queries: int
    gd_rates: Sequence[float]
    ridge: Sequence[tuple[float, float]]
    gd_steps: int
    newton_steps: int
    ridge_steps: int
    lengths: Sequence[int]
    noises: Sequence[float]
    curve_prompts: int
    seeds: Mapping[str, int]
    curve_kind: str = "isotropic"

    def __post_init__(self) -> None:
        # loop j is set beside step j: every algorithm runs at least as many steps as the loops probed
        require(min(self.gd_steps, self.newton_steps, self.ridge_steps) >= self.b,
                "AlgorithmProbe: algorithm steps must cover the loops probed (b)")
        missing = {"tuning", "report", "queries", "curves"} - set(self.seeds)
        require(not missing, f"AlgorithmProbe.seeds lacks {sorted(missing)}")
        require(self.curve_kind in self.tasks, f"AlgorithmProbe.curve_kind={self.curve_kind!r} is not one of the tasks")

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(ALGORITHMS)

    def candidates(self, name: str) -> Sequence[Any]:
        """The hyperparameters `fit_algorithm` tries for algorithm `name`."""
        return {"iterative Newton": (None,), "ridge path": self.ridge}.get(name, self.gd_rates)

    def iterates(self, name: str, xs: torch.Tensor, ys: torch.Tensor, choice: Any, inverse_cov: torch.Tensor):
        """Algorithm `name`'s iterates [K + 1, B, d] on contexts xs [B, n, d], ys [B, n] at hyperparameter `choice`."""
        if name == "gradient descent":
            return gd_iterates(xs, ys, self.gd_steps, choice)
        if name == "preconditioned gradient descent":
            return gd_iterates(xs, ys, self.gd_steps, choice, preconditioner=inverse_cov)
        if name == "iterative Newton":
            return newton_iterates(xs, ys, self.newton_steps)
        lam0, ratio = choice
        return ridge_path(xs, ys, [lam0 * ratio**k for k in range(self.ridge_steps)])

    def sample(self, kind: str, stream: str, n: int, count: int, noise: float = 0.0) -> tuple[torch.Tensor, ...]:
        """`count` contexts of `n` examples of input kind `kind` (xs [B, n, d], ys [B, n]) from the seed `stream`."""
        task = self.tasks[kind]
        if noise != 0:
            task = NoisyLinearRegression(n_dims=task.n_dims, noise_std=noise, x_variances=task.x_variances)
        return task.sample_xy(count, n, make_generator(self.seeds[stream], "validation"))

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        """{"kinds": {kind: {"fitted": {algorithm: hyperparameter}, "probe": {algorithm: {"distance": [b],
        "step": [b]}, "r2": [b], "r2_min": [b], "to least squares": [b]}}}, "curves": {"N=<n>, noise <std>":
        {"model": [b], algorithm: [b]}}}, as JSON-ready lists."""
        queries_gen = make_generator(self.seeds["queries"], "validation")
        out: dict[str, Any] = {"kinds": {}, "curves": {}}
        for kind, task in self.tasks.items():
            d = task.n_dims
            inverse_cov = torch.diag(1 / torch.tensor(task.x_variances or (1.0,) * d, dtype=torch.float64))
            queries, _ = task.sample_xy(self.queries, 1, queries_gen)
            queries = queries[:, 0]  # [K, d]
            fitted, probed = {}, {}
            for stream in ("tuning", "report"):
                xs, ys = self.sample(kind, stream, self.n_examples, self.contexts)
                implied = implied_weights(model, xs, ys, self.b, queries)
                w_ls = torch.linalg.lstsq(xs.double(), ys.double().unsqueeze(-1)).solution.squeeze(-1)  # [B, d]
                if stream == "tuning":
                    for name in self.algorithms:
                        iterates_for = lambda c, n=name, x=xs, y=ys, p=inverse_cov: self.iterates(n, x, y, c, p)
                        fitted[name], _ = fit_algorithm(implied["weights"], iterates_for, self.candidates(name), w_ls)
                else:
                    for name in self.algorithms:
                        closest = closest_iterates(implied["weights"],
                                                   self.iterates(name, xs, ys, fitted[name], inverse_cov), w_ls)
                        probed[name] = {"distance": closest["distance"].tolist(), "step": closest["step"].tolist()}
                    probed["r2"] = implied["r2"].mean(1).tolist()
                    probed["r2_min"] = implied["r2"].min(1).values.tolist()
                    probed["to least squares"] = (
                        (implied["weights"] - w_ls).norm(dim=-1) / w_ls.norm(dim=-1)).mean(1).tolist()
            out["kinds"][kind] = {"fitted": {n: fitted[n] for n in self.algorithms}, "probe": probed}
        d = self.tasks[self.curve_kind].n_dims
        curve_inverse = torch.eye(d, dtype=torch.float64)
        for n in self.lengths:
            for noise in self.noises:
                xs, ys = self.sample(self.curve_kind, "curves", n + 1, self.curve_prompts, noise)  # the last: the query
                tokens = build_prompt(xs, ys)  # [B, 2n + 1, d]
                model_errors = prediction_errors(model, tokens, ys, self.b)[:, -1]  # [b]: the query at every loop
                curves = {"model": model_errors.tolist()}
                for name in self.algorithms:
                    steps = self.iterates(name, xs[:, :-1], ys[:, :-1], out["kinds"][self.curve_kind]["fitted"][name],
                                          curve_inverse)
                    predictions = (steps[1 : self.b + 1] * xs[None, :, -1].double()).sum(-1)  # [b, B]
                    curves[name] = ((predictions - ys[None, :, -1].double()).square().mean(1) / d).tolist()
                out["curves"][f"N={n}, noise {noise:g}"] = curves
        return out


def _mean_distances(probes: Sequence[Mapping[str, Any]], loop: int) -> dict[str, float]:
    """Each algorithm's mean over `probes` (one `AlgorithmProbe` "probe" per run) of its distance at `loop`."""
    return {name: np.mean([p[name]["distance"][loop - 1] for p in probes]) for name in ALGORITHMS}


def probe_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], loops: Sequence[int]) -> str:
    """The report's table of `AlgorithmProbe` numbers, per group ({"trained x, probed y": its runs' probes}) and loop
    of `loops`: the implied predictor's R^2 (mean, and the worst context), its distance to least squares, each
    algorithm's mean distance with the matched step per run, and the closest algorithm."""
    rows = []
    for label, probes in groups.items():
        for j in loops:
            cells = [label, j, fmt(np.mean([p["r2"][j - 1] for p in probes])),
                     fmt(np.min([p["r2_min"][j - 1] for p in probes])),
                     fmt(np.mean([p["to least squares"][j - 1] for p in probes]))]
            distances = _mean_distances(probes, j)
            for name in ALGORITHMS:
                steps = ", ".join(str(p[name]["step"][j - 1]) for p in probes)
                cells.append(f"{fmt(distances[name])} (step {steps})")
            rows.append([*cells, min(distances, key=distances.get)])
    return markdown_table(["model / prompts", "loop", "R^2 (mean)", "R^2 (worst context)", "to least squares"]
                          + [f"{name}: distance (step per seed)" for name in ALGORITHMS] + ["closest"], rows)


def closest_table(groups: Mapping[str, Sequence[Mapping[str, Any]]], loops: Sequence[int]) -> str:
    """The closest algorithm (and its mean distance) at every loop of `loops`, one column per group of probes."""
    def closest(probes, j):
        distances = _mean_distances(probes, j)
        name = min(distances, key=distances.get)
        return f"{name} {fmt(distances[name])}"
    return markdown_table(["loop", *groups], [[j] + [closest(probes, j) for probes in groups.values()] for j in loops])


@torch.no_grad()
def loop_trace(model: torch.nn.Module, tokens: torch.Tensor, b: int, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Every loop's relative state update and query prediction, per prompt, from one run of b loops.

    Returns "updates" [b, B]: ||s_t - s_{t-1}|| / ||s_t|| over the prompt's tokens and channels
    (loop 1's is 1, from s_0 = 0; `state_updates` takes its mean over prompts), and "predictions"
    [b, B]: the query's prediction at every loop. What `halting` reads."""
    check_loops(b)
    require_int("loop_trace chunk", chunk)
    updates, predictions = [], []
    with eval_mode(model):
        device = next(model.parameters()).device
        for part in tokens.split(chunk):
            part_updates, part_predictions, previous = [], [], None
            for state in model.states(part.to(device), b):  # [B, S, h]
                reference = torch.zeros_like(state) if previous is None else previous
                change = (state - reference).flatten(1).norm(dim=1)  # [B]
                part_updates.append(change / state.flatten(1).norm(dim=1).clamp_min(1e-12))
                part_predictions.append(model.read_out(state)[:, -1])  # [B]: the query's prediction
                previous = state
            updates.append(torch.stack(part_updates).cpu())
            predictions.append(torch.stack(part_predictions).cpu())
    return {"updates": torch.cat(updates, 1), "predictions": torch.cat(predictions, 1)}


def halting(trace: dict[str, torch.Tensor], tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive halting on a `loop_trace`: each prompt stops at the first loop t >= 2 whose relative
    state update is below `tolerance` (or at the last loop traced). Returns (loops used [B], the
    query predictions at those loops [B])."""
    require(is_real(tolerance) and tolerance >= 0, f"halting tolerance={tolerance!r} must be a finite number >= 0")
    updates, predictions = trace["updates"], trace["predictions"]  # [b, B] each
    below = updates < tolerance  # [b, B]
    below[0] = False  # loop 1's update is 1 by definition: never a reason to stop
    below[-1] = True  # the last traced loop always stops
    stop = below.float().argmax(0)  # [B]: the first True, 0-based
    return stop + 1, predictions.gather(0, stop[None]).squeeze(0)


@torch.no_grad()
def state_updates(model: torch.nn.Module, tokens: torch.Tensor, b: int) -> torch.Tensor:
    """The relative size of each loop's state update: [b], loop 1's entry is 1 (from s_0 = 0).

    Entry t is mean over prompts of ||s_t - s_{t-1}|| / ||s_t|| (norms over all tokens and
    channels of a prompt). Falling towards 0 means the loop converges to a fixed point;
    a plateau above 0 means it keeps moving (a cycle or a drift).
    """
    return loop_trace(model, tokens, b, chunk=max(1, tokens.shape[0]))["updates"].mean(1)  # [b]


def prompt_errors(model: torch.nn.Module, tokens: torch.Tensor, ys: torch.Tensor, b: int, **options) -> torch.Tensor:
    """Squared error / scale of loop b's prediction for every prompt and position: [n_prompts, P].

    The per-prompt rows that `bootstrap_band` resamples; options (`batch_size`, `scale`) as in
    `prediction_errors`.
    """
    return prediction_errors(model, tokens, ys, b, per_prompt=True, **options)


def bootstrap_band(
    errors: torch.Tensor | np.ndarray, resamples: int = 1000, seed: int = 0, quantiles: tuple = (0.05, 0.95)
) -> dict[str, list[float]]:
    """Mean over prompts of errors [n_prompts, P] with a bootstrap band of that mean.

    Prompts are resampled with replacement `resamples` times (a fixed seed: the band repeats);
    the band is the given quantiles of the resampled means, per position (Garg et al.'s 5 to
    95% band). Returns {"mean", "low", "high"}, each [P].
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim == 1:
        errors = errors[:, None]
    require(errors.shape[0] >= 2, f"bootstrap_band needs at least 2 prompts, got {errors.shape[0]}")
    require(is_int(resamples) and resamples >= 1, f"bootstrap_band resamples={resamples!r} must be an integer >= 1")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, errors.shape[0], size=(resamples, errors.shape[0]))  # [R, n]
    means = np.stack([errors[pick].mean(0) for pick in picks])  # [R, P]
    low, high = np.quantile(means, quantiles, axis=0)
    return {"mean": errors.mean(0).tolist(), "low": low.tolist(), "high": high.tolist()}


def summarise_query_errors(query_errors: torch.Tensor) -> dict[str, float]:
    """From per-loop query errors [b]: the reference metric (mean over loops) and the last loop."""
    return {"reference": float(query_errors.mean()), "last_loop": float(query_errors[-1])}


def evaluate(
    model: torch.nn.Module,
    prompts: tuple[torch.Tensor, torch.Tensor],
    b: int,
    batch_size: int = 256,
    scale: float | None = None,
) -> dict[str, float]:
    """Level-1 validation on a fixed prompt set: {"reference", "last_loop"} at loop count b."""
    tokens, ys = prompts
    errors = prediction_errors(model, tokens, ys, b, batch_size, scale)  # [b, P]
    return summarise_query_errors(errors[:, -1])


def extrapolate(
    model: torch.nn.Module,
    prompts: tuple[torch.Tensor, torch.Tensor],
    b_values: list[int],
    batch_size: int = 256,
    scale: float | None = None,
) -> dict[str, list[float]]:
    """Both metrics at each eval loop count in `b_values` (one run to max b where valid)."""
    tokens, ys = prompts
    for b in b_values:
        check_loops(b, "b_values entry")
    result: dict[str, list] = {"b": list(b_values), "reference": [], "last_loop": []}
    if getattr(model, "loops_are_prefix_consistent", False):
        query = prediction_errors(model, tokens, ys, max(b_values), batch_size, scale)[:, -1]  # [max_b]
        per_b = [summarise_query_errors(query[:b]) for b in b_values]
    else:
        per_b = [evaluate(model, prompts, b, batch_size, scale) for b in b_values]
    for metrics in per_b:
        result["reference"].append(metrics["reference"])
        result["last_loop"].append(metrics["last_loop"])
    return result


def heldout_prompts(task, n_prompts: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation set: drawn once on CPU from the validation stream of `seed`."""
    return task.sample(n_prompts, n_points, make_generator(seed, "validation"))


def ood_prompts(task, kind: str, n_prompts: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed out-of-distribution prompt set (`tasks.sample_ood`), drawn once on CPU from the
    stream of `seed` and `kind`, so that models and baselines score the same prompts.
    "orthogonal_query" needs every x orthogonal to the earlier ones, so its prompts have
    min(n_points, n_dims) points."""
    if kind == "orthogonal_query":
        n_points = min(n_points, task.n_dims)
    if kind not in OOD_KINDS:
        raise ValueError(f"OOD kind {kind!r} is not known; choose one of {OOD_KINDS}")
    generator = make_generator(seed + OOD_KINDS.index(kind), "ood")  # one stream per kind
    return sample_ood(task, kind, n_prompts, n_points, generator)


def ood_baselines(
    task, names: Iterable[str], n_prompts: int, n_points: int, seed: int, kinds: Iterable[str] = OOD_KINDS
) -> dict[tuple[str, str], dict[str, list[float]]]:
    """{(kind, baseline name): `bootstrap_band` of the baseline's error at every position} on each OOD prompt set of
    `kinds` (`ood_prompts`), divided by the task's error scale: what a model's OOD curves are set beside."""
    bands = {}
    for kind in kinds:
        tokens, ys = ood_prompts(task, kind, n_prompts, n_points, seed)
        for name in names:
            bands[kind, name] = bootstrap_band(baseline_prompt_errors(tokens, ys, name, error_scale(task)))
    return bands


def validate(
    model: torch.nn.Module,
    task,
    b: int,
    n_points: int,
    seed: int,
    launches: int = 10,
    batches_per_launch: int = 10,
    batch_size: int = 128,
    extrapolation_b: list[int] | None = None,
    heldout: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Level-2 validation: the Laptev study's protocol, plus extrapolation over eval loop counts.

    Each launch draws a test std ~ U(0, 2) (mean stays 0, as in the study's code) and scores
    `batches_per_launch * batch_size` fresh prompts at the model's loop count b. `seed` fixes
    the launches, so every model validated with one seed sees the same stds and prompts.
    With `extrapolation_b` and `heldout`, also returns `extrapolate` on the held-out set.
    """
    for name, value in (("launches", launches), ("batches_per_launch", batches_per_launch), ("batch_size", batch_size)):
        require(is_int(value) and value >= 1, f"validate {name}={value!r} must be an integer >= 1")
    generator = make_generator(seed, "level2")
    stds, reference, last_loop = [], [], []
    for _ in range(launches):
        std = float(torch.rand((), generator=generator) * 2)
        tokens, ys = task.with_x_std(std).sample(batches_per_launch * batch_size, n_points, generator)
        metrics = evaluate(model, (tokens, ys), b, batch_size, error_scale(task))
        stds.append(std)
        reference.append(metrics["reference"])
        last_loop.append(metrics["last_loop"])
    result: dict[str, Any] = {"launches": {"std": stds, "reference": reference, "last_loop": last_loop}}
    if extrapolation_b:
        require(heldout is not None, "validate needs `heldout` prompts when extrapolation_b is given")
        result["extrapolation"] = extrapolate(model, heldout, extrapolation_b, scale=error_scale(task))
    return result
