"""Scalars out of Flower's record values (typed ``int | float | str | bytes | bool | list...``).

One place that turns a ConfigRecord or MetricRecord value into the int or float the code needs,
with an error naming the key when a client or the server sent something else.
"""

from __future__ import annotations


def as_int(value: object, key: str = "value") -> int:
    """``value`` as an int (ints, integral floats, bools and decimal strings); else ValueError."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{key} must be an integer, got {value!r}")


def as_float(value: object, key: str = "value") -> float:
    """``value`` as a float (numbers and numeric strings); else ValueError naming ``key``."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{key} must be a number, got {value!r}")
