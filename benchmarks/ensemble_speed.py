"""Model-steps per second of batched ensembles against one-at-a-time training.

Owns the ensemble benchmark: for each of the reference study's shapes (`train_speed.SHAPES`:
n_dims 8, P = 64 points, b = 10 loops, batch 64 by default) and each ensemble size M, it times
one training step of an `ensemble.Ensemble` of M members (M seeds, one vmapped model) and one
`utils.train_step` of a single model, the step `utils.train` runs. Reported: the median step
time and model-steps per second (M / step time for the ensemble, 1 / step time alone), and the
speed-up of the ensemble over training the M models one after another.

    python benchmarks/ensemble_speed.py [--members 1 4 16 64] [--shapes tiny small medium]
        [--device cuda] [--compile] [--bf16] [--attention folded] [--profile] [--steps 5] [--warmup 2] [--b 10]
        [--batch 64]

`--compile` (torch.compile of the vmapped forward) and `--bf16` (bf16 autocast) apply to the
ensemble on CUDA only. `--attention` is how the ensemble computes attention (`ensemble.ATTENTION`):
"folded" (the default) calls torch's kernel once with the member axis folded into the batch,
"math" runs the MATH kernel (plain matrix products) under vmap, "vmap" leaves the kernel and its
vmap batching rule to torch, which runs a kernel without a rule member by member (printed at the
end). On CPU one thread is used, as in the runner's workers; ensembles are not
expected to pay there (docs/design.md): the runner uses one process per core on CPU and the
ensemble on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

# The sibling benchmark: Python puts a script's own folder first on sys.path.
from train_speed import N_POINTS, SHAPES

from ensemble import ATTENTION, Ensemble
from tasks import LinearRegression
from transformer import ModelConfig
from utils import TrainConfig, build_model, make_generator, train_step


def median_seconds(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `step()` over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_alone(model_config: ModelConfig, config: TrainConfig, steps: int, warmup: int) -> float:
    task = LinearRegression(model_config.n_dims)
    model = build_model(model_config, config.seed).to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = make_generator(config.seed, "train", config.device)
    return median_seconds(
        lambda: train_step(model, optimizer, task, generator, config), steps, warmup, torch.device(config.device)
    )


def time_ensemble(
    model_config: ModelConfig,
    config: TrainConfig,
    members: int,
    steps: int,
    warmup: int,
    compile: bool,
    bf16: bool,
    attention: str = "folded",
    profile: bool = False,
) -> float:
    configs = [TrainConfig(**{**config.to_dict(), "seed": config.seed + m}) for m in range(members)]
    ensemble = Ensemble(
        model_config,
        LinearRegression(model_config.n_dims),
        configs,
        compile=compile,
        autocast=torch.bfloat16 if bf16 else None,
        attention=attention,
    )
    counter = iter(range(10**9))
    seconds = median_seconds(lambda: ensemble.step(next(counter)), steps, warmup, ensemble.device)
    if profile:
        print_profile(lambda: ensemble.step(next(counter)), ensemble.device)
    return seconds


def print_profile(step, device: torch.device, rows: int = 15) -> None:
    """The operators (and on CUDA the kernels) that take the time of one `step()`."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as profiler:
        step()
        if on_cuda:
            torch.cuda.synchronize()
    print(profiler.key_averages().table(sort_by="cuda_time_total" if on_cuda else "cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the ensemble's forward (CUDA)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the ensemble's forward (CUDA)")
    parser.add_argument(
        "--attention", choices=ATTENTION, default="folded", help="the ensemble's attention (ensemble.ATTENTION)"
    )
    parser.add_argument("--profile", action="store_true", help="print the operators that take one ensemble step's time")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--b", type=int, default=10, help="loops per forward")
    parser.add_argument("--batch", type=int, default=64, help="prompts per step and member")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or min(args.members) < 1:
        parser.error("--steps and --members must be >= 1 and --warmup >= 0")
    on_cuda = args.device.startswith("cuda")
    if (args.compile or args.bf16) and not on_cuda:
        parser.error("--compile and --bf16 are GPU options; this benchmark runs them only with --device cuda")
    threads = None if on_cuda else 1
    if threads:
        torch.set_num_threads(threads)
    device_name = torch.cuda.get_device_name() if on_cuda else "CPU, 1 thread"
    print(
        f"torch {torch.__version__}, {device_name}; n_dims 8, P {N_POINTS}, batch {args.batch} per member, "
        f"b {args.b}; median of {args.steps} steps after {args.warmup} warm-up; "
        f"compile {args.compile}, bf16 {args.bf16}, ensemble attention {args.attention}"
    )
    print("shape   members  ensemble ms/step  model-steps/s  alone ms/step  alone model-steps/s  speed-up")
    fallbacks: set[str] = set()  # ops that vmap runs member by member (no batching rule on this device)
    for name in args.shapes:
        config = TrainConfig(
            steps=1, batch_size=args.batch, b=args.b, n_points=N_POINTS, seed=0, device=args.device, threads=threads
        )
        alone = time_alone(SHAPES[name], config, args.steps, args.warmup)
        for members in args.members:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                together = time_ensemble(
                    SHAPES[name],
                    config,
                    members,
                    args.steps,
                    args.warmup,
                    args.compile,
                    args.bf16,
                    args.attention,
                    args.profile,
                )
            fallbacks |= {
                str(w.message).split("batching rule for ")[1].split(".")[0]
                for w in caught
                if "batching rule for " in str(w.message)
            }
            print(
                f"{name:<7} {members:>7}  {together * 1e3:>16.1f}  {members / together:>13.1f}  {alone * 1e3:>13.1f}"
                f"  {1 / alone:>19.1f}  {alone * members / together:>8.2f}"
            )

    if fallbacks:
        print(f"note: vmap has no batching rule here for {sorted(fallbacks)}; it runs them member by member")


if __name__ == "__main__":
    main()
