"""Input validation shared by every config and sampler: one rule per kind of value.

Owns the checks that turn bad input into a `ValueError` naming the field and what is allowed,
raised before any training starts. Every module validates through these, so "an integer" means
the same everywhere: Python and numpy integers count, booleans do not.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def is_int(value: object) -> bool:
    """True for Python and numpy integers; False for booleans (True is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for finite Python and numpy real numbers; False for booleans, inf and NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def require(condition: bool, message: str) -> None:
    """Raise `ValueError(message)` unless `condition` holds."""
    if not condition:
        raise ValueError(message)


def require_int(field: str, value: object, minimum: int | None = 1, maximum: int | None = None) -> None:
    """`field` must be an integer in [minimum, maximum] (either bound may be None: open)."""
    low = "" if minimum is None else f" >= {minimum}"
    high = "" if maximum is None else f" <= {maximum}"
    both = f" in {minimum}..{maximum}" if minimum is not None and maximum is not None else low + high
    ok = is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    require(ok, f"{field}={value!r} must be an integer{both}")


def require_real(
    field: str, value: object, minimum: float | None = None, maximum: float | None = None, strict: bool = False
) -> None:
    """`field` must be a finite real number within the bounds (`strict`: the bounds excluded)."""
    above = (lambda v: v > minimum) if strict else (lambda v: v >= minimum)
    below = (lambda v: v < maximum) if strict else (lambda v: v <= maximum)
    ok = is_real(value) and (minimum is None or above(value)) and (maximum is None or below(value))
    if minimum is not None and maximum is not None:
        bounds = f" in ({minimum}, {maximum})" if strict else f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        bounds = f" {'>' if strict else '>='} {minimum}"
    elif maximum is not None:
        bounds = f" {'<' if strict else '<='} {maximum}"
    else:
        bounds = ""
    require(ok, f"{field}={value!r} must be a finite number{bounds}")


def require_choice(field: str, value: object, allowed: Iterable) -> None:
    """`field` must be one of `allowed`."""
    allowed = tuple(allowed)
    require(value in allowed, f"{field}={value!r} is not allowed; choose one of {allowed}")
