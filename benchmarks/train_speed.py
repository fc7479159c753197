"""Training-step speed of the looped transformer on one CPU thread, against a measured matmul peak.

Owns the speed benchmark for the reference study's three model shapes (n_dims 8, P = 64 points,
i.e. S = 127 tokens and context 127, batch 64, b = 10 loops by default):

    tiny    1 layer,  2 heads, hidden  26, MLP 128
    small   2 layers, 4 heads, hidden  64, MLP 256
    medium  4 layers, 8 heads, hidden 128, MLP 768

One training step is `utils.train_step`, the function `utils.train` calls every step: sample a
batch from the train stream, forward at b loops, the reference loss, zero_grad, backward, Adam
step and the `.item()` that `train` logs. The model comes from
`utils.build_model`. Reported: the median of `--steps` timed steps after `--warmup` untimed ones.

FLOP convention (S tokens, h hidden, L layers, b loops, B batch):

    forward FLOPs per token = 2 * MACs(embed)                                  (once per forward)
                            + b * [ 2 * (MACs of every nn.Linear applied inside the loop,
                                         i.e. the shared stack and the injection step, + readout)
                                    + L * 2 * 2 * S * h ]                       (attention)
    FLOPs per step          = 3 * B * S * forward FLOPs per token             (backward = 2 x forward)

MACs(Linear) = in_features * out_features, read from the model's actual nn.Linear modules, so the
count follows the model if it changes. Attention counts QK^T and AV at 2*S*h FLOPs each over the
full S (the causal mask is not discounted), as Hoffmann et al. 2022 (app. F) do. The readout is
counted as the full Linear(h -> n_dims) on every token although the model only evaluates channel 0
at the P x positions; this overcounts a step by 1.2% (tiny), 0.4% (small), 0.08% (medium).
Biases, LayerNorm, GELU, softmax, the injection's additions and Adam are not counted.

The peak is the best of several timed fp32 2048x2048 matmuls (2 * 2048^3 FLOPs each) on the same
single thread, so "% of peak" says how much of what this core can do the training step gets.

    python benchmarks/train_speed.py [--steps 10] [--warmup 3] [--shapes tiny small medium]
                                     [--b 10] [--batch 64]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from torch import nn

# One thread before anything else touches torch's thread pools: the study's runs are single-threaded.
torch.set_num_threads(1)

from tasks import LinearRegression  # noqa: E402
from transformer import BaseLoopedTransformer, ModelConfig, count_parameters  # noqa: E402
from utils import TrainConfig, build_model, step_times  # noqa: E402

N_DIMS = 8
N_POINTS = 64
CONTEXT = 2 * N_POINTS - 1  # 127 tokens: x_1, y_1, ..., x_P with the final y dropped
SEED = 0

SHAPES: dict[str, ModelConfig] = {
    name: ModelConfig(n_dims=N_DIMS, n_layers=layers, n_heads=heads, hidden_dim=hidden, mlp_hidden=mlp, context=CONTEXT)
    for name, layers, heads, hidden, mlp in (
        ("tiny", 1, 2, 26, 128),
        ("small", 2, 4, 64, 256),
        ("medium", 4, 8, 128, 768),
    )
}

PEAK_SIZE = 2048


@dataclass(frozen=True)
class Result:
    shape: str
    params: int
    ms_per_step: float
    gflop_per_step: float

    @property
    def gflops(self) -> float:
        return self.gflop_per_step / (self.ms_per_step / 1e3)


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds per token of every nn.Linear inside `module` (in_features * out_features)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def step_flops(model: BaseLoopedTransformer, b: int, batch: int, n_tokens: int) -> float:
    """FLOPs of one training step under the convention in the module docstring."""
    config = model.config
    # Everything applied once per loop: the shared stack and the injection step (linear_add and
    # linear_cat own a Linear there), plus the readout taken after every loop.
    per_loop_macs = linear_macs(model.stack) + linear_macs(model.injection) + linear_macs(model.readout)
    attention = config.n_layers * 2 * 2 * n_tokens * config.hidden_dim
    per_token_forward = 2 * linear_macs(model.embed) + b * (2 * per_loop_macs + attention)
    return 3.0 * batch * n_tokens * per_token_forward


def matmul_peak(size: int = PEAK_SIZE, repeats: int = 5) -> float:
    """Best GFLOP/s of `repeats` timed fp32 size x size matmuls (after one untimed warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: first call pays for allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def time_training(name: str, model_config: ModelConfig, b: int, batch: int, steps: int, warmup: int) -> Result:
    """Median wall time of one `utils.train` step for one shape (`utils.step_times`)."""
    task = LinearRegression(n_dims=model_config.n_dims)
    train_config = TrainConfig(steps=1, batch_size=batch, b=b, n_points=N_POINTS, seed=SEED)
    ms_per_step = step_times({name: (model_config, train_config, task)}, steps, warmup)[name]
    model = build_model(model_config, train_config.seed)  # for its size and FLOPs
    n_tokens = 2 * N_POINTS - 1
    return Result(
        shape=name,
        params=count_parameters(model),
        ms_per_step=ms_per_step,
        gflop_per_step=step_flops(model, b, batch, n_tokens) / 1e9,
    )


def format_table(results: list[Result], peak: float) -> str:
    header = ("shape", "params", "ms/step", "GFLOP/step", "GFLOP/s", "% of peak")
    rows = [
        (
            r.shape,
            f"{r.params:,}",
            f"{r.ms_per_step:.1f}",
            f"{r.gflop_per_step:.2f}",
            f"{r.gflops:.1f}",
            f"{100 * r.gflops / peak:.1f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    # Shape name left-aligned, numbers right-aligned so their digits line up.
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per shape (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument("--b", type=int, default=10, help="loops per forward")
    parser.add_argument("--batch", type=int, default=64, help="prompts per step")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, CPU fp32; n_dims {N_DIMS}, "
        f"P {N_POINTS} ({CONTEXT} tokens), batch {args.batch}, b {args.b}; "
        f"median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(
        "FLOPs/step = 3 x forward; forward per token = 2 x embed MACs + b x (2 x Linear MACs of stack, "
        "injection and readout + layers x 2 x 2 x S x h attention)"
    )
    peak = matmul_peak()
    print(f"peak: {peak:.1f} GFLOP/s (best of 5 fp32 {PEAK_SIZE}x{PEAK_SIZE} matmuls)")
    results = [time_training(name, SHAPES[name], args.b, args.batch, args.steps, args.warmup) for name in args.shapes]
    print(format_table(results, peak))


if __name__ == "__main__":
    main()
