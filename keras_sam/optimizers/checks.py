"""Argument checks shared by the optimizers: one message per kind of mistake,
naming the argument."""

import math
import numbers


def require(condition, name, requirement, value):
    """Raises `ValueError("`name` must be <requirement>, received <value>.")`
    unless `condition`."""
    if not condition:
        raise ValueError(f"`{name}` must be {requirement}, received {value!r}.")


def is_number(value):
    """A real number; `True`/`False` are not numbers here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name, value, minimum=None, allow_none=False):
    """`value` as an int, checked: an integer (>= `minimum`), or None if allowed."""
    if allow_none and value is None:
        return None
    requirement = "an integer" + ("" if minimum is None else f" >= {minimum}")
    if allow_none:
        requirement = "None or " + requirement
    require(is_integer(value) and (minimum is None or value >= minimum), name, requirement, value)
    return int(value)


def finite_number(name, value, at_least=None, above=None, allow_none=False):
    """`value` as a float, checked: finite (and >= `at_least` / > `above`),
    or None if allowed."""
    if allow_none and value is None:
        return None
    requirement = "a finite number"
    if at_least is not None:
        requirement += f" >= {at_least}"
    if above is not None:
        requirement += f" > {above}"
    if allow_none:
        requirement = "None or " + requirement
    valid = is_number(value) and math.isfinite(value)
    valid = valid and (at_least is None or value >= at_least) and (above is None or value > above)
    require(valid, name, requirement, value)
    return float(value)


def positive_number(name, value, allow_zero=False):
    """`value` as a float, checked: a finite number > 0 (>= 0 if `allow_zero`)."""
    require(is_number(value), name, "a number", value)
    bound = ">= 0" if allow_zero else "> 0"
    valid = math.isfinite(value) and value >= 0 and (allow_zero or value != 0)
    require(valid, name, f"finite and {bound}", value)
    return float(value)


def fraction(name, value):
    """`value` as a float, checked: a number in (0, 1]."""
    require(is_number(value) and 0 < value <= 1, name, "a number in (0, 1]", value)
    return float(value)
