"""Prompt layout, the function classes and the out-of-distribution prompt suite."""

import itertools

import pytest
import torch

from tasks import (
    OOD_KINDS,
    TASKS,
    DecisionTree,
    LinearRegression,
    NoisyLinearRegression,
    ReLUNetwork,
    SparseLinearRegression,
    Task,
    build_prompt,
    sample_ood,
    sample_ood_xy,
    task_from_dict,
)
from utils import make_generator


def test_prompt_layout():
    xs = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    ys = torch.tensor([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    tokens = build_prompt(xs, ys)
    assert tokens.shape == (2, 5, 2)  # x1 y1 x2 y2 x3
    torch.testing.assert_close(tokens[:, 0::2], xs)
    torch.testing.assert_close(tokens[:, 1::2, 0], ys[:, :2])
    assert (tokens[:, 1::2, 1:] == 0).all()


def test_linear_regression_sampler_is_linear_and_seeded():
    task = LinearRegression(n_dims=6, x_mean=0.5, x_std=2.0)
    xs, ys = task.sample_xy(512, 20, make_generator(3, "train"))
    # ys are an exact linear function of xs, one w per prompt
    w = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution  # [B, d, 1]
    torch.testing.assert_close((xs @ w).squeeze(-1), ys, atol=1e-4, rtol=1e-4)
    assert xs.mean().item() == pytest.approx(0.5, abs=0.05)
    assert xs.std().item() == pytest.approx(2.0, abs=0.05)
    assert w.std().item() == pytest.approx(1.0, abs=0.1)
    again = task.sample_xy(512, 20, make_generator(3, "train"))
    assert torch.equal(again[0], xs) and torch.equal(again[1], ys)
    tokens, ys2 = task.sample(4, 20, make_generator(3, "train"))
    assert tokens.shape == (4, 39, 6) and ys2.shape == (4, 20)


def test_task_round_trip_and_errors():
    task = LinearRegression(n_dims=3, x_std=2.0)
    assert task_from_dict(task.to_dict()) == task
    with pytest.raises(ValueError, match="LinearRegression.n_dims=0 must be an integer >= 1"):
        LinearRegression(n_dims=0)
    with pytest.raises(ValueError, match="LinearRegression.x_std=-1 must be >= 0"):
        LinearRegression(n_dims=2, x_std=-1)
    with pytest.raises(ValueError, match="n_points=0 must be an integer >= 1"):
        task.sample(2, 0)
    with pytest.raises(ValueError, match="task name 'Nope' is not known"):
        task_from_dict({"name": "Nope"})


# ----------------------------------------------------------------------------- LinearRegression is unchanged


def _reference_linear_regression(n_dims, x_mean, x_std, batch_size, n_points, generator):
    """The sampler as committed before the Task base class (4131329); committed results depend on it."""
    xs = torch.randn(batch_size, n_points, n_dims, generator=generator, device=generator.device)
    xs = x_mean + x_std * xs
    w = torch.randn(batch_size, n_dims, 1, generator=generator, device=generator.device)
    return xs, (xs @ w).squeeze(-1)


@pytest.mark.parametrize("n_dims, x_mean, x_std", [(4, 0.5, 2.0), (1, 0.0, 1.0), (20, 0.0, 1.0)])
def test_linear_regression_prompts_are_bitwise_those_of_before(n_dims, x_mean, x_std):
    task = LinearRegression(n_dims, x_mean, x_std)
    expected = _reference_linear_regression(n_dims, x_mean, x_std, 32, 41, make_generator(5, "train"))
    xs, ys = task.sample_xy(32, 41, make_generator(5, "train"))
    assert torch.equal(xs, expected[0]) and torch.equal(ys, expected[1])
    tokens, ys = task.sample(32, 41, make_generator(5, "train"))
    assert torch.equal(tokens, build_prompt(*expected)) and torch.equal(ys, expected[1])


def test_linear_regression_matches_numbers_from_before():
    # Printed by the committed tasks.py (4131329), independent of the reference copy above.
    xs, ys = LinearRegression(n_dims=4, x_mean=0.5, x_std=2.0).sample_xy(2, 3, make_generator(7, "train"))
    expected_x00 = [-2.28818678855896, 2.7522966861724854, -0.11721378564834595, 1.6757137775421143]
    expected_x12 = [-0.3542689085006714, 3.1558127403259277, 0.009943157434463501, -2.7988531589508057]
    expected_ys = [
        [7.553852081298828, 3.1182057857513428, 14.510683059692383],
        [-0.2570589780807495, 2.766888380050659, 2.8979547023773193],
    ]
    assert torch.equal(xs[0, 0], torch.tensor(expected_x00))
    assert torch.equal(xs[1, 2], torch.tensor(expected_x12))
    assert torch.equal(ys, torch.tensor(expected_ys))
    _, ys = LinearRegression(n_dims=3).sample(2, 3, make_generator(0, "validation"))
    expected = [
        [-1.3654940128326416, -1.4891738891601562, -0.05923375487327576],
        [0.403109073638916, 0.9583273530006409, 3.452139139175415],
    ]
    assert torch.equal(ys, torch.tensor(expected))


# ----------------------------------------------------------------------------- every function class

ALL_TASKS = [
    LinearRegression(5),
    NoisyLinearRegression(5, noise_std=0.5),
    SparseLinearRegression(5, sparsity=2),
    ReLUNetwork(5, hidden=16),
    DecisionTree(5, depth=3),
]


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda task: type(task).__name__)
def test_every_task_shapes_seeding_and_round_trip(task):
    tokens, ys = task.sample(6, 9, make_generator(1, "train"))
    assert tokens.shape == (6, 17, 5) and ys.shape == (6, 9)
    assert tokens.dtype == ys.dtype == torch.float32 and torch.isfinite(ys).all()
    xs, ys_xy = task.sample_xy(6, 9, make_generator(1, "train"))
    assert torch.equal(tokens, build_prompt(xs, ys_xy)) and torch.equal(ys, ys_xy)
    again = task.sample(6, 9, make_generator(1, "train"))
    assert torch.equal(again[0], tokens) and torch.equal(again[1], ys)
    other = task.sample(6, 9, make_generator(2, "train"))
    assert not torch.equal(other[1], ys)
    # one function per prompt: the same x's in two prompts get different labels
    shared = xs[:1].expand(6, -1, -1).contiguous()  # [6, P, d]
    labels = task.labels(shared, make_generator(1, "train"))  # [6, P]
    assert not torch.equal(labels[0], labels[1])
    assert task_from_dict(task.to_dict()) == task
    assert task.to_dict()["name"] == type(task).__name__ and type(task).__name__ in TASKS
    assert task_from_dict({**task.to_dict(), "x_std": 3.0}) == task.with_x_std(3.0)
    assert type(task.with_x_std(3.0)) is type(task) and task.with_x_std(3.0).x_std == 3.0


def test_error_scales():
    assert LinearRegression(5).error_scale == 5.0
    assert NoisyLinearRegression(5).error_scale == 5.0
    assert SparseLinearRegression(5, sparsity=2).error_scale == 2.0
    assert ReLUNetwork(5).error_scale == 5.0
    assert DecisionTree(5).error_scale == 1.0


def test_noisy_linear_regression_residual_has_noise_std():
    task = NoisyLinearRegression(n_dims=4, noise_std=0.5)
    xs, ys = task.sample_xy(400, 40, make_generator(0, "train"))
    w = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution  # [B, d, 1]
    residual = ys - (xs @ w).squeeze(-1)  # [B, P]
    # least squares absorbs d of the P degrees of freedom
    noise_var = residual.square().sum() / (400 * (40 - 4))
    assert noise_var.sqrt().item() == pytest.approx(0.5, rel=0.05)
    # without noise it is LinearRegression's prompt, draw for draw
    quiet = NoisyLinearRegression(n_dims=4, noise_std=0.0).sample_xy(8, 10, make_generator(0, "train"))
    plain = LinearRegression(n_dims=4).sample_xy(8, 10, make_generator(0, "train"))
    assert torch.equal(quiet[0], plain[0]) and torch.equal(quiet[1], plain[1])


def test_sparse_linear_regression_has_k_nonzero_coefficients():
    task = SparseLinearRegression(n_dims=6, sparsity=2)
    xs, ys = task.sample_xy(300, 12, make_generator(0, "train"))
    w = torch.linalg.lstsq(xs.double(), ys.double().unsqueeze(-1)).solution.squeeze(-1)  # [B, d]
    torch.testing.assert_close((xs.double() @ w.unsqueeze(-1)).squeeze(-1), ys.double(), atol=1e-4, rtol=1e-4)
    nonzero = w.abs() > 1e-4  # [B, d]
    assert (nonzero.sum(dim=1) <= 2).all()
    assert (nonzero.sum(dim=1) == 2).float().mean() > 0.98
    # the support is drawn per prompt: all C(6, 2) = 15 supports appear, each coordinate about equally
    assert len({tuple(row.tolist()) for row in nonzero}) == 15
    assert nonzero.float().mean(dim=0).min() > 0.2
    assert w[nonzero].std().item() == pytest.approx(1.0, abs=0.15)


def test_relu_network_second_moment_and_homogeneity():
    task = ReLUNetwork(n_dims=4, hidden=100)
    xs, ys = task.sample_xy(2000, 10, make_generator(0, "train"))
    assert ys.square().mean().item() == pytest.approx(4.0, rel=0.1)
    # the same network (same generator state after the x draw) is positively homogeneous, not linear
    generator = make_generator(0, "train")
    torch.randn(2000, 10, 4, generator=generator)  # the x draw
    doubled = task.labels(2 * xs, generator)
    generator = make_generator(0, "train")
    torch.randn(2000, 10, 4, generator=generator)
    flipped = task.labels(-xs, generator)
    torch.testing.assert_close(doubled, 2 * ys, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(flipped, -ys, atol=1e-2)


def _naive_tree(xs, coords, leaves, depth):
    """Walk each prompt's tree point by point (the reference for the vectorised walk)."""
    ys = torch.empty(xs.shape[:2])
    for b, p in itertools.product(range(xs.shape[0]), range(xs.shape[1])):
        node = 0
        for _ in range(depth):
            node = 2 * node + (2 if xs[b, p, coords[b, node]] > 0 else 1)
        ys[b, p] = leaves[b, node - (2**depth - 1)]
    return ys


def test_decision_tree_values_signs_and_walk():
    task = DecisionTree(n_dims=5, depth=2)
    generator = make_generator(0, "train")
    xs, ys = task.sample_xy(50, 64, generator)
    distinct = torch.tensor([len(set(row.tolist())) for row in ys])
    assert (distinct <= 4).all() and (distinct > 1).float().mean() > 0.9
    # ys depend on x only through sign(x): positive rescalings of the coordinates keep every label
    generator = make_generator(0, "train")
    torch.randn(50, 64, 5, generator=generator)  # the x draw
    rescaled = xs.sign() * torch.rand(xs.shape, generator=make_generator(9, "train")).add(0.1)
    assert torch.equal(task.labels(rescaled, generator), ys)
    # and they are the leaves a point-by-point walk of the drawn trees reaches
    generator = make_generator(0, "train")
    torch.randn(50, 64, 5, generator=generator)
    coords = torch.randint(0, 5, (50, 3), generator=generator)
    leaves = torch.randn(50, 4, generator=generator)
    assert torch.equal(_naive_tree(xs[:8], coords, leaves, 2), ys[:8])
    assert ys.square().mean().item() == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda task: type(task).__name__)
def test_active_dims_zeroes_the_trailing_coordinates(task):
    xs, ys = task.sample_xy(8, 12, make_generator(4, "train"), active_dims=2)
    assert (xs[..., 2:] == 0).all() and (xs[..., :2] != 0).all()
    tokens, _ = task.sample(8, 12, make_generator(4, "train"), active_dims=2)
    assert torch.equal(tokens, build_prompt(xs, ys))
    full = task.sample_xy(8, 12, make_generator(4, "train"), active_dims=5)
    plain = task.sample_xy(8, 12, make_generator(4, "train"))
    assert torch.equal(full[0], plain[0]) and torch.equal(full[1], plain[1])
    for bad in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match=r"active_dims=.* must be None or an integer in \[1, n_dims=5\]"):
            task.sample_xy(2, 3, active_dims=bad)


def test_function_class_config_errors():
    cases = [
        (lambda: NoisyLinearRegression(3, noise_std=-0.1), r"NoisyLinearRegression.noise_std=-0.1 must be >= 0"),
        (
            lambda: SparseLinearRegression(3, sparsity=4),
            r"SparseLinearRegression.sparsity=4 must be an integer in \[1, n_dims=3\]",
        ),
        (lambda: SparseLinearRegression(3, sparsity=0), r"SparseLinearRegression.sparsity=0 must be an integer in"),
        (lambda: ReLUNetwork(3, hidden=0), r"ReLUNetwork.hidden=0 must be an integer >= 1"),
        (lambda: ReLUNetwork(3, hidden=2.5), r"ReLUNetwork.hidden=2.5 must be an integer >= 1"),
        (lambda: DecisionTree(3, depth=0), r"DecisionTree.depth=0 must be an integer >= 1"),
        (lambda: DecisionTree(0), r"DecisionTree.n_dims=0 must be an integer >= 1"),
        (lambda: DecisionTree(3, x_mean=float("nan")), r"DecisionTree.x_mean=nan must be a finite real number"),
        (lambda: ReLUNetwork(3, x_std=float("inf")), r"ReLUNetwork.x_std=inf must be >= 0"),
        (lambda: LinearRegression(True), r"LinearRegression.n_dims=True must be an integer >= 1"),
    ]
    for build, message in cases:
        with pytest.raises(ValueError, match=message):
            build()
    with pytest.raises(NotImplementedError):
        Task(3).sample_xy(1, 2)


# ----------------------------------------------------------------------------- out-of-distribution prompts

STANDARDISED = LinearRegression(n_dims=4, x_mean=0.5, x_std=2.0)  # geometry is checked on (x - mean) / std


def _z(task, xs):
    return (xs - task.x_mean) / task.x_std


@pytest.mark.parametrize("kind", OOD_KINDS)
def test_every_ood_kind_is_seeded_and_laid_out(kind):
    for task in (LinearRegression(4), DecisionTree(4, depth=2)):
        tokens, ys = sample_ood(task, kind, 16, 4, make_generator(0, "validation"))
        assert tokens.shape == (16, 7, 4) and ys.shape == (16, 4) and torch.isfinite(tokens).all()
        xs, ys_xy = sample_ood_xy(task, kind, 16, 4, make_generator(0, "validation"))
        assert torch.equal(tokens, build_prompt(xs, ys_xy)) and torch.equal(ys, ys_xy)
        assert not torch.equal(sample_ood(task, kind, 16, 4, make_generator(1, "validation"))[1], ys)
    # the labels are the task's function of the shifted x's: exactly linear for linear regression
    xs, ys = sample_ood_xy(LinearRegression(4), kind, 64, 4, make_generator(0, "validation"))
    if kind != "label_noise":
        full_rank = torch.linalg.matrix_rank(xs) == 4  # [B]
        w = torch.linalg.lstsq(xs[full_rank], ys[full_rank].unsqueeze(-1)).solution
        torch.testing.assert_close((xs[full_rank] @ w).squeeze(-1), ys[full_rank], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("kind", ["random_quadrants", "opposite_quadrants"])
def test_quadrant_kinds(kind):
    xs, _ = sample_ood_xy(STANDARDISED, kind, 200, 10, make_generator(0, "validation"))
    z = _z(STANDARDISED, xs)
    signs = z[:, :1].sign()  # [B, 1, d] the prompt's orthant
    assert (z[:, :-1].sign() == signs).all()  # every context point in it
    assert len({tuple(row.tolist()) for row in signs[:, 0]}) == 16  # the orthant is random per prompt
    query = z[:, -1].sign()  # [B, d]
    if kind == "opposite_quadrants":
        assert (query == -signs[:, 0]).all()
    else:
        assert (query == signs[:, 0]).float().mean().item() == pytest.approx(0.5, abs=0.06)
    assert z.square().sum(-1).mean().item() == pytest.approx(4.0, rel=0.1)  # |x| keeps the Gaussian norm


def test_orthogonal_query():
    xs, _ = sample_ood_xy(STANDARDISED, "orthogonal_query", 300, 4, make_generator(0, "validation"))
    z = _z(STANDARDISED, xs)
    gram = z @ z.transpose(1, 2)  # [B, P, P]
    norms = z.norm(dim=-1)  # [B, P]
    cosines = gram / (norms.unsqueeze(-1) * norms.unsqueeze(-2))
    torch.testing.assert_close(cosines, torch.eye(4).expand_as(cosines), atol=1e-4, rtol=0)
    assert norms.square().mean().item() == pytest.approx(4.0, rel=0.1)  # Gaussian norms kept
    # each point keeps its Gaussian norm: the first one is the Gaussian draw itself
    plain, _ = STANDARDISED.sample_xy(300, 4, make_generator(0, "validation"))
    torch.testing.assert_close(norms, _z(STANDARDISED, plain).norm(dim=-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(z[:, 0], _z(STANDARDISED, plain)[:, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="n_points <= n_dims; got n_points=5, n_dims=4"):
        sample_ood(STANDARDISED, "orthogonal_query", 2, 5)


def test_query_from_context():
    xs, ys = sample_ood_xy(STANDARDISED, "query_from_context", 400, 6, make_generator(0, "validation"))
    matches = (xs[:, :-1] == xs[:, -1:]).all(dim=-1)  # [B, P-1]
    assert (matches.sum(dim=1) == 1).all()  # the query is exactly one context point
    assert torch.equal(ys[:, -1], ys[:, :-1][matches])  # and so is its label
    counts = torch.bincount(matches.float().argmax(dim=1), minlength=5)
    assert counts.min() > 50  # every context position is copied, about uniformly
    with pytest.raises(ValueError, match="n_points >= 2"):
        sample_ood(STANDARDISED, "query_from_context", 2, 1)


def test_half_subspace():
    task = LinearRegression(n_dims=6, x_mean=0.5, x_std=2.0)
    xs, _ = sample_ood_xy(task, "half_subspace", 50, 12, make_generator(0, "validation"))
    z = _z(task, xs)
    assert (torch.linalg.matrix_rank(z, atol=1e-4) == 3).all()
    # a different subspace per prompt: two prompts' points together span more than 3 dimensions
    assert torch.linalg.matrix_rank(torch.cat([z[0], z[1]]), atol=1e-4).item() == 6
    assert z.square().sum(-1).mean().item() == pytest.approx(3.0, rel=0.1)  # x = U z, z ~ N(0, I_3)
    with pytest.raises(ValueError, match="half_subspace needs n_dims >= 2"):
        sample_ood(LinearRegression(1), "half_subspace", 2, 3)


def test_skewed_covariance():
    task = LinearRegression(n_dims=4)
    xs, _ = sample_ood_xy(task, "skewed_covariance", 4, 4000, make_generator(0, "validation"))
    covariance = xs.transpose(1, 2) @ xs / 4000  # [B, d, d]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    expected = 1 / torch.arange(4, 0, -1.0)
    expected = expected * 4 / expected.sum()  # lambda_i ~ 1/i with trace d, ascending
    torch.testing.assert_close(eigenvalues, expected.expand_as(eigenvalues), rtol=0.12, atol=0)
    # Q is drawn per prompt: the top eigenvectors of two prompts are not aligned
    assert abs(eigenvectors[0, :, -1] @ eigenvectors[1, :, -1]).item() < 0.95


def test_scaled_x_scaled_y_and_label_noise():
    plain_xs, plain_ys = STANDARDISED.sample_xy(300, 8, make_generator(0, "validation"))
    xs, ys = sample_ood_xy(STANDARDISED, "scaled_x", 300, 8, make_generator(0, "validation"), scale=3.0)
    torch.testing.assert_close(_z(STANDARDISED, xs), 3.0 * _z(STANDARDISED, plain_xs))
    centred = LinearRegression(4)  # with x_mean = 0 the same w gives ys scaled too
    xs, ys = sample_ood_xy(centred, "scaled_x", 300, 8, make_generator(0, "validation"), scale=3.0)
    torch.testing.assert_close(ys, 3.0 * centred.sample_xy(300, 8, make_generator(0, "validation"))[1])
    xs, ys = sample_ood_xy(STANDARDISED, "scaled_y", 300, 8, make_generator(0, "validation"), scale=0.5)
    assert torch.equal(xs, plain_xs) and torch.equal(ys, 0.5 * plain_ys)
    xs, ys = sample_ood_xy(STANDARDISED, "label_noise", 300, 8, make_generator(0, "validation"), noise_std=0.3)
    assert torch.equal(xs, plain_xs)
    noise = ys - plain_ys
    assert noise.std().item() == pytest.approx(0.3, rel=0.06) and noise.mean().abs().item() < 0.03


def test_ood_errors():
    with pytest.raises(ValueError, match=r"kind='nope' is not known; choose one of \('random_quadrants'"):
        sample_ood(STANDARDISED, "nope", 2, 3)
    with pytest.raises(ValueError, match="scale=0 must be a finite real number > 0"):
        sample_ood(STANDARDISED, "scaled_x", 2, 3, scale=0)
    with pytest.raises(ValueError, match="noise_std=-1.0 must be >= 0"):
        sample_ood(STANDARDISED, "label_noise", 2, 3, noise_std=-1.0)
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        sample_ood(STANDARDISED, "scaled_y", 0, 3)


def test_x_variances_give_a_fixed_diagonal_covariance():
    variances = (3.0, 0.75, 0.25)
    task = LinearRegression(n_dims=3, x_variances=[3.0, 0.75, 0.25])  # a record's list is read as a tuple
    assert task.x_variances == variances
    xs, ys = task.sample_xy(20000, 2, torch.Generator().manual_seed(0))
    covariance = torch.cov(xs.reshape(-1, 3).T)
    assert torch.allclose(covariance, torch.diag(torch.tensor(variances)), atol=0.05)
    assert abs(ys.square().mean().item() - sum(variances)) < 0.15  # E[y^2] = trace of the covariance
    # the same draws as the isotropic task, scaled per coordinate
    iso, _ = LinearRegression(n_dims=3).sample_xy(4, 2, torch.Generator().manual_seed(1))
    skewed, _ = task.sample_xy(4, 2, torch.Generator().manual_seed(1))
    assert torch.allclose(skewed, iso * torch.tensor(variances).sqrt())
    assert task_from_dict(task.to_dict()) == task and task.to_dict()["x_variances"] == list(variances)
    assert "x_variances" not in LinearRegression(n_dims=3).to_dict()  # older records still equal their specs
    for bad in ([1.0, 2.0], [1.0, 0.0, 1.0], "abc", 3.0):
        with pytest.raises(ValueError, match=r"LinearRegression.x_variances=.* must be None or"):
            LinearRegression(n_dims=3, x_variances=bad)
    with pytest.raises(ValueError, match="x_variances is set: the OOD kinds change isotropic x's only"):
        sample_ood(task, "skewed_covariance", 2, 3)
