"""Experiment tracking: one wandb run per training run of a grid (opt-in).

Owns `Tracking` (where and how runs are tracked), `tracking_from_env` (the `TRACK` setting beside
`PRESET` and `BACKEND`), `check` (the one error before a grid when wandb is missing), `start` (a
wandb run for one `RunSpec`, as a `SafeRun`) and `close` (its final metrics, then finish). With
tracking off (the default) nothing here imports wandb. Tracking is optional to the science: a run
that wandb cannot start, log or finish warns and trains and is saved as it would untracked.

    TRACK=wandb PRESET=cpu jupyter nbconvert --execute "experiments/experiment 1 - scaling.ipynb" ...

Each training run gets its own wandb run: project `WANDB_PROJECT` (default "looped-transformers"),
group "experiment N <preset>", name the run's spec name, config the whole spec (`RunSpec.to_dict`).
The training loop logs `train/loss` every step and `eval/reference`, `eval/last_loop` at each
validation (`training.train_loop`); `close` writes the record's final metrics to the run's
summary. `WANDB_MODE=offline` keeps everything on disk (no network; `wandb sync` uploads later);
the files go to `<results folder>/wandb/` (ignored by git) unless `WANDB_DIR` says otherwise. A run whose training
was reused from the cache (`runner`) logs its stored curves; a run resumed from a checkpoint logs
the steps after the checkpoint in a new wandb run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checks import require

TRACKERS = ("off", "wandb")
MODES = ("online", "offline", "disabled")
DEFAULT_PROJECT = "looped-transformers"


@dataclass(frozen=True)
class Tracking:
    """Where a grid's runs are tracked: wandb `project`, `group`, `mode` and the folder `dir`
    in whose `wandb/` wandb writes its files (None: wandb's default, the working directory)."""

    project: str = DEFAULT_PROJECT
    group: str | None = None
    mode: str = "online"
    dir: str | None = None

    def __post_init__(self) -> None:
        require(self.mode in MODES, f"Tracking.mode={self.mode!r} must be one of {MODES}")
        require(bool(self.project), "Tracking.project must be a non-empty wandb project name")


def tracking_from_env(group: str, out_dir: str | Path | None = None) -> Tracking | None:
    """The tracking `TRACK` asks for: unset, "" or "off" gives None; "wandb" a `Tracking` with
    project `WANDB_PROJECT`, mode `WANDB_MODE` (default online) and files under `WANDB_DIR` or
    `out_dir` (in its `wandb/` folder, which git ignores). Anything else is an error naming the allowed values."""
    tracker = os.environ.get("TRACK", "off") or "off"
    require(tracker in TRACKERS, f"TRACK={tracker!r} is not allowed; choose one of {TRACKERS}")
    if tracker == "off":
        return None
    folder = os.environ.get("WANDB_DIR") or (str(out_dir) if out_dir is not None else None)  # wandb adds wandb/
    return Tracking(
        project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        group=group,
        mode=os.environ.get("WANDB_MODE") or "online",
        dir=folder,
    )


def check(tracking: Tracking | None) -> None:
    """Before a grid: the one clear error when tracking is asked for and cannot work here (wandb not
    installed). Failures that only a run can meet (no network, a wandb error) do not stop the science:
    they warn, and the runs train and are saved untracked (`start`, `SafeRun`)."""
    if tracking is None:
        return
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"TRACK=wandb asks for wandb tracking, but wandb cannot be imported ({error}); install it "
            "(pip install wandb) or set TRACK=off"
        ) from None


# Set when a wandb run could not start in this process: its later runs train untracked at once, rather
# than each waiting out wandb's start-up timeout (about 90 s online without a network).
_START_FAILED: str | None = None


def start(tracking: Tracking | None, name: str, config: dict[str, Any]) -> SafeRun | None:
    """A wandb run named `name` with `config` (a `SafeRun`), or None when `tracking` is None or wandb
    could not start one (it warns once per process, and the run trains untracked). Several may be
    open at once (an ensemble's members)."""
    global _START_FAILED
    if tracking is None or _START_FAILED is not None:
        return None
    try:
        import wandb  # only here: with tracking off wandb is never imported

        if tracking.dir is not None:
            Path(tracking.dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=tracking.project,
            group=tracking.group,
            name=name,
            config=config,
            mode=tracking.mode,
            dir=tracking.dir,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
    except Exception as error:  # tracking is optional to the science: the run goes on untracked
        _START_FAILED = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"wandb could not start a run for {name!r} ({_START_FAILED}); this and the later runs of this "
            "process train and are saved untracked (WANDB_MODE=offline needs no network)",
            stacklevel=2,
        )
        return None
    return SafeRun(run, name)


class SafeRun:
    """A wandb run whose failures never cost a training step or a record: the first call that fails
    warns, naming the run and the call, and the run is tracked no further."""

    def __init__(self, run, name: str):
        self.run, self.name = run, name

    def _fail(self, call: str, error: Exception) -> None:
        warnings.warn(
            f"wandb failed in {call} for run {self.name!r} ({type(error).__name__}: {error}); the run goes on "
            "untracked",
            stacklevel=3,
        )
        self.run = None

    def log(self, values: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(values, step=step)
        except Exception as error:
            self._fail("log", error)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        if self.run is None:
            return
        try:
            for key, value in summary.items():
                self.run.summary[key] = value
            self.run.finish(exit_code=exit_code)
        except Exception as error:
            self._fail("finish", error)


def log_curves(run, result) -> None:
    """Log a stored `TrainResult`'s curves (a run whose training was reused, not re-run)."""
    if run is None:
        return
    evals = {entry["step"]: entry for entry in result.evals}
    for step in sorted(set(range(1, len(result.loss) + 1)) | set(evals)):
        values = {"train/loss": result.loss[step - 1]} if 1 <= step <= len(result.loss) else {}
        values |= {  # the other per-step series (the solve's residual, the Jacobian estimate) where measured
            f"train/{key}": series[step - 1]
            for key, series in getattr(result, "diagnostics", {}).items()
            if 1 <= step <= len(series) and series[step - 1] is not None
        }
        if step in evals:
            values |= {"eval/reference": evals[step]["reference"], "eval/last_loop": evals[step]["last_loop"]}
        run.log(values, step=step)


def final_metrics(record: dict) -> dict[str, Any]:
    """The numbers of a run record that go to its tracked run's summary."""
    train = record["train"]
    metrics: dict[str, Any] = {
        "status": train["status"],
        "train_wall_time_s": train["wall_time_s"],
        "parameters": record["parameters"],
        "training_reused": record["training_reused"],
    }
    if train["loss"]:
        metrics["final/train_loss"] = train["loss"][-1]
    if train["evals"]:
        metrics |= {f"final/eval_{key}": train["evals"][-1][key] for key in ("reference", "last_loop")}
    level2 = record.get("level2")
    if level2 is not None:
        launches = [value for value in level2["launches"]["last_loop"] if value is not None]
        if launches:
            metrics["final/level2_last_loop_mean"] = sum(launches) / len(launches)
        extrapolation = level2["extrapolation"]
        metrics["final/extrapolation_last_loop"] = {
            str(b): value for b, value in zip(extrapolation["b"], extrapolation["last_loop"], strict=True)
        }
    if "loop_errors" in record:
        metrics["final/heldout_query_last_loop"] = record["loop_errors"][-1]
    return metrics


def close(run: SafeRun | None, record: dict | None) -> None:
    """Write a finished run record's final metrics to `run`'s summary and finish it (a failure warns)."""
    if run is None:
        return
    summary = final_metrics(record) if record is not None else {}
    run.finish(summary, exit_code=0 if record is not None and record["train"]["status"] == "finished" else 1)
