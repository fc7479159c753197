"""The report helpers with diverged runs: one seed is never shown as a spread of 0, and plots draw
what there is (verdicts are `verdicts.Comparisons`', tested in test_verdicts.py)."""

import io

import plots


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


def test_a_shared_legend_names_a_series_the_last_panel_lacks():
    from plots import shared_legend, subplots

    fig, axes = subplots(1, 2)
    axes[0, 0].plot([0, 1], [1, 2], label="b_train=10")
    axes[0, 0].plot([0, 1], [2, 3], label="b_train=5")
    axes[0, 1].plot([0, 1], [2, 1], label="b_train=5")
    shared_legend(axes)
    names = [text.get_text() for text in axes[0, 1].get_legend().get_texts()]
    assert names == ["b_train=10", "b_train=5"]
    assert axes[0, 0].get_legend() is None


def test_an_axis_of_integers_gets_integer_ticks_and_others_are_left_alone():
    """Loops 1 and 2 on a linear axis: the default locator puts ticks between them; `integer_ticks`
    keeps only integers there, and leaves a log axis and an axis of fractions as they were."""
    fig, (loops, errors) = plots.plt.subplots(1, 2)
    loops.plot([1, 2], [0.5, 0.25])
    errors.plot([0.1, 0.2, 0.35], [1.0, 2.0, 3.0])
    errors.set_yscale("log")
    fig.canvas.draw()
    assert any(tick != round(tick) for tick in loops.get_xticks())  # the default: 1.0, 1.2, 1.4, ...
    fractions_before, log_before = list(errors.get_xticks()), type(errors.yaxis.get_major_locator())
    plots.integer_ticks(fig)
    fig.canvas.draw()
    assert all(tick == round(tick) for tick in loops.get_xticks())
    assert not all(tick == round(tick) for tick in loops.get_yticks())  # the errors are not integers
    assert list(errors.get_xticks()) == fractions_before
    assert type(errors.yaxis.get_major_locator()) is log_before
    plots.plt.close(fig)
    # a gate's line spans the axes (not data) and a scatter's points are read: fractions keep the default ticks
    fig, ax = plots.plt.subplots()
    ax.scatter([0.5, 0.7], [0.01, 0.03])
    ax.axvline(1, color="gray")
    ax.axhline(0, color="gray")
    plots.integer_ticks(fig)
    assert type(ax.xaxis.get_major_locator()).__name__ == "AutoLocator"
    assert type(ax.yaxis.get_major_locator()).__name__ == "AutoLocator"
    plots.plt.close(fig)
