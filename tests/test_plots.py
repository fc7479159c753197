"""The report helpers with diverged runs: verdicts need two finished seeds a side, one seed is
never shown as a spread of 0, and plots draw what there is."""

import io

import plots


def test_verdicts_need_two_finished_seeds_per_side():
    assert plots.compare([0.1, 0.11], [0.5, 0.52]) == "lower"
    assert plots.compare([0.1], [0.5, 0.52]).startswith("cannot tell (fewer than 2 finished seeds")
    assert plots.compare([], [0.5, 0.52]).startswith("cannot tell")
    assert "cannot tell" in plots.verdict("A", [0.1], "B", [0.5, 0.6])


def test_one_seed_is_not_a_spread_of_zero():
    assert plots.mean_pm_std([0.25]) == "0.25 (1 seed)"
    assert "±" not in plots.mean_pm_std([0.25])
    assert plots.mean_pm_std([0.2, 0.4]) == "0.3 ± 0.1"
    assert plots.mean_pm_std([]) == "n/a"


def test_plots_skip_groups_without_finished_runs():
    fig, axes = plots.subplots(1, 2)
    plots.band(axes[0, 0], [1, 2, 3], [], "diverged model", plots.COLORS[0])
    plots.band(axes[0, 0], [1, 2, 3], [[1, 2, 3], [2, 3, 4]], "trained model", plots.COLORS[1])
    axes[0, 0].legend()
    plots.boxplot(axes[0, 1], [[1.0, 2.0], []], ["ok", "diverged"], plots.COLORS[:2])
    fig.savefig(io.BytesIO(), format="svg")  # it renders
    labels = [text.get_text() for text in axes[0, 0].get_legend().get_texts()]
    assert labels == ["diverged model (no finished run)", "trained model"]
    plots.plt.close(fig)
