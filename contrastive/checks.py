"""Valid ranges of config fields, stated once by the module that reads them.

A module declares `RULES = {"field": rule, ...}` for its part of the config and calls
`check_fields(cfg, "prefix.", RULES)`; a value outside its rule raises ValueError naming the field, its
value and the valid range, which the runner turns into a one-line refusal before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable


@dataclasses.dataclass(frozen=True)
class Rule:
    ok: Callable[[object], bool]
    text: str  # the message for a bad value, with {field} and {value}


POSITIVE = Rule(lambda v: v > 0, "{field} must be > 0, got {value!r}")
AT_LEAST_ONE = Rule(lambda v: v >= 1, "{field} must be >= 1, got {value!r}")
NON_NEGATIVE = Rule(lambda v: v >= 0, "{field} must be >= 0, got {value!r}")
BELOW_ONE = Rule(lambda v: 0 <= v < 1, "{field} must be in [0, 1), got {value!r}")
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "{field} must be in [0, 1], got {value!r}")
WIDTHS = Rule(lambda v: all(w > 0 for w in v), "{field} must be a tuple of positive widths (or ()), got {value!r}")
SOME_WIDTHS = Rule(lambda v: len(v) > 0 and all(w > 0 for w in v),
                   "{field} must be a non-empty tuple of positive widths, got {value!r}")
SOME_POSITIVE = Rule(lambda v: len(v) > 0 and all(x > 0 for x in v),
                     "{field} must be a non-empty tuple of positive numbers, got {value!r}")


def one_of(options: Iterable[str]) -> Rule:
    options = tuple(options)
    return Rule(lambda v: v in options, "{field}={value!r} is not one of " + ", ".join(map(repr, options)))


def check_fields(cfg, prefix: str, rules: dict[str, Rule]) -> None:
    """Raise ValueError for the first field of `cfg` (a mapping) whose value breaks its rule."""
    for name, rule in rules.items():
        value = cfg[name]
        try:
            ok = rule.ok(value)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(rule.text.format(field=f"config.{prefix}{name}", value=value))
