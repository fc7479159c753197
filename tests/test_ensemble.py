"""Batched ensembles: each member's result equals a separate run with its seed and b.

On CPU by default. `LOOPED_TEST_DEVICE=cuda` runs the equivalence tests on a GPU
(scripts/gpu_check.py does): there the vmapped kernels are not the single model's kernels (other
reduction orders, cuBLAS batched against plain GEMMs), so rounding differs from the first step on
and grows through training; the CUDA tolerance below is stated for these 12-step runs.
"""

import dataclasses
import os
import shutil
import warnings

import pytest
import torch
from conftest import interrupt_at

import ensemble
import runner
from ensemble import train_ensemble
from runner import Level2Config, RunSpec, resolve_backend, run_grid
from tasks import LinearRegression
from transformer import ModelConfig
from utils import TrainConfig, build_model, make_generator, train

MODEL = ModelConfig(n_dims=3, n_layers=1, n_heads=2, hidden_dim=16, mlp_hidden=32, context=15)
TASK = LinearRegression(3)
DEVICE = os.environ.get("LOOPED_TEST_DEVICE", "cpu")
BASE = TrainConfig(
    steps=12, batch_size=8, lr=3e-3, b=3, n_points=8, seed=1, eval_prompts=32, eval_every=0.25, device=DEVICE
)
# (losses and weights, model outputs, validation errors): CPU to float rounding; CUDA wider.
TOLERANCE = {
    "cpu": (dict(rtol=1e-5, atol=1e-6), dict(rtol=1e-4, atol=1e-5), 1e-5),
    "cuda": (dict(rtol=1e-3, atol=1e-4), dict(rtol=1e-3, atol=1e-3), 1e-3),
}[DEVICE.split(":")[0]]
cpu_only = pytest.mark.skipif(DEVICE != "cpu", reason="a CPU-only check (bit-identity or the CPU backends)")


def assert_same_as_separate_runs(configs, model_config=MODEL):
    models, results = train_ensemble(model_config, TASK, configs)
    tokens, _ = TASK.sample(64, 8, make_generator(9, "validation"))
    tokens = tokens.to(DEVICE)
    close, output_close, relative = TOLERANCE
    hidden = model_config.hidden_dim
    for config, model, result in zip(configs, models, results, strict=True):
        alone = build_model(model_config, config.seed)
        expected = train(alone, TASK, config, progress=False)
        assert result.status == expected.status
        torch.testing.assert_close(result.loss, expected.loss, **close)
        assert [e["step"] for e in result.evals] == [e["step"] for e in expected.evals]
        for got, want in zip(result.evals, expected.evals, strict=True):
            assert got["last_loop"] == pytest.approx(want["last_loop"], rel=relative)
        for (name, got), want in zip(model.named_parameters(), alone.parameters(), strict=True):
            if name.endswith("attn.qkv.bias"):
                # The key bias has zero gradient in exact arithmetic (softmax ignores a shift); Adam
                # turns its rounding noise into steps of size lr, so it may differ. It cannot change
                # any output (checked below), so only the query and value biases are compared.
                got, want = torch.cat([got[:hidden], got[2 * hidden :]]), torch.cat([want[:hidden], want[2 * hidden :]])
            torch.testing.assert_close(got, want, **close, msg=name)
        torch.testing.assert_close(model(tokens, config.b), alone(tokens, config.b), **output_close)
    return results


def test_three_seeds_equal_three_separate_runs():
    assert_same_as_separate_runs([dataclasses.replace(BASE, seed=seed) for seed in (1, 2, 3)])


def test_members_with_different_b_are_each_supervised_on_their_own_loops():
    configs = [dataclasses.replace(BASE, seed=seed, b=b) for seed, b in ((1, 2), (2, 3), (3, 4))]
    assert_same_as_separate_runs(configs)


def test_clipping_schedules_and_curricula_act_per_member():
    configs = [
        dataclasses.replace(
            BASE,
            seed=seed,
            b=b,
            clip_grad_norm=0.05,
            lr_schedule="cosine",
            warmup=0.25,
            loops_curriculum=(1, 4, 2),
            points_curriculum=(4, 5, 2),
        )
        for seed, b in ((4, 3), (5, 4))
    ]
    assert_same_as_separate_runs(configs)


def test_a_diverging_member_stops_and_the_others_go_on(monkeypatch):
    real_build = ensemble.build_model

    def poisoned(config, seed):  # seed 2 starts with a NaN readout: its first loss is not finite
        model = real_build(config, seed)
        if seed == 2:
            with torch.no_grad():
                model.readout.bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(ensemble, "build_model", poisoned)
    configs = [dataclasses.replace(BASE, seed=seed) for seed in (1, 2, 3)]
    with pytest.warns(RuntimeWarning, match="ensemble member 1: training stopped at step 0"):
        models, results = train_ensemble(MODEL, TASK, configs)
    assert [r.status for r in results] == ["finished", "diverged", "finished"]
    assert results[1].loss == [] and len(results[0].loss) == BASE.steps
    # the stopped member keeps its (poisoned) initial weights; the others match separate runs
    torch.testing.assert_close(models[1].embed.weight, real_build(MODEL, 2).embed.weight.to(DEVICE))
    for index in (0, 2):
        alone = real_build(MODEL, configs[index].seed)
        expected = train(alone, TASK, configs[index], progress=False)
        torch.testing.assert_close(results[index].loss, expected.loss, **TOLERANCE[0])


@pytest.mark.parametrize(
    "model_config, configs, message",
    [
        (
            MODEL,
            [BASE, dataclasses.replace(BASE, lr=1e-3)],
            r"may differ only in \('seed', 'b'\); member 1 .* \['lr'\]",
        ),
        (
            MODEL,
            [dataclasses.replace(BASE, grad_window=2), dataclasses.replace(BASE, b=4, grad_window=2)],
            "grad_window=2 needs one b",
        ),
        (dataclasses.replace(MODEL, block="lstm"), [BASE], "ModelConfig.block='lstm' cannot train as an ensemble"),
        (
            dataclasses.replace(MODEL, context_keep="random", context_n=2),
            [BASE],
            "ModelConfig.context_keep='random' cannot train as an ensemble",
        ),
        (
            dataclasses.replace(MODEL, state_keep="last_in_place", state_fraction=0.5, state_compute="carried"),
            [BASE],
            "ModelConfig.state_compute='carried' is not supported by the ensemble",
        ),
        (
            dataclasses.replace(MODEL, context_keep="first", context_n=2, context_compute="drop"),
            [BASE],
            "ModelConfig.context_compute='drop' cannot train as an ensemble",
        ),
        (
            MODEL,
            [dataclasses.replace(BASE, loops_random=("uniform", 1))],
            r"TrainConfig.loops_random=\('uniform', 1\) draws a loop count per member",
        ),
        (MODEL, [], "an ensemble needs at least one member"),
    ],
)
def test_ensemble_errors(model_config, configs, message):
    with pytest.raises(ValueError, match=message):
        train_ensemble(model_config, TASK, configs)


@cpu_only
def test_runner_ensemble_backend_matches_inline_and_auto_picks_the_pool_on_cpu(tmp_path):
    level2 = Level2Config(launches=2, batches_per_launch=1, batch_size=8, extrapolation_b=(1, 3))
    specs = [
        RunSpec(
            name=f"run_{seed}_{b}",
            model=MODEL,
            task=TASK.to_dict(),
            train=dataclasses.replace(BASE, seed=seed, b=b),
            level2=level2,
        )
        for seed, b in ((1, 2), (2, 3))
    ]
    assert [len(group) for group in runner.ensemble_groups(specs)] == [2]
    batched = run_grid(specs, tmp_path / "ensemble", backend="ensemble", progress=False)
    shutil.rmtree(runner.trained_dir())  # inline must train, not reuse the ensemble's training
    inline = run_grid(specs, tmp_path / "inline", backend="inline", progress=False)
    for a, b in zip(batched, inline, strict=True):
        torch.testing.assert_close(a["train"]["loss"], b["train"]["loss"], rtol=1e-5, atol=1e-6)
        assert a["level2"]["extrapolation"]["last_loop"] == pytest.approx(
            b["level2"]["extrapolation"]["last_loop"], rel=1e-4
        )
    assert (tmp_path / "ensemble" / "data" / "run_1_2.json").exists()
    assert resolve_backend("auto", specs) == "pool"  # CPU runs: one process per core
    with pytest.raises(ValueError, match="backend='gpu' is not allowed; choose one of"):
        resolve_backend("gpu", specs)


@cpu_only
def test_an_interrupted_ensemble_resumes_to_the_same_result(tmp_path, monkeypatch):
    configs = [dataclasses.replace(BASE, seed=seed, b=b, checkpoint_every=4) for seed, b in ((1, 2), (2, 3))]
    _, uninterrupted = train_ensemble(MODEL, TASK, configs)
    real_step = interrupt_at(monkeypatch, ensemble.Ensemble, 7)
    path = tmp_path / "ensemble.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(MODEL, TASK, configs, checkpoint=path)
    assert path.exists()  # saved after step 4
    steps_run = []
    monkeypatch.setattr(ensemble.Ensemble, "step", lambda self, done: steps_run.append(done) or real_step(self, done))
    models, resumed = train_ensemble(MODEL, TASK, configs, checkpoint=path)
    assert steps_run == list(range(4, BASE.steps))  # it resumed after step 4 instead of starting over
    for got, want in zip(resumed, uninterrupted, strict=True):
        assert got.loss == want.loss  # bit-identical on CPU
        assert [e["step"] for e in got.evals] == [e["step"] for e in want.evals]
        assert [e["last_loop"] for e in got.evals] == [e["last_loop"] for e in want.evals]


@pytest.mark.parametrize("keep", ["first", "last"])
def test_truncated_context_members_train_on_the_loss_of_separate_runs(keep):
    # Each loop after the cut predicts only the points it still sees; the ensemble must restrict
    # its loss the same way a single run does (`training.step_loss`), or the runs differ.
    truncated = dataclasses.replace(MODEL, context_keep=keep, context_n=2)
    configs = [dataclasses.replace(BASE, seed=seed, b=b) for seed, b in ((1, 3), (2, 4))]
    assert_same_as_separate_runs(configs, model_config=truncated)


@pytest.mark.parametrize("fields", [{}, {"context_keep": "first", "context_n": 2}, {"block": "gpt2", "pe": "learned"}])
def test_every_attention_mode_gives_the_same_outputs_and_gradients(fields):
    # "folded" (the default) calls the attention kernel once on the members folded into the batch;
    # "math" and "vmap" go through vmap's batching rules. The outputs and gradients must agree.
    model_config = dataclasses.replace(MODEL, **fields)
    configs = [dataclasses.replace(BASE, seed=seed) for seed in (1, 2, 3)]
    tokens = torch.stack([TASK.sample(8, 8, make_generator(seed, "validation"))[0] for seed in (1, 2, 3)]).to(DEVICE)
    # "vmap" on CUDA reaches the fused kernels' batching rules, which fail there (ensemble.py)
    modes = ensemble.ATTENTION if DEVICE == "cpu" else ("folded", "math")
    found, fallbacks = {}, {}
    for attention in modes:
        members = ensemble.Ensemble(model_config, TASK, configs, attention=attention)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preds = members.forward(members.params, members.buffers, tokens, 3, None)  # [M, b, B, P]
            grads = torch.autograd.grad(preds.square().sum(), list(members.params.values()))
        found[attention] = (preds.detach(), grads)
        fallbacks[attention] = [str(w.message) for w in caught if "batching rule" in str(w.message)]
    # folded never reaches vmap's batching rule for attention; on CPU the fused kernel has none,
    # so there vmap runs it member by member (and says so), which is what the fold avoids
    assert fallbacks["folded"] == []
    if DEVICE == "cpu" and "context_keep" not in fields:
        assert any("scaled_dot_product" in message for message in fallbacks["vmap"])
    close = TOLERANCE[1]
    for attention in modes[1:]:
        torch.testing.assert_close(found["folded"][0], found[attention][0], **close)
        for got, want in zip(found["folded"][1], found[attention][1], strict=True):
            torch.testing.assert_close(got, want, **close)


def test_an_unknown_attention_mode_is_refused():
    with pytest.raises(ValueError, match=r"Ensemble attention='flash' must be one of \('folded', 'math', 'vmap'\)"):
        ensemble.Ensemble(MODEL, TASK, [BASE], attention="flash")


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="the folded attention compiles on CPU; the limit is CUDA's")
def test_compiling_folded_attention_on_cuda_is_refused():
    with pytest.raises(ValueError, match="compile=True needs attention='math' on CUDA"):
        ensemble.Ensemble(MODEL, TASK, [BASE], compile=True)
