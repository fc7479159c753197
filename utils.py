"""The library's entry point: everything a notebook or script needs, from the modules that own it.

Each job lives in its own module; this one only gathers them, so `from utils import train` keeps
working and a newcomer has one place to start:
- `checks`:     the validators behind every "bad input" error;
- `seeding`:    random streams (`stream_seed`, `make_generator`, `build_model`, `seed_everything`);
- `configs`:    `TrainConfig` and its schedule (loops, points and dimensions at a step);
- `evaluation`: level-1 and level-2 validation, extrapolation, label sensitivity, state updates,
                per-prompt errors and bootstrap bands;
- `storage`:    atomic JSON, weights and SVG writing, saved runs;
- `training`:   the training loop (`train_loop`, `train`, `train_step`, the loss, `TrainResult`,
                `step_times`).
Imports run one way: each module above imports only the ones listed before it (and `transformer`,
`tasks`, the model and the prompts), never `utils` (`tests/test_repository.py` checks it).
"""

from __future__ import annotations

from configs import LOSS_CHOICES, SUPERVISE_CHOICES, TrainConfig
from evaluation import (
    bootstrap_band,
    closest_iterates,
    error_scale,
    eval_mode,
    evaluate,
    extrapolate,
    fit_algorithm,
    halting,
    heldout_prompts,
    implied_weights,
    label_sensitivity,
    loop_trace,
    ood_prompts,
    prediction_errors,
    prompt_errors,
    state_updates,
    summarise_query_errors,
    validate,
)
from seeding import STREAMS, build_model, make_generator, seed_everything, stream_seed
from storage import (
    SVG_HASH_SALT,
    atomic_write_bytes,
    load_run,
    read_json,
    save_run,
    save_svg,
    set_aside,
    torch_bytes,
    write_json,
)
from training import (
    SingleStepper,
    StepPlan,
    TrainResult,
    check_effective,
    check_training,
    loss_value,
    plan_at,
    resolve_device,
    sample_batch,
    step_loss,
    step_times,
    train,
    train_loop,
    train_step,
    training_key,
)

__all__ = [
    "LOSS_CHOICES",
    "STREAMS",
    "SUPERVISE_CHOICES",
    "SVG_HASH_SALT",
    "SingleStepper",
    "StepPlan",
    "TrainConfig",
    "TrainResult",
    "atomic_write_bytes",
    "bootstrap_band",
    "build_model",
    "check_effective",
    "check_training",
    "closest_iterates",
    "error_scale",
    "eval_mode",
    "evaluate",
    "extrapolate",
    "fit_algorithm",
    "halting",
    "heldout_prompts",
    "implied_weights",
    "label_sensitivity",
    "load_run",
    "loop_trace",
    "loss_value",
    "make_generator",
    "ood_prompts",
    "plan_at",
    "prediction_errors",
    "prompt_errors",
    "read_json",
    "resolve_device",
    "sample_batch",
    "save_run",
    "save_svg",
    "seed_everything",
    "set_aside",
    "state_updates",
    "step_loss",
    "step_times",
    "stream_seed",
    "summarise_query_errors",
    "torch_bytes",
    "train",
    "train_loop",
    "train_step",
    "training_key",
    "validate",
    "write_json",
]
