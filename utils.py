"""The library's entry point: what a notebook or script imports, gathered from the modules that own it.

A notebook imports `transformer` (the model) and this module, nothing else of the library. Each job lives in
its own module; this one only gathers them, so `from utils import train, Experiment` works and a newcomer has
one place to start. The modules, in an order where each imports only those listed before it (and the model,
`transformer` with `model_config`, `components` and `equilibrium`, and the plumbing, `tracking` and
`ensemble`), never `utils` (`tests/test_repository.py` checks both):
- `checks`:     the validators behind every "bad input" error;
- `tasks`:      the function classes and their prompts;
- `baselines`:  least squares, ridge, averaging, nearest neighbours and the iterative solvers, on the same prompts;
- `plots`:      the figures' look (colours, bands, box plots, tables, number format);
- `configs`:    `TrainConfig` and its schedule (loops, points and dimensions at a step);
- `seeding`:    random streams (`stream_seed`, `make_generator`, `build_model`, `seed_everything`);
- `storage`:    atomic JSON, weights and SVG writing, saved runs;
- `evaluation`: level-1 and level-2 validation, extrapolation, label sensitivity, state updates,
                per-prompt errors and bootstrap bands;
- `training`:   the training loop (`train_loop`, `train`, `train_step`, the loss, `TrainResult`,
                `step_times`);
- `verdicts`:   the gate, the paired verdict rule with Holm's correction, equivalence, strengths;
- `runner`:     a grid of runs (`RunSpec`, `EvalConfig`): cached, resumable, in a pool or as one ensemble;
- `protocol`:   the recipe (and `recipe`, its overrides), the tuning stream and screen seed, the rate choice and
                the run-naming rule;
- `plan`:       a notebook's plan (`Plan`, `Variant`): the base model and recipe, each variant its overrides,
                and the RunSpec of a variant at a seed, rate and budget;
- `report`:     the report's text: the template filled, its settings cells and sections, its `Answer`, and the
                numbers its conclusions cite (`Cited`, `reference_values`);
- `experiment`: one notebook's scaffolding (`Experiment`, `Results`) and its figures;
- `long_loops`: reading trained models far past their trained loop count.
"""

from __future__ import annotations

from baselines import (
    baseline_position_errors,
    baseline_prompt_errors,
    gd_iterates,
    newton_iterates,
    ridge_path,
)
from checks import (
    require,
)
from configs import (
    LOSS_CHOICES,
    SUPERVISE_CHOICES,
    TrainConfig,
)
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
from experiment import (
    Experiment,
    Results,
    far_over_train,
    level2_median,
    loop_error_at,
)
from long_loops import (
    PASS_MARKS,
    deq_mark,
    field_numbers,
    field_table,
    halting_summary,
    loop_at,
    marks_table,
    pass_marks,
    prompt_sets,
    solve_at,
    solve_halting,
    spread_ratio,
    trace_long_loops,
)
from plan import (
    Plan,
    Variant,
)
from plots import (
    COLORS,
    band,
    bootstrap_curve,
    boxplot,
    error_vs_examples,
    final_errors_panel,
    fmt,
    markdown_table,
    mean_pm_std,
    shared_legend,
    subplots,
)
from protocol import (
    RECIPE,
    SCREEN_SEED,
    TUNING_STREAM,
    choose_rates,
    longer_twin,
    recipe,
    run_name,
    screen_twin,
)
from report import (
    Answer,
    Cited,
    baselines_at_query,
    cite_error,
    joined,
    level1_row,
    recipe_row,
    reference_values,
    settings_table,
)
from runner import (
    EvalConfig,
    RunSpec,
    load_result,
    results_dir,
)
from seeding import (
    STREAMS,
    build_model,
    make_generator,
    seed_everything,
    stream_seed,
)
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
from tasks import (
    OOD_KINDS,
    DecisionTree,
    LinearRegression,
    NoisyLinearRegression,
    ReLUNetwork,
    SparseLinearRegression,
    build_prompt,
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
from verdicts import (
    Comparisons,
    Gate,
    Reading,
    final_error,
    learned_table,
    paired,
    reference_errors,
    reference_names,
    short_verdict,
    steps_to_gate,
    verdict,
)

__all__ = [
    "Answer",
    "COLORS",
    "Cited",
    "Comparisons",
    "DecisionTree",
    "EvalConfig",
    "Experiment",
    "Gate",
    "LOSS_CHOICES",
    "LinearRegression",
    "NoisyLinearRegression",
    "OOD_KINDS",
    "PASS_MARKS",
    "Plan",
    "RECIPE",
    "ReLUNetwork",
    "Reading",
    "Results",
    "RunSpec",
    "SCREEN_SEED",
    "STREAMS",
    "SUPERVISE_CHOICES",
    "SVG_HASH_SALT",
    "SingleStepper",
    "SparseLinearRegression",
    "StepPlan",
    "TUNING_STREAM",
    "TrainConfig",
    "TrainResult",
    "Variant",
    "atomic_write_bytes",
    "band",
    "baseline_position_errors",
    "baseline_prompt_errors",
    "baselines_at_query",
    "bootstrap_band",
    "bootstrap_curve",
    "boxplot",
    "build_model",
    "build_prompt",
    "check_effective",
    "check_training",
    "choose_rates",
    "cite_error",
    "closest_iterates",
    "deq_mark",
    "error_scale",
    "error_vs_examples",
    "eval_mode",
    "evaluate",
    "extrapolate",
    "far_over_train",
    "field_numbers",
    "field_table",
    "final_error",
    "final_errors_panel",
    "fit_algorithm",
    "fmt",
    "gd_iterates",
    "halting",
    "halting_summary",
    "heldout_prompts",
    "implied_weights",
    "joined",
    "label_sensitivity",
    "learned_table",
    "level1_row",
    "level2_median",
    "load_result",
    "load_run",
    "longer_twin",
    "loop_at",
    "loop_error_at",
    "loop_trace",
    "loss_value",
    "make_generator",
    "markdown_table",
    "marks_table",
    "mean_pm_std",
    "newton_iterates",
    "ood_prompts",
    "paired",
    "pass_marks",
    "plan_at",
    "prediction_errors",
    "prompt_errors",
    "prompt_sets",
    "read_json",
    "recipe",
    "recipe_row",
    "reference_errors",
    "reference_names",
    "reference_values",
    "require",
    "resolve_device",
    "results_dir",
    "ridge_path",
    "run_name",
    "sample_batch",
    "save_run",
    "save_svg",
    "screen_twin",
    "seed_everything",
    "set_aside",
    "settings_table",
    "shared_legend",
    "short_verdict",
    "solve_at",
    "solve_halting",
    "spread_ratio",
    "state_updates",
    "step_loss",
    "step_times",
    "steps_to_gate",
    "stream_seed",
    "subplots",
    "summarise_query_errors",
    "torch_bytes",
    "trace_long_loops",
    "train",
    "train_loop",
    "train_step",
    "training_key",
    "validate",
    "verdict",
    "write_json",
]
