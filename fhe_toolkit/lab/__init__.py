"""The incentive lab: a seeded, multi-round tournament in the clear, to see who gets paid.

Participants of several archetypes (honest models, new signal, copycats, noise, sybils, lottery
tickets, negations, a high-exposure model and its neutralized twin: :data:`ARCHETYPES`) play
rounds on synthetic data (or the fund's own eras); the fund builds its meta model by one of the
combination methods of :mod:`fhe_toolkit.scoring.combine`, pays by a :class:`PayoutRule`, and
stakes follow the payouts. ``fhe-toolkit simulate`` is the command line over :func:`run_lab` and
:func:`write_outputs`.

    from fhe_toolkit.lab import LabConfig, PayoutRule, run_lab, write_outputs
    result = run_lab(LabConfig(rounds=60, rule=PayoutRule(corr_weight=0.0)))
    result.summary  # one row per archetype
"""

from fhe_toolkit.lab.claims import CLAIMS, claim_figures, mmc_form_agreement
from fhe_toolkit.lab.data import LabData, parquet_data, synthetic_data
from fhe_toolkit.lab.participants import (
    ARCHETYPES,
    DEFAULT_ACCOUNTS,
    Archetype,
    Participants,
    make_participants,
)
from fhe_toolkit.lab.results import (
    SUMMARY_COLUMNS,
    compare_methods,
    payout_per_stake,
    summarize_archetypes,
)
from fhe_toolkit.lab.run import LabResult, load_lab_data, run_lab, write_outputs
from fhe_toolkit.lab.tournament import LabConfig, PayoutRule, Played, Tournament

__all__ = [
    "ARCHETYPES",
    "CLAIMS",
    "DEFAULT_ACCOUNTS",
    "SUMMARY_COLUMNS",
    "Archetype",
    "LabConfig",
    "LabData",
    "LabResult",
    "Participants",
    "PayoutRule",
    "Played",
    "Tournament",
    "claim_figures",
    "compare_methods",
    "load_lab_data",
    "make_participants",
    "mmc_form_agreement",
    "parquet_data",
    "payout_per_stake",
    "run_lab",
    "summarize_archetypes",
    "synthetic_data",
    "write_outputs",
]
