"""Semantics of the experiment-specific variants: multiplicative and EMA injection, where the
positional encoding enters, the learned table's scale and the final LayerNorm, context selection
(truncation, masked or dropped tokens), and the masked loss and metrics that go with it."""

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_training import Interrupting

from runner import Level2Config, RunSpec
from tasks import LinearRegression
from transformer import ModelConfig, attention_allowed, sinusoidal_table
from utils import TrainConfig, build_model, label_sensitivity, loss_value, make_generator, prediction_errors

SMALL = dict(n_dims=4, n_layers=2, n_heads=2, hidden_dim=16, mlp_hidden=32, context=23)


def prompts(batch=3, n_points=12, n_dims=4, seed=0):
    return LinearRegression(n_dims).sample(batch, n_points, make_generator(seed, "train"))


# ----------------------------------------------------------------------------- injection


def test_multiplicative_injection_multiplies_the_state_by_the_prompt():
    model = build_model(ModelConfig(**SMALL, injection="multiplicative"), seed=1).eval()
    tokens, _ = prompts()
    e = model.embed_prompt(tokens)
    first = model.stack(e)  # s_0 = 1, so loop 1 sees e itself
    second = model.stack(first * e)
    torch.testing.assert_close(model(tokens, 2), torch.stack([model.read_out(first), model.read_out(second)]))


def test_paper_multiplicative_rule_adds_the_positions_after_the_product():
    """pe_at="loop" with multiplicative injection is the paper's code: z <- f(z * x + p), z_0 = 1,
    x the embedded tokens without PE; loop 1 agrees with f(z * (x + p)), later loops do not."""
    tokens, _ = prompts()
    paper = build_model(ModelConfig(**SMALL, pe="learned", injection="multiplicative", pe_at="loop"), seed=11).eval()
    ours = build_model(ModelConfig(**SMALL, pe="learned", injection="multiplicative"), seed=11).eval()
    x = paper.embed(tokens)  # [B, S, d] -> [B, S, h]
    p = paper.positional.table.weight[: tokens.shape[1]]  # [S, h]
    z, expected = torch.ones_like(x), []
    for _ in range(3):
        z = paper.stack(z * x + p)
        expected.append(paper.read_out(z))
    torch.testing.assert_close(paper(tokens, 3), torch.stack(expected))
    torch.testing.assert_close(paper(tokens, 3)[0], ours(tokens, 3)[0])
    assert not torch.allclose(paper(tokens, 3)[1:], ours(tokens, 3)[1:], atol=1e-3)


@pytest.mark.parametrize("pe", ["learned", "sinusoidal"])
def test_positions_at_the_loop_input_are_the_same_for_additive_injection(pe):
    """(s + x) + p = s + (x + p): for add injection where the PE enters does not matter."""
    tokens, _ = prompts()
    loop = build_model(ModelConfig(**SMALL, pe=pe, pe_at="loop"), seed=12).eval()
    prompt = build_model(ModelConfig(**SMALL, pe=pe), seed=12).eval()
    torch.testing.assert_close(loop(tokens, 4), prompt(tokens, 4))


def test_learned_table_scale_changes_only_the_table():
    small = build_model(ModelConfig(**SMALL, pe="learned", pe_std=0.02), seed=13)
    default = build_model(ModelConfig(**SMALL, pe="learned"), seed=13)
    for (name, a), (_, b) in zip(small.state_dict().items(), default.state_dict().items(), strict=True):
        if name == "positional.table.weight":
            torch.testing.assert_close(a, 0.02 * b)
            assert 0.01 < float(a.std()) < 0.03
        else:
            assert torch.equal(a, b), name


def test_loop_embedding_adds_the_loop_numbers_sinusoid_to_the_stack_input():
    """s_j = stack(s_{j-1} + e + t_j), t_j the sinusoid of loop number j; loop j does not depend on b."""
    model = build_model(ModelConfig(**SMALL, pe="learned", loop_embedding="sinusoidal"), seed=19).eval()
    tokens, _ = prompts()
    e = model.embed_prompt(tokens)
    signal = sinusoidal_table(5, 16, 10000.0)  # rows 1..4 are loops 1..4
    state, expected = torch.zeros_like(e), []
    for loop in range(1, 5):
        state = model.stack(state + e + signal[loop])
        expected.append(model.read_out(state))
    torch.testing.assert_close(model(tokens, 4), torch.stack(expected))
    torch.testing.assert_close(model(tokens, 7)[:4], model(tokens, 4))  # prefix consistent: extrapolation reuses it
    plain = build_model(ModelConfig(**SMALL, pe="learned"), seed=19).eval()
    assert not torch.allclose(model(tokens, 2), plain(tokens, 2))


def test_final_norm_normalises_the_state_every_loop():
    tokens, _ = prompts()
    normed = build_model(ModelConfig(**SMALL, final_norm=True), seed=14).eval()
    states = list(normed.states(tokens, 3))
    for state in states:  # LayerNorm at init: per token mean 0 and variance 1
        torch.testing.assert_close(state.mean(-1), torch.zeros(state.shape[:2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(state.var(-1, unbiased=False), torch.ones(state.shape[:2]), atol=1e-3, rtol=0)
    plain = build_model(ModelConfig(**SMALL), seed=14).eval()
    # The same draw apart from the norm (LayerNorm has no random init): the pre-norm state is the plain model's.
    assert torch.equal(plain.stack.layers[0].mlp[0].weight, normed.stack.layers[0].mlp[0].weight)
    assert isinstance(
        build_model(ModelConfig(**SMALL, block="gpt2", final_norm=False), 0).stack.final_norm, torch.nn.Identity
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_ema_injection_mixes_state_and_prompt(alpha):
    model = build_model(ModelConfig(**SMALL, injection="ema", ema_alpha=alpha), seed=2).eval()
    tokens, _ = prompts()
    e = model.embed_prompt(tokens)
    state = torch.zeros_like(e)
    expected = []
    for _ in range(3):
        state = model.stack(alpha * state + (1 - alpha) * e)
        expected.append(model.read_out(state))
    torch.testing.assert_close(model(tokens, 3), torch.stack(expected))
    assert not any(p.numel() == 1 for p in model.parameters())  # a fixed a is no parameter
    if alpha == 0.0:  # no recurrence: every loop computes the same thing
        torch.testing.assert_close(model(tokens, 3)[0], model(tokens, 3)[2])


def test_learned_ema_starts_at_alpha_and_learns_it():
    model = build_model(ModelConfig(**SMALL, injection="ema_learned", ema_alpha=0.25), seed=3)
    assert math.isclose(float(model.injection.alpha.detach()), 0.25, rel_tol=1e-6)
    fixed = build_model(ModelConfig(**SMALL, injection="ema", ema_alpha=0.25), seed=3)
    tokens, ys = prompts()
    torch.testing.assert_close(model(tokens, 3), fixed(tokens, 3))  # same weights, same a
    loss = (model(tokens, 3) - ys).square().mean()
    loss.backward()
    assert model.injection.logit.grad is not None and model.injection.logit.grad.abs() > 0


# ----------------------------------------------------------------------------- context selection


def test_examples_per_loop_schedule():
    def counts(**context):
        model = build_model(ModelConfig(**SMALL, **context), seed=0)
        return [model.context_selection.examples_at(loop, 11) for loop in range(7)]

    assert counts() == [11] * 7
    assert counts(context_keep="first", context_n=5) == [11, 5, 5, 5, 5, 5, 5]
    assert counts(context_keep="first", context_n=5, context_cut_at=1) == [5] * 7
    assert counts(context_keep="random", context_n=5, context_shrink=2) == [11, 9, 7, 5, 5, 5, 5]
    assert counts(context_keep="last", context_n=20) == [11] * 7  # more than there are: no cut


@pytest.mark.parametrize("keep", ["first", "last", "random"])
def test_kept_points_and_nested_random_subsets(keep):
    model = build_model(ModelConfig(**SMALL, context_keep=keep, context_n=4, context_shrink=3), seed=0)
    tokens, _ = prompts(batch=6)
    predicted = model.predicted_points(tokens, 5)  # [b, B, P]
    assert predicted.shape == (5, 6, 12)
    assert predicted[0].all() and predicted[:, :, -1].all()  # loop 1 sees everything; the query always
    assert predicted[1:, :, :-1].sum(-1).tolist() == [[8] * 6, [5] * 6, [4] * 6, [4] * 6]
    assert (predicted[2:] <= predicted[1:-1]).all()  # nested: a dropped example never returns
    examples = predicted[-1, :, :-1]
    if keep == "first":
        assert examples[:, :4].all() and not examples[:, 4:].any()
    elif keep == "last":
        assert examples[:, -4:].all() and not examples[:, :-4].any()
    else:
        assert len({tuple(row.tolist()) for row in examples}) > 1  # each prompt its own subset
        torch.testing.assert_close(model.predicted_points(tokens, 5), predicted)  # same on every call


@pytest.mark.parametrize("keep", ["first", "last", "random"])
def test_cut_before_the_first_loop_equals_the_shortened_prompt(keep):
    """Masking dropped examples out of attention is the same computation as deleting them
    (no PE, so positions do not matter): compare with the plain model on the short prompt."""
    config = ModelConfig(**SMALL, context_keep=keep, context_n=4, context_cut_at=1)
    model = build_model(config, seed=5).eval()
    plain = build_model(ModelConfig(**SMALL), seed=5).eval()
    tokens, _ = prompts(batch=4)
    preds = model(tokens, 3)  # [3, B, P]
    predicted = model.predicted_points(tokens, 3)
    for row in range(tokens.shape[0]):
        kept = predicted[0, row].nonzero().squeeze(1)  # point indices, the query last
        token_index = torch.stack([2 * kept[:-1], 2 * kept[:-1] + 1], 1).flatten()
        short = tokens[row : row + 1, torch.cat([token_index, 2 * kept[-1:]])]  # [1, 2n+1, d]
        torch.testing.assert_close(preds[:, row, kept], plain(short, 3)[:, 0], rtol=1e-5, atol=1e-5)


def test_cut_after_the_first_loop_keeps_loop_one_intact():
    config = ModelConfig(**SMALL, pe="learned", context_keep="first", context_n=4)
    cut = build_model(config, seed=6).eval()
    full = build_model(ModelConfig(**SMALL, pe="learned"), seed=6).eval()
    tokens, _ = prompts()
    torch.testing.assert_close(cut(tokens, 3)[0], full(tokens, 3)[0])
    assert not torch.allclose(cut(tokens, 3)[1, :, -1], full(tokens, 3)[1, :, -1])


def test_attention_mask_blocks_dropped_keys_and_keeps_self():
    kept = torch.tensor([[True, False, True]])  # points: example 0 kept, example 1 dropped, query
    allowed = attention_allowed(kept, causal=True)[0, 0]  # [5, 5] tokens x0 y0 x1 y1 query
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # the dropped x1 still sees itself
            [1, 1, 0, 1, 0],
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


# ----------------------------------------------------------------------------- masked loss and metrics


def test_masked_loss_averages_each_loop_over_its_predicted_points():
    config = TrainConfig(steps=1, b=2, n_points=3)
    preds = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 5.0, 3.0]]])  # [b=2, B=1, P=3]
    ys = torch.zeros(1, 3)
    predicted = torch.tensor([[[True, True, True]], [[True, False, True]]])
    loss = loss_value(preds, ys, config, n_dims=2, predicted=predicted)
    expected = ((1 + 4 + 9) / 3 + (1 + 9) / 2) / 2 / 2
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    everything = torch.ones_like(predicted)
    torch.testing.assert_close(loss_value(preds, ys, config, 2, everything), loss_value(preds, ys, config, 2))


@pytest.mark.parametrize("keep", ["first", "last", "random"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("cut_at, shrink", [(1, 0), (2, 0), (2, 3)])
def test_dropping_tokens_predicts_what_masking_them_predicts(keep, causal, cut_at, shrink):
    """context_compute="drop" runs the stack on the kept tokens only; in prompt order, with the
    PE travelling with the tokens, that is the masked computation at every predicted point."""
    fields = dict(
        pe="learned", causal=causal, context_keep=keep, context_n=4, context_cut_at=cut_at, context_shrink=shrink
    )
    masked = build_model(ModelConfig(**SMALL, **fields), seed=15).eval()
    dropped = build_model(ModelConfig(**SMALL, **fields, context_compute="drop"), seed=15).eval()
    tokens, _ = prompts(batch=4)
    predicted = masked.predicted_points(tokens, 5)  # [b, B, P]
    torch.testing.assert_close(dropped.predicted_points(tokens, 5), predicted)
    torch.testing.assert_close(dropped(tokens, 5)[predicted], masked(tokens, 5)[predicted], rtol=1e-5, atol=1e-5)
    runs = dropped.context_selection.kept_tokens(tokens, 5)
    # each loop runs 2n + 1 tokens for its n kept examples: the dropped ones cost nothing
    assert [tokens.shape[1] if index is None else index.shape[1] for index in runs] == [
        2 * int(mask[0].sum()) - 1 for mask in predicted
    ]


def test_study_random_cut_is_one_shuffled_draw_per_batch():
    """ "random_batch" keeps the study's cut: one draw of n examples for the batch, in the drawn
    order; with the cut before loop 1 it is the plain model on the reordered, shortened prompt."""
    config = ModelConfig(**SMALL, context_keep="random_batch", context_n=4, context_cut_at=1, context_compute="drop")
    model = build_model(config, seed=16).eval()
    plain = build_model(ModelConfig(**SMALL), seed=16).eval()
    tokens, _ = prompts(batch=4)
    index = model.context_selection.kept_tokens(tokens, 2)[0]  # [B, 9]
    assert index.shape == (4, 9) and (index == index[0]).all()  # one draw for the whole batch
    examples = index[0, :-1:2] // 2
    assert index[0, -1] == 22 and (index[0, 1::2] == index[0, :-1:2] + 1).all()  # (x, y) pairs, the query last
    draws = {
        tuple((model.context_selection.kept_tokens(prompts(batch=4, seed=s)[0], 2)[0][0, :-1:2] // 2).tolist())
        for s in range(6)
    }
    assert len(draws) > 1 and any(list(d) != sorted(d) for d in draws)  # a new draw per batch, order shuffled
    expected = plain(tokens[:, index[0]], 2)  # [2, B, 5]
    torch.testing.assert_close(model(tokens, 2)[:, :, torch.cat([examples, torch.tensor([11])])], expected)
    predicted = model.predicted_points(tokens, 2)
    assert predicted[:, :, examples].all() and predicted[:, :, -1].all() and int(predicted[0, 0].sum()) == 5


@pytest.mark.parametrize("cut_at", [1, 2])
def test_study_random_cut_leaks_own_labels_only_after_loop_one(cut_at):
    """Shuffled, a kept point runs after examples that came later in the prompt. Cut before loop 1,
    its own label stays after it. Cut after loop 1, those later tokens' loop-1 states have read
    its label, and its prediction moves with it (the query's never can: it has no label)."""
    model = build_model(
        ModelConfig(
            **SMALL,
            pe="learned",
            context_keep="random_batch",
            context_n=5,
            context_cut_at=cut_at,
            context_compute="drop",
        ),
        seed=17,
    ).eval()
    tokens, _ = prompts()
    before = model(tokens, 3)
    predicted = model.predicted_points(tokens, 3)
    moved = []
    for point in range(11):
        changed = tokens.clone()
        changed[1:, 2 * point + 1] += 3.0  # y_point of every prompt but the first (whose x_1 seeds the draw)
        shift = (model(changed, 3)[:, 1:, point] - before[:, 1:, point]).detach().abs()[predicted[:, 1:, point]]
        moved.append(float(shift.max()) if shift.numel() else 0.0)
    if cut_at == 1:
        assert max(moved) <= 1e-6
    else:
        assert max(moved) > 1e-5


def test_prediction_errors_skip_unpredicted_points():
    model = build_model(ModelConfig(**SMALL, context_keep="first", context_n=4), seed=7)
    tokens, ys = prompts(batch=5)
    errors = prediction_errors(model, tokens, ys, 3, batch_size=2)  # [b, P]
    assert not errors[0].isnan().any()  # loop 1 predicts everywhere
    assert errors[1:, 4:-1].isnan().all() and not errors[1:, :4].isnan().any() and not errors[:, -1].isnan().any()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(injection="ema", ema_alpha=1.0), "ModelConfig.ema_alpha=1.0 must be a finite number in [0, 1)"),
        (dict(injection="ema_learned", ema_alpha=0.0), "ModelConfig.ema_alpha=0.0 must be a finite number in (0, 1)"),
        (dict(context_keep="middle"), "ModelConfig.context_keep='middle' is not allowed; choose one of"),
        (dict(context_keep="first"), "ModelConfig.context_n=None must be an integer >= 1"),
        (dict(context_n=4), "ModelConfig.context_n and context_shrink need context_keep in"),
        (dict(context_keep="first", context_n=4, context_cut_at=0), "ModelConfig.context_cut_at=0 must be"),
        (dict(context_keep="first", context_n=4, context_shrink=-1), "ModelConfig.context_shrink=-1 must be"),
        (dict(context_compute="skip"), "ModelConfig.context_compute='skip' is not allowed; choose one of"),
        (dict(context_compute="drop"), "ModelConfig.context_compute='drop' has no effect with context_keep='all'"),
        (dict(context_keep="random_batch", context_n=4), "context_keep='random_batch' shuffles the kept examples"),
        (dict(pe_at="stack"), "ModelConfig.pe_at='stack' is not allowed; choose one of"),
        (dict(pe_at="loop"), "ModelConfig.pe_at='loop' has no effect with pe='none'"),
        (dict(pe="learned", pe_std=0.0), "ModelConfig.pe_std=0.0 must be a finite number > 0"),
        (dict(pe="sinusoidal", pe_std=0.02), "ModelConfig.pe_std=0.02 has no effect with pe='sinusoidal'"),
        (
            dict(pe="learned", init="gpt2", pe_std=0.02),
            "ModelConfig.pe_std=0.02 has no effect with pe='learned', init='gpt2'",
        ),
        (dict(final_norm="yes"), "ModelConfig.final_norm='yes' must be None (the block's own), True or False"),
        (dict(loop_embedding="learned"), "ModelConfig.loop_embedding='learned' is not allowed; choose one of"),
        (dict(state_compute="carried"), "ModelConfig.state_compute='carried' runs later loops on the carried tokens"),
        (
            dict(state_keep="last_shifted", state_fraction=0.5, state_compute="carried"),
            "needs state_keep='last_in_place'",
        ),
        (dict(state_keep="last_in_place", state_fraction=0.0, state_compute="carried"), "with state_fraction > 0"),
        (dict(state_compute="some"), "ModelConfig.state_compute='some' is not allowed; choose one of"),
    ],
)
def test_variant_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**{**SMALL, **overrides})


def test_records_written_before_new_fields_still_match_their_spec():
    spec = RunSpec("r", ModelConfig(**SMALL), LinearRegression(4).to_dict(), TrainConfig(steps=2), Level2Config())
    stored = spec.to_dict()
    for new_field in (
        "ema_alpha",
        "context_keep",
        "context_n",
        "context_cut_at",
        "context_shrink",
        "state_keep",
        "context_compute",
        "pe_at",
        "pe_std",
        "final_norm",
    ):
        del stored["model"][new_field]
    assert RunSpec.from_dict(stored).to_dict() == spec.to_dict()


def test_label_sensitivity_is_zero_under_the_causal_mask_only():
    tokens, _ = prompts()
    causal = build_model(ModelConfig(**SMALL, pe="learned"), seed=8)
    assert label_sensitivity(causal, tokens, 2).abs().max() == 0
    assert label_sensitivity(causal, tokens, 2, lag=1).abs().max() == 0
    open_model = build_model(ModelConfig(**SMALL, pe="learned", causal=False), seed=8)
    own = label_sensitivity(open_model, tokens, 2)
    assert own.shape == (11,) and (own > 0).all()
    with pytest.raises(ValueError, match="lag=-1 must be an integer >= 0"):
        label_sensitivity(open_model, tokens, 2, lag=-1)


def test_random_truncation_trains_deterministically_and_resumes_exactly(tmp_path):
    """The random subsets depend only on each prompt, so a rerun and a resumed run repeat exactly."""
    from utils import train

    config = ModelConfig(**SMALL, pe="learned", context_keep="random", context_n=4, context_shrink=2)
    task = LinearRegression(4)
    train_config = TrainConfig(steps=12, batch_size=8, lr=3e-3, b=3, n_points=12, seed=3, eval_prompts=32)

    def run(checkpoint=None, sampled_by=task):
        model = build_model(config, seed=3)
        return model, train(model, sampled_by, train_config, progress=False, checkpoint=checkpoint)

    first_model, first = run()
    _, second = run()
    assert first.loss == second.loss and first.evals == second.evals
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of training ...
        run(checkpoint=path, sampled_by=Interrupting(task, limit=8))
    assert path.exists()
    resumed_draws, fresh_draws = Interrupting(task, limit=10**6), Interrupting(task, limit=10**6)  # count batches
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint set aside (not resumed) would warn
        resumed_model, resumed = run(checkpoint=path, sampled_by=resumed_draws)  # ... and resumed from its checkpoint
    run(sampled_by=fresh_draws)
    assert resumed_draws.calls < fresh_draws.calls  # the resumed run picked up where the killed one stopped
    assert resumed.loss == first.loss and resumed.evals == first.evals
    for a, b in zip(first_model.state_dict().values(), resumed_model.state_dict().values(), strict=False):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- state selection


def test_running_only_the_carried_tokens_is_the_loop_on_the_last_n_tokens():
    """state_compute="carried": loop 1 runs every token; later loops run stack(s + e) on the last n
    tokens alone (their carried state, their part of the prompt) and predict only there."""
    config = ModelConfig(**SMALL, pe="learned", state_keep="last_in_place", state_fraction=0.4, state_compute="carried")
    model = build_model(config, seed=18).eval()
    tokens, _ = prompts()
    n = round(0.4 * 23)  # 9 tokens: x_8, y_8, ..., the query
    e = model.embed_prompt(tokens)
    state = model.stack(e)  # loop 1, s_0 = 0
    expected = [model.read_out(state)]
    tail = state[:, -n:]
    for _ in range(2):
        tail = model.stack(tail + e[:, -n:])
        expected.append(F.linear(tail[:, 0::2], model.readout.weight[0], model.readout.bias[0]))  # x positions
    preds = model(tokens, 3)
    torch.testing.assert_close(preds[0], expected[0])
    for loop in (1, 2):
        torch.testing.assert_close(preds[loop, :, -5:], expected[loop])
    predicted = model.predicted_points(tokens, 3)
    assert predicted[0].all() and predicted[1:, :, -5:].all() and not predicted[1:, :, :-5].any()
    seen = []
    handle = model.stack.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    model(tokens, 3)
    handle.remove()
    assert seen == [23, n, n]  # the tokens not carried cost nothing after loop 1


@pytest.mark.parametrize("keep", ["last_in_place", "last_shifted"])
def test_carrying_the_whole_state_is_the_base_model(keep):
    tokens, _ = prompts()
    base = build_model(ModelConfig(**SMALL, pe="learned"), seed=9)
    whole = build_model(ModelConfig(**SMALL, pe="learned", state_keep=keep, state_fraction=1.0), seed=9)
    torch.testing.assert_close(whole(tokens, 4), base(tokens, 4), rtol=0, atol=0)


@pytest.mark.parametrize("keep", ["last_in_place", "last_shifted"])
def test_carrying_nothing_makes_every_loop_the_first(keep):
    model = build_model(ModelConfig(**SMALL, state_keep=keep, state_fraction=0.0), seed=10)
    tokens, _ = prompts()
    preds = model(tokens, 3)
    torch.testing.assert_close(preds[2], preds[0])


def test_in_place_and_shifted_state_follow_their_rules():
    tokens, _ = prompts()  # 23 tokens; a fraction of 0.3 keeps round(6.9) = 7 of them
    for keep in ("last_in_place", "last_shifted"):
        model = build_model(ModelConfig(**SMALL, state_keep=keep, state_fraction=0.3), seed=11).eval()
        e = model.embed_prompt(tokens)
        first = model.stack(e)  # add injection, s_0 = 0
        carried = torch.zeros_like(first)
        if keep == "last_in_place":
            carried[:, -7:] = first[:, -7:]
        else:
            carried[:, :7] = first[:, -7:]
        second = model.stack(carried + e)
        torch.testing.assert_close(model(tokens, 2)[1], model.read_out(second), msg=keep)


def test_shifted_state_is_not_causal():
    """The Murawiecki study's shift hands early positions the state of later ones: a later token moves an
    earlier prediction (the in-place variant is covered by the causality test of test_model)."""
    model = build_model(ModelConfig(**SMALL, state_keep="last_shifted", state_fraction=0.5), seed=12).eval()
    tokens, _ = prompts()
    perturbed = tokens.clone()
    perturbed[:, 1] += 3.0  # y_1, the label of the x at position 0: 23 tokens, n = 12, so position 0
    # receives the state of position 11, which attended to y_1: the prediction at x_1 sees its own label
    assert not torch.allclose(model(perturbed, 2)[1, :, 0], model(tokens, 2)[1, :, 0])
    torch.testing.assert_close(model(perturbed, 2)[0, :, 0], model(tokens, 2)[0, :, 0])  # loop 1 is still causal


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(state_keep="first"), "ModelConfig.state_keep='first' is not allowed; choose one of"),
        (
            dict(state_keep="last_in_place", state_fraction=1.5),
            "ModelConfig.state_fraction=1.5 must be a finite number in [0, 1]",
        ),
        (dict(state_keep="last_shifted", state_fraction=True), "ModelConfig.state_fraction=True must be a finite"),
        (dict(state_fraction=0.5), "ModelConfig.state_fraction=0.5 must be 1 when state_keep='all'"),
    ],
)
def test_state_config_errors(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(**{**SMALL, **overrides})
