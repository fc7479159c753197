"""The GPU check: the ensemble path verified and timed on CUDA, then as much of a grid as fits.

One prepared script for a short GPU lease (a few minutes), in stages, each written to the output
folder as it finishes, so a stage that runs out of time loses only itself:
1. correctness, in parts that each log and save on their own (a part that fails is `<part>_error`):
   - tests/test_ensemble.py on the GPU (`LOOPED_TEST_DEVICE`);
   - the measured deviation of ensemble members from separate runs (`member_deviation`);
   - causality of every model variant in `VARIANTS` on the device, plain and under the ensemble's
     vmap (`causality`): besides the first six, every option added since the first GPU runs (the
     loop embedding, final_norm, the learned PE of std 0.02, the paper's multiplicative injection
     with the PE added after the product, `pe_at="loop"`, the context cut with its tokens dropped,
     the carried state with every token or the carried ones only computed); where the ensemble
     refuses a variant by design (dropped tokens, `state_compute="carried"`) its vmap entry is
     "refused: <the ensemble's message>";
   - the training options added since (`TRAINING_OPTIONS`: truncated backpropagation, a random
     loop count per step, uniform or Poisson-lognormal, with a gradient window, the
     deep-equilibrium model's fixed-point solve with its implicit gradient, and the dropped-token
     and carried-only models, which only the single-run backend trains), each trained 30 steps on
     the device and on the CPU from one seed on the same prompts (`training_options`): the
     largest relative difference of the losses, that of the first step, and whether all are finite;
   - ms per training step on the device, and on the machine's CPU by `training.step_times`, of
     Experiment 5's cut to the first n=3 examples after loop 1 at its cpu preset (uncut, masked,
     dropped) and of Experiment 6's carried state (every token or the carried ones only computed)
     at its cpu preset (`drop_timing`);
   58 to 80 s on an H200 (2026-11-27; the first three parts took 38 s on an H100 before the
   additions);
2. learning: an ensemble of seeds trained on CUDA to the point where it has learned in-context
   regression, scored against averaging and least squares on fresh prompts;
3. speed: benchmarks/ensemble_speed.py at the study's tiny and small shapes, eager at 1, 16 and
   64 members with the members folded into attention's batch and with the MATH kernel under
   vmap, then torch.compile (MATH attention) and bf16 autocast at the small shape, and the kernels that take the
   time of one step (a profile);
4. a grid: the run specs in `--grid` (a JSON list of `RunSpec.to_dict()`, e.g. Experiment 1 at
   `full`) through the normal runner with the ensemble backend, smallest shapes first, while
   the time lasts; finished run records are packed into one archive.

    PYTHONPATH=. python scripts/gpu_check.py --out DIR [--budget 480] [--grid specs.json] [--stages 1 2 3 4]

PYTHONPATH: the GPU machine runs the working tree without installing it. On a machine without
CUDA, `--device cpu --smoke` runs every stage at toy sizes (for the tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from baselines import averaging, least_squares
from ensemble import Ensemble, check_ensemble, train_ensemble
from runner import RunSpec
from tasks import LinearRegression, build_prompt
from transformer import ModelConfig
from utils import (
    SingleStepper,
    TrainConfig,
    build_model,
    make_generator,
    prediction_errors,
    step_times,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
STARTED = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - STARTED


def say(log, text: str) -> None:
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()


def guarded(log, report: dict, save, run, label: str, key: str, closing) -> None:
    """Run one stage or part of a stage: a failure is a finding, logged as "<label> failed: ..." and kept
    as `report["<key>_error"]`, and what comes next still runs; then `closing(seconds)` is logged and the
    report saved."""
    started = time.perf_counter()
    try:
        run()
    except Exception as error:  # a failed stage or part is a finding; the next ones still run
        say(log, f"{label} failed: {type(error).__name__}: {error}")
        report[f"{key}_error"] = f"{type(error).__name__}: {error}"
    say(log, closing(time.perf_counter() - started))
    save()


# ----------------------------------------------------------------------------- 1. correctness


def deviation_of_members(device: str, steps: int) -> dict:
    """Largest relative differences between ensemble members and separate runs after `steps`."""
    model_config = ModelConfig(n_dims=3, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=15)
    task = LinearRegression(3)
    base = TrainConfig(
        steps=steps, batch_size=8, lr=3e-3, b=3, n_points=8, eval_prompts=32, eval_every=0.5, device=device
    )
    configs = [dataclasses.replace(base, seed=seed, b=b) for seed, b in ((1, 2), (2, 3), (3, 4))]
    models, results = train_ensemble(model_config, task, configs)
    tokens = task.sample(64, 8, make_generator(9, "validation"))[0].to(device)
    loss, weight, output = 0.0, 0.0, 0.0
    for config, model, result in zip(configs, models, results, strict=True):
        alone = build_model(model_config, config.seed)
        expected = train(alone, task, config, progress=False)
        got, want = torch.tensor(result.loss), torch.tensor(expected.loss)
        loss = max(loss, float(((got - want).abs() / want.abs().clamp_min(1e-12)).max()))
        for (name, a), b in zip(model.named_parameters(), alone.parameters(), strict=True):
            if not name.endswith("attn.qkv.bias"):  # the key bias: zero gradient, free to drift (see the tests)
                weight = max(weight, float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-12)))
        with torch.no_grad():
            a, b = model(tokens, config.b), alone(tokens, config.b)
        output = max(output, float((a - b).abs().max() / b.abs().max()))
    return {"steps": steps, "loss_rel": loss, "weight_rel": weight, "output_rel": output}


VARIANTS = {
    "default (Laptev block, add)": {},
    "gpt2 block, learned PE": {"block": "gpt2", "pe": "learned"},
    "selective SSM mixer": {"mixer": "ssm"},
    "context first n=3 after loop 1": {"context_keep": "first", "context_n": 3},
    "A->B stacks": {"loop_stacks": 2},
    "EMA injection": {"injection": "ema"},
    # the options added since the first GPU runs
    "loop embedding (sinusoidal)": {"loop_embedding": "sinusoidal"},
    "final norm on the Laptev block": {"final_norm": True},
    "learned PE, std 0.02": {"pe": "learned", "pe_std": 0.02},
    "paper multiplicative, PE after product": {"injection": "multiplicative", "pe": "learned", "pe_at": "loop"},
    "context first n=3 after loop 1, dropped": {"context_keep": "first", "context_n": 3, "context_compute": "drop"},
    "context first n=3 from loop 1, dropped": {
        "context_keep": "first",
        "context_n": 3,
        "context_cut_at": 1,
        "context_compute": "drop",
    },
    "state last 50% in place": {"state_keep": "last_in_place", "state_fraction": 0.5},
    "state last 50% in place, carried only": {
        "state_keep": "last_in_place",
        "state_fraction": 0.5,
        "state_compute": "carried",
    },
}
# Not here, since they are not causal by design: context_keep "random" (the kept subset is a checksum of the
# prompt, so a later token changes which earlier examples are kept), "random_batch" (shuffled) and state_keep
# "last_shifted" (hands position i a later position's state).


def vmap(ensemble: Ensemble, tokens: torch.Tensor) -> torch.Tensor:
    """A one-member ensemble's vmapped forward of tokens [B, S, d] at b = 3: predictions [3, B, P]."""
    return ensemble.forward(ensemble.params, ensemble.buffers, tokens[None], 3, None)[0]


def causality(device: str) -> dict[str, dict[str, float | str]]:
    """Largest change of an earlier prediction when a later token changes: plain and vmapped. A variant
    the ensemble refuses by design (`ensemble.check_ensemble`) has vmap "refused: <its message>"."""
    found = {}
    for label, fields in VARIANTS.items():
        config = ModelConfig(n_dims=4, n_layers=2, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23, **fields)
        model = build_model(config, seed=1).to(device).eval()
        tokens = LinearRegression(4).sample(8, 12, make_generator(3, "validation"))[0].to(device)  # [B, 23, 4]
        member = TrainConfig(steps=1, b=3, n_points=12, device=device)
        worst: dict[str, float | str] = {"plain": 0.0, "vmap": 0.0}
        try:
            check_ensemble(config, [member])
        except ValueError as error:  # by design: the ensemble's own checks, with their message
            worst["vmap"] = f"refused: {error}"
        ensemble = Ensemble(config, LinearRegression(4), [member]) if worst["vmap"] == 0.0 else None
        with torch.no_grad():
            base_plain = model(tokens, 3)
            base_vmap = vmap(ensemble, tokens) if ensemble is not None else None
            for position in range(1, tokens.shape[1]):
                perturbed = tokens.clone()
                perturbed[:, position] += 3.0
                earlier = [i for i in range(12) if 2 * i < position]
                plain = model(perturbed, 3)
                worst["plain"] = max(worst["plain"], float((plain - base_plain)[:, :, earlier].abs().max()))
                if ensemble is not None:
                    vmapped = vmap(ensemble, perturbed)
                    worst["vmap"] = max(worst["vmap"], float((vmapped - base_vmap)[:, :, earlier].abs().max()))
        found[label] = worst
    return found


class DrawnOnCPU:
    """A task whose batches are drawn on the CPU (from a CPU generator) and moved to `device`: a device's
    own generator draws another stream, so a run on the device would not see the CPU run's prompts."""

    def __init__(self, task, device: str) -> None:
        self.task, self.device, self.n_dims = task, device, task.n_dims

    def sample(self, *args, **options):
        return tuple(t.to(self.device) for t in self.task.sample(*args, **options))


# The training options added since the first GPU runs: label -> (ModelConfig fields, TrainConfig fields).
# The last two are model options that only the single-run backend trains (the ensemble refuses them).
TRAINING_OPTIONS = {
    "unrolled, every loop (reference)": ({}, {}),
    "truncated backprop, grad_window 2": ({}, {"grad_window": 2}),
    "random loops uniform 2..b, grad_window 2": ({}, {"loops_random": ("uniform", 2), "grad_window": 2}),
    "random loops poisson-lognormal mean 3, grad_window 2": (
        {},
        {"loops_random": ("poisson_lognormal", 3.0, 0.5), "grad_window": 2},
    ),
    # With a final LayerNorm: the study's additive block without one has no fixed point to find at
    # initialisation (s' = s + e + F(s + e)); there Anderson's iterates stay at a relative residual near 1 and
    # a change of 1e-7 in the prompt moves the predictions by 10% and more, on any device.
    "fixed point (Anderson, implicit gradient), final norm": (
        {"final_norm": True},
        {"solver": "fixed_point", "supervise": "last"},
    ),
    "context first n=3 after loop 1, dropped": (
        {"context_keep": "first", "context_n": 3, "context_compute": "drop"},
        {},
    ),
    "state last 50% in place, carried only": (
        {"state_keep": "last_in_place", "state_fraction": 0.5, "state_compute": "carried"},
        {},
    ),
}


def training_options(device: str, steps: int) -> dict[str, dict]:
    """Each of `TRAINING_OPTIONS` trained for `steps` steps on `device` and on the CPU, from one seed on the
    same prompts (drawn on the CPU, `DrawnOnCPU`) through the single-run stepper (`SingleStepper`): the
    largest relative difference of the step losses, that of the first step (same weights, same batch: the
    arithmetic alone), and whether every loss was finite on both."""
    task = LinearRegression(4)
    base = TrainConfig(
        steps=steps,
        batch_size=16,
        lr=3e-3,
        b=6,
        n_points=12,
        seed=5,
        lr_schedule="cosine",
        warmup=0.1,
        clip_grad_norm=1.0,
        eval_prompts=16,
    )
    threads = torch.get_num_threads()
    found = {}
    try:
        for label, (model_fields, train_fields) in TRAINING_OPTIONS.items():
            model_config = ModelConfig(
                n_dims=4, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23, **model_fields
            )
            losses = {}
            for where in (device, "cpu"):
                config = dataclasses.replace(base, device=where, **train_fields)
                stepper = SingleStepper(build_model(model_config, config.seed), DrawnOnCPU(task, where), config)
                stepper.generator = make_generator(config.seed, "train")  # on the CPU for both
                losses[where] = [stepper.step(done)[0] for done in range(steps)]
            got, want = torch.tensor(losses[device]), torch.tensor(losses["cpu"])
            relative = (got - want).abs() / want.abs().clamp_min(1e-12)
            found[label] = {
                "steps": steps,
                "loss_rel": float(relative.max()),
                "first_step_rel": float(relative[0]),
                "finite": bool(torch.isfinite(got).all() and torch.isfinite(want).all()),
                "last_loss": {"device": losses[device][-1], "cpu": losses["cpu"][-1]},
            }
    finally:
        torch.set_num_threads(threads)  # SingleStepper set the CPU run's one thread
    return found


def drop_timing_runs(smoke: bool) -> dict[str, tuple]:
    """The runs whose training step is timed: Experiment 5's cut to the first n=3 examples after loop 1 at its
    cpu preset (d 4, N 12, 2 layers of width 32 with 4 heads and MLP 128, learned PE of std 0.02, b 10, batch
    64, Experiment 0's recipe), uncut, masked and dropped; and Experiment 6's carried state at its cpu preset
    (d 4, 12 points, the same layers without PE), every token computed or the carried ones only. `smoke`:
    toy sizes. {label: (ModelConfig, TrainConfig, task)}"""
    n_dims, n_points, (layers, heads, hidden, mlp), batch, b = (
        (2, 7, (1, 2, 16, 32), 8, 3) if smoke else (4, 13, (2, 4, 32, 128), 64, 10)
    )
    task = LinearRegression(n_dims)
    shape = dict(n_dims=n_dims, n_layers=layers, n_heads=heads, hidden_dim=hidden, mlp_hidden=mlp)
    recipe = dict(lr=1e-2, lr_schedule="cosine", warmup=0.05, clip_grad_norm=1.0, eval_prompts=16, seed=42)
    exp5 = {  # Experiment 5: N = n_points - 1 examples, n = 3 kept from loop 2 on
        "exp 5 no cut": {},
        "exp 5 first n=3 after loop 1, masked": {"context_keep": "first", "context_n": 3},
        "exp 5 first n=3 after loop 1, dropped": {"context_keep": "first", "context_n": 3, "context_compute": "drop"},
    }
    runs = {
        label: (
            ModelConfig(**shape, context=2 * n_points - 1, pe="learned", pe_std=0.02, **fields),
            TrainConfig(steps=2500, batch_size=batch, b=b, n_points=n_points, **recipe),
            task,
        )
        for label, fields in exp5.items()
    }
    points6 = n_points - 1  # Experiment 6: 12 points, 23 tokens
    exp6 = {
        "exp 6 all (base model)": {},
        "exp 6 last 50% in place": {"state_keep": "last_in_place", "state_fraction": 0.5},
        "exp 6 last 50% in place, carried only": {
            "state_keep": "last_in_place",
            "state_fraction": 0.5,
            "state_compute": "carried",
        },
        "exp 6 last 25% in place": {"state_keep": "last_in_place", "state_fraction": 0.25},
        "exp 6 last 25% in place, carried only": {
            "state_keep": "last_in_place",
            "state_fraction": 0.25,
            "state_compute": "carried",
        },
    }
    for label, fields in exp6.items():
        runs[label] = (
            ModelConfig(**shape, context=2 * points6 - 1, **fields),
            TrainConfig(steps=2500, batch_size=batch, b=b, n_points=points6, **recipe),
            task,
        )
    return runs


def drop_timing(device: str, smoke: bool) -> dict:
    """Milliseconds per training step of `drop_timing_runs` on `device` (`training.step_times`, the device
    synchronised around each step), and on this machine's CPU, one thread, by the same function (what
    Experiments 5 and 6 report)."""
    runs = drop_timing_runs(smoke)
    steps, warmup, cpu_steps, cpu_warmup = (2, 1, 2, 1) if smoke else (30, 5, 10, 2)
    found = {
        "device": device,
        "steps": steps,
        "warmup": warmup,
        "device_ms": step_times(runs, steps, warmup, device=device),
    }
    found.update({"cpu_steps": cpu_steps, "cpu_warmup": cpu_warmup, "cpu_ms": step_times(runs, cpu_steps, cpu_warmup)})
    found["shapes"] = {
        label: {"model": model.to_dict(), "batch_size": config.batch_size, "b": config.b, "n_points": config.n_points}
        for label, (model, config, _) in runs.items()
    }
    return found


def stage_correctness(args, log, report: dict, save) -> None:
    """The parts in turn, each on its own: a part that fails is logged as `<part>_error` and the next runs;
    the report is saved after each."""

    def part(name: str, run) -> None:
        guarded(log, report, save, run, name, name, lambda seconds: f"  ({name}: {seconds:.0f} s)")

    def ensemble_tests() -> None:
        env = {**os.environ, "LOOPED_TEST_DEVICE": args.device, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_ensemble.py"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        say(log, f"pytest tests/test_ensemble.py on {args.device}: exit {done.returncode}\n  " + "\n  ".join(tail))
        report["ensemble_tests"] = {"exit": done.returncode, "tail": tail}

    def member_deviation() -> None:
        for steps in (12, 200) if not args.smoke else (4,):
            deviation = deviation_of_members(args.device, steps)
            say(log, f"ensemble members vs separate runs after {steps} steps (max relative): {deviation}")
            report.setdefault("member_deviation", []).append(deviation)

    def causality_part() -> None:
        report["causality"] = causality(args.device)
        say(log, "causality, largest change of an earlier prediction (plain, vmap):")
        number = lambda value: f"{value:.3g}" if isinstance(value, float) else value
        for label, worst in report["causality"].items():
            say(log, f"  {label:<42} {number(worst['plain'])}  {number(worst['vmap'])}")

    def options_part() -> None:
        steps = 4 if args.smoke else 30
        report["training_options"] = training_options(args.device, steps)
        say(log, f"training options, {args.device} vs CPU on the same prompts, {steps} steps (max relative loss):")
        for label, found in report["training_options"].items():
            say(
                log,
                f"  {label:<52} {found['loss_rel']:.3g} (first step {found['first_step_rel']:.3g})"
                f"{'' if found['finite'] else ', NOT FINITE'}; last loss {found['last_loss']['device']:.4g} on "
                f"{args.device}, {found['last_loss']['cpu']:.4g} on CPU",
            )

    def timing_part() -> None:
        found = report["drop_timing"] = drop_timing(args.device, args.smoke)
        say(log, f"ms per training step, median of {found['steps']} on {args.device}, {found['cpu_steps']} on CPU:")
        for label, ms in found["device_ms"].items():
            say(log, f"  {label:<42} {ms:8.2f} ms on {args.device}  {found['cpu_ms'][label]:8.2f} ms on CPU")

    part("ensemble_tests", ensemble_tests)
    part("member_deviation", member_deviation)
    part("causality", causality_part)
    part("training_options", options_part)
    part("drop_timing", timing_part)


# ----------------------------------------------------------------------------- 2. learning


def stage_learning(args, log, report: dict) -> None:
    """Experiment 0's recipe on its model (d 4, 11 examples, 2 layers of width 32, b 10; peak lr 1e-2,
    5% warm-up, cosine decay, clipping at 1.0, 3000 x 64), 8 seeds as one ensemble, scored on fresh
    prompts against its convergence gate (a tenth of the error of predicting 0)."""
    task = LinearRegression(4)
    model_config = ModelConfig(n_dims=4, n_layers=2, n_heads=4, hidden_dim=32, mlp_hidden=128, context=23)
    steps = 5 if args.smoke else args.learn_steps
    configs = [
        TrainConfig(
            steps=steps,
            batch_size=64,
            lr=1e-2,
            b=10,
            n_points=12,
            seed=seed,
            device=args.device,
            lr_schedule="cosine",
            warmup=0.05,
            clip_grad_norm=1.0,
            eval_every=0.25,
            eval_prompts=256,
        )
        for seed in range(8)
    ]
    started = time.perf_counter()
    models, results = train_ensemble(model_config, task, configs)
    seconds = time.perf_counter() - started
    xs, ys = task.sample_xy(1280, 12, make_generator(12345, "validation"))
    tokens = build_prompt(xs, ys)
    errors = [prediction_errors(model, tokens, ys, 10)[-1, -1].item() for model in models]
    baselines = {
        name: ((estimator(xs, ys)[:, -1] - ys[:, -1]).square().mean() / task.n_dims).item()
        for name, estimator in (("least squares", least_squares), ("averaging", averaging))
    }
    baselines["predicting 0"] = (ys[:, -1].square().mean() / task.n_dims).item()
    gate = 0.1 * baselines["predicting 0"]
    report["learning"] = {
        "steps": steps,
        "seconds": seconds,
        "status": [r.status for r in results],
        "last_loop_error": errors,
        "gate": gate,
        "evals": [r.evals for r in results],
        **baselines,
    }
    say(
        log,
        f"learning: {len(configs)} seeds x {steps} steps as one ensemble in {seconds:.0f} s; last-position error "
        f"per dim (loop 10) {[round(e, 4) for e in errors]}; {sum(e <= gate for e in errors)} of {len(errors)} under "
        f"the gate {gate:.4f}; predicting 0 {baselines['predicting 0']:.4f}, averaging {baselines['averaging']:.4f}, "
        f"least squares {baselines['least squares']:.2g}",
    )


# ----------------------------------------------------------------------------- 3. speed


def stage_speed(args, log, report: dict, out: Path) -> None:
    base = [sys.executable, "benchmarks/ensemble_speed.py", "--device", args.device]
    small = ["--steps", "1", "--warmup", "0", "--b", "2", "--batch", "4"] if args.smoke else ["--steps", "10"]
    one = ["--shapes", "tiny", "--members", "2"] if args.smoke else ["--shapes", "small", "--members", "16"]
    both = ["--shapes", "tiny", "small", "--members", "1", "16", "64"] if not args.smoke else one
    runs = [("eager, folded attention", both)]
    if args.device.startswith("cuda"):
        runs += [
            ("eager, MATH attention under vmap", [*both, "--attention", "math"]),
            # folded attention does not compile on CUDA (ensemble.py); 64 members took over 150 s to compile
            ("compile, MATH attention", ["--shapes", "small", "--members", "16", "--compile", "--attention", "math"]),
            ("bf16, folded attention", ["--shapes", "small", "--members", "64", "--bf16"]),
            ("profile, folded attention", ["--shapes", "small", "--members", "64", "--profile"]),
        ]
    else:
        runs += [("math attention", [*one, "--attention", "math"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(out / "speed.txt", "a") as text:
        for label, extra in runs:
            remaining = args.budget - elapsed() - args.reserve
            if remaining < 30:
                say(log, f"speed {label}: skipped, {remaining:.0f} s left")
                continue
            try:
                done = subprocess.run(
                    [*base, *extra, *small],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=min(remaining, 240),
                )
                output = done.stdout + (done.stderr[-2000:] if done.returncode else "")
            except subprocess.TimeoutExpired:
                output = f"timed out after {min(remaining, 240):.0f} s\n"
            text.write(f"## {label}: {' '.join(extra + small)}\n{output}\n")
            text.flush()
            say(log, f"speed {label}:\n{output}")
            report.setdefault("speed", {})[label] = output


# ----------------------------------------------------------------------------- 4. a grid


def stage_grid(args, log, report: dict, out: Path) -> None:
    specs = [RunSpec.from_dict(values) for values in json.loads(Path(args.grid).read_text())]
    if args.smoke:
        evaluation = dataclasses.replace(specs[0].evaluation, launches=1, batches_per_launch=1, batch_size=8)
        train = {"steps": 4, "eval_prompts": 16, "device": args.device}
        specs = [
            dataclasses.replace(s, train=dataclasses.replace(s.train, **train), evaluation=evaluation)
            for s in specs[:2]
        ]
    shapes: dict[str, list[RunSpec]] = {}
    for spec in specs:
        shapes.setdefault(spec.labels.get("model", spec.name), []).append(spec)
    grid_dir = out / "grid"
    finished: list[str] = []
    for shape, group in sorted(shapes.items(), key=lambda item: item[1][0].cost()):  # smallest first
        remaining = args.budget - elapsed() - 20
        say(log, f"grid: shape {shape}, {len(group)} runs, {remaining:.0f} s left")
        if remaining < 60:
            break
        started = time.perf_counter()
        # A group in a child process, so that the time limit can stop it without losing the others.
        code = (
            "import json, sys;"
            "from runner import RunSpec, run_grid;"
            "specs = [RunSpec.from_dict(v) for v in json.loads(sys.argv[1])];"
            "run_grid(specs, sys.argv[2], backend='ensemble', progress=False)"
        )
        payload = json.dumps([s.to_dict() for s in group])
        try:
            subprocess.run(
                [sys.executable, "-c", code, payload, str(grid_dir)],
                check=True,
                timeout=remaining,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            say(log, f"grid: shape {shape} finished in {time.perf_counter() - started:.0f} s")
        except subprocess.TimeoutExpired:
            say(log, f"grid: shape {shape} stopped by the time limit after {time.perf_counter() - started:.0f} s")
            break
        except subprocess.CalledProcessError as error:
            say(log, f"grid: shape {shape} failed ({error}); see the output above")
            break
        finally:
            finished = (
                sorted(p.name for p in (grid_dir / "data").glob("*.json")) if (grid_dir / "data").exists() else []
            )
            with tarfile.open(out / "grid_records.tar.gz", "w:gz") as archive:
                for name in finished:
                    archive.add(grid_dir / "data" / name, arcname=f"data/{name}")
    report["grid"] = {"finished": finished, "of": len(specs)}
    say(log, f"grid: {len(finished)} of {len(specs)} runs finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the log, figures and records")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything")
    parser.add_argument("--reserve", type=float, default=0, help="seconds the speed stage leaves for the grid")
    parser.add_argument("--grid", help="JSON list of RunSpec dicts for stage 4")
    parser.add_argument("--learn-steps", type=int, default=3000)
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3, 4], choices=(1, 2, 3, 4))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, for a test on CPU")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available; use --device cpu --smoke to try the script")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    report["machine"] = {"torch": torch.__version__, "python": platform.python_version(), "device": device_name}
    save = lambda: (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str, allow_nan=True))
    with open(out / "gpu_check.log", "a") as log:
        say(log, f"torch {torch.__version__}, Python {platform.python_version()}, {device_name}")
        stages = {
            1: lambda: stage_correctness(args, log, report, save),
            2: lambda: stage_learning(args, log, report),
            3: lambda: stage_speed(args, log, report, out),
            4: lambda: stage_grid(args, log, report, out) if args.grid else say(log, "grid: no --grid given"),
        }
        for number in args.stages:
            closing = lambda seconds, number=number: f"stage {number}: {seconds:.0f} s (total {elapsed():.0f} s)"
            guarded(log, report, save, stages[number], f"stage {number}", f"stage_{number}", closing)


if __name__ == "__main__":
    main()
