"""The fund: participants, models and stakes, rounds, intake, resolution and the leaderboard.

See :mod:`fhe_toolkit.fund.base` for the fund directory's layout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fhe_toolkit.errors import FundError
from fhe_toolkit.fhe.versions import check_versions
from fhe_toolkit.fund.dry_run import DryRunLimits, DryRunReport, prove_usable
from fhe_toolkit.fund.intake import Intake
from fhe_toolkit.fund.leaderboard import leaderboard
from fhe_toolkit.fund.resolution import Resolution
from fhe_toolkit.fund.rounds import Rounds
from fhe_toolkit.protocol.modelspec import NAME_PATTERN, AnyModelSpec, load_spec
from fhe_toolkit.protocol.signing import load_public_key


class Fund(Rounds, Intake, Resolution):
    """The fund's records (a SQL database), rounds on disk, and keys in the key store.

    ``database``: an SQLAlchemy URL; by default a SQLite file ``fund.db`` in ``root``.
    """

    def add_participant(self, name: str, public_key: str | Path | bytes) -> None:
        """Record a participant and the Ed25519 public key its submissions are signed with."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise FundError(f"participant name {name!r} must be a-z, 0-9, '_' or '-'.")
        key = public_key if isinstance(public_key, bytes) else load_public_key(public_key)
        self.db.add_participant(name, key)

    def register(
        self,
        spec_path: str | Path,
        *,
        participant: str,
        stake: float,
        limits: DryRunLimits | None = None,
        on_dry_run: Callable[[DryRunReport], None] | None = None,
    ) -> AnyModelSpec:
        """Validate a participant's model spec, prove it usable, and register it, owned by
        ``participant``, with a stake. A changed spec under a known name becomes the model's
        next version.

        Refused, with nothing stored: a stake that is not a finite number, ≥ 0 and within the
        fund's cap (:meth:`max_stake`); anything but a valid plain-JSON spec (client specs within
        what Concrete produces at 128-bit security, see
        :mod:`~fhe_toolkit.protocol.client_specs`); a spec compiled with another Concrete
        version than the fund runs; a spec that fails its dry run (keys made and a batch
        encrypted in a worker process under ``limits``, see :mod:`~fhe_toolkit.fund.dry_run`;
        ``on_dry_run`` is told what it measured); a name owned by another participant or
        registered for another target; an unknown participant.
        """
        stake = self.db.check_stake(stake)
        spec = load_spec(spec_path)
        check_versions(spec)
        report = prove_usable(spec, limits)
        if on_dry_run is not None:
            on_dry_run(report)
        self.db.register_model(
            spec.name, participant, spec.family, spec.target, spec.to_json(), spec.sha256(),
            stake,
        )  # fmt: skip
        return spec

    def set_stake(self, model: str, stake: float) -> None:
        """Raise or lower a model's stake (finite, ≥ 0, within the fund's cap): rounds opened
        from now on pay on it."""
        self.db.set_stake(model, self.db.check_stake(stake))

    def max_stake(self) -> float:
        """The cap on one model's stake: 1e9 until :meth:`set_max_stake` sets another. A
        payout never takes a stake beyond it (the rest is noted when the round is scored)."""
        return self.db.max_stake()

    def set_max_stake(self, cap: float) -> None:
        """Set the cap on one model's stake (above 0, at most 1e15); refused below the largest
        stake the fund holds now."""
        self.db.set_max_stake(cap)

    def leaderboard(self, sort_by: str = "reputation") -> pd.DataFrame:
        """One row per model: its stake, latest round's CORR, MMC and payout, mean CORR and MMC
        over its resolved rounds, reputation, rounds scored; sorted by ``sort_by``."""
        return leaderboard(self.db.models(), self.db.payouts(), sort_by)
