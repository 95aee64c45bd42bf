"""Participants for tests: a signing key, recorded with the fund."""

from __future__ import annotations

from pathlib import Path

from fhe_toolkit.fund import Fund
from fhe_toolkit.protocol.signing import create_identity


def enroll(fund: Fund, directory: Path, name: str) -> Path:
    """Give ``name`` a signing key in ``directory``, record it with ``fund``; return the
    private key's path."""
    key = directory / f"{name}.pem"
    fund.add_participant(name, create_identity(key))
    return key
