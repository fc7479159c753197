"""The shared validators: one meaning of "integer", "number" and "choice" everywhere."""

import numpy as np
import pytest

from checks import is_int, require_choice, require_int, require_real


def test_integers_include_numpy_and_exclude_booleans():
    assert is_int(3) and is_int(np.int64(3))
    assert not is_int(True) and not is_int(3.0) and not is_int("3")


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "1", None])
def test_require_int_names_the_field(value):
    with pytest.raises(ValueError, match=r"TrainConfig\.steps=.* must be an integer >= 1"):
        require_int("TrainConfig.steps", value)


def test_require_int_bounds():
    require_int("x", np.int32(5), 1, 5)
    with pytest.raises(ValueError, match="in 1..5"):
        require_int("x", 6, 1, 5)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), True, "0.1", 0.0])
def test_require_real_rejects_non_finite_booleans_and_bounds(value):
    with pytest.raises(ValueError, match=r"lr=.* must be a finite number > 0"):
        require_real("lr", value, minimum=0, strict=True)


def test_require_choice_lists_the_allowed_values():
    require_choice("block", "gpt2", ("gpt2", "lstm"))
    with pytest.raises(ValueError, match=r"block='x' is not allowed; choose one of \('gpt2', 'lstm'\)"):
        require_choice("block", "x", ("gpt2", "lstm"))
