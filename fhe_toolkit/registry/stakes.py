"""What a stake may be: a finite number, at least 0, at most the fund's cap.

A stake enters from the command line, the Python API and payouts; all of them meet
:func:`check_stake` in the registry before anything reaches SQL, and the database itself refuses
any stake outside ``0..STAKE_CEILING`` (a CHECK constraint, migration 0006), so a value that
cannot be paid on (1.8e308, infinity, NaN) is never stored.
"""

from __future__ import annotations

import math
from numbers import Real

from fhe_toolkit.errors import RegistryError

DEFAULT_MAX_STAKE = 1e9
"""The fund's cap on one model's stake until the operator sets another
(``fhe-toolkit fund config --max-stake``)."""
STAKE_CEILING = 1e15
"""No cap may exceed this, and the database refuses any stake above it: far beyond any real
stake, far below where a payout's arithmetic overflows or loses whole units."""
MAX_STAKE_SETTING = "max_stake"
"""The fund setting (``settings`` table) that holds the cap."""


def check_stake(value: object, cap: float) -> float:
    """``value`` as a stake: a real number (not a bool), finite, ≥ 0 and ≤ ``cap``; refused
    with a message about stakes otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise RegistryError(f"a stake must be a number, got {value!r}.")
    stake = float(value)
    if not math.isfinite(stake):
        raise RegistryError(f"a stake must be a finite number, got {stake}.")
    if stake < 0:
        raise RegistryError(
            f"a stake must be ≥ 0, got {stake:g}: it is what the model puts at risk (0 enters "
            "the model without paying it)."
        )
    if stake > cap:
        raise RegistryError(
            f"a stake must be at most the fund's cap of {cap:,.0f}, got {stake:g}; the fund's "
            "operator can raise the cap with `fhe-toolkit fund config --max-stake AMOUNT`."
        )
    return stake


def check_cap(value: object, largest_stake: float) -> float:
    """``value`` as the cap on stakes: above 0, at most :data:`STAKE_CEILING`, and not below
    the largest stake the fund holds now (``largest_stake``)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise RegistryError(f"the cap on stakes must be a finite number, got {value!r}.")
    cap = float(value)
    if not 0 < cap <= STAKE_CEILING:
        raise RegistryError(
            f"the cap on stakes must be above 0 and at most {STAKE_CEILING:,.0f}, got {cap:g}."
        )
    if cap < largest_stake:
        raise RegistryError(
            f"a model's stake is {largest_stake:,.2f}, above a cap of {cap:g}; lower that stake "
            "first (`fhe-toolkit fund stake MODEL AMOUNT`), then the cap."
        )
    return cap
