"""What every part of the fund shares: its directory, its records, its key store and identity.

A fund directory::

    fund/
      fund.db                       the records (SQLite by default; any SQLAlchemy URL):
                                    participants and their public keys, models and spec
                                    versions, stakes and their history, rounds, bundles,
                                    submissions, per-era scores, payouts, reputation,
                                    encrypted training jobs
      rounds/<round>/live_ids.parquet
      rounds/<round>/bundles/<model>/        published to that model's participant
      rounds/<round>/packed/        published to every packed (linear) model's participant
      rounds/<round>/packed_live.parquet   the packed features in clear (private)
      rounds/<round>/submissions/<model>/    received, kept as sent
      rounds/<round>/predictions/<model>.parquet   decrypted predictions (private)
      rounds/<round>/results/       per-era scores, scores and payouts (rounded aggregates)
      training/<job>/               encrypted training jobs (see fhe_toolkit.fund.training)

Secret keys live in the key store (``keys/`` by default), never in the fund directory's bundles;
so does the fund's signing key (``fund_signing_key.pem``; its ``.pub`` goes to participants).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fhe_toolkit.errors import FundError
from fhe_toolkit.fhe.glwe import RoundKey
from fhe_toolkit.fhe.keystore import SIGNING_KEY, KeyStore
from fhe_toolkit.fhe.packed import PACKED_KEYS
from fhe_toolkit.protocol.files import make_private_dirs
from fhe_toolkit.protocol.modelspec import AnyModelSpec, model_spec_from
from fhe_toolkit.protocol.signing import (
    new_identity,
    private_key_from_pem,
    public_bytes,
    write_public_key,
)
from fhe_toolkit.registry import Registry, RoundRecord

DATABASE = "fund.db"
REPUTATION_ROUNDS = 4
"""Reputation: the mean payout score over a model's last this many resolved rounds."""
MAX_PACKED_PER_PARTICIPANT = 3
"""Packed (linear) models one participant may enter in a round: each is one more decryption
under the round's shared key (see the README's trust model)."""
PACKED_DIR = "packed"
"""The round's packed dataset, published to every packed model's participant."""
PACKED_LIVE = "packed_live.parquet"
"""The packed features' clear values (private), to verify what is decrypted."""


class FundBase:
    """The fund's records (a SQL database), rounds on disk, and keys in the key store.

    ``database``: an SQLAlchemy URL; by default a SQLite file ``fund.db`` in ``root``.
    """

    def __init__(
        self,
        root: str | Path = "fund",
        key_store: str | Path = "keys",
        *,
        database: str | None = None,
        reputation_rounds: int = REPUTATION_ROUNDS,
        create: bool = True,
    ) -> None:
        """``create``: make ``root`` and its database if they do not exist; without it, a
        missing fund is refused, naming where it was looked for (for read-only uses)."""
        self.root = Path(root)
        self.keys = KeyStore(key_store)
        if database is None:
            if not create and not (self.root / DATABASE).is_file():
                raise FundError(
                    f"no fund here: {self.root / DATABASE} does not exist. Run this in the "
                    "folder that holds the fund, or point at it with --fund-dir (or --database)."
                )
            self.root.mkdir(parents=True, exist_ok=True)
            database = f"sqlite:///{self.root / DATABASE}"
        self.db = Registry(database)
        self.reputation_rounds = reputation_rounds
        self._round_keys: dict[str, RoundKey] = {}

    # --- identity, models and rounds -------------------------------------------------------
    @property
    def identity_path(self) -> Path:
        """The fund's private signing key (in the key store); ``.pub`` beside it is public."""
        return self.keys.root / SIGNING_KEY

    def public_key(self) -> bytes:
        """The fund's public signing key, made on first use: give it to every participant."""
        return public_bytes(self.signing_key())

    def signing_key(self) -> Ed25519PrivateKey:
        """The fund's private signing key (bundles are signed with it), made on first use;
        decrypted in memory if the key store is encrypted."""
        if not self.identity_path.exists() and not self.identity_path.is_symlink():
            pem, public = new_identity()
            make_private_dirs(self.keys.root)
            self.keys.write_secret(self.identity_path, pem)
            write_public_key(self.identity_path, public)
        return private_key_from_pem(self.keys.read_secret(self.identity_path), self.identity_path)

    def models(self) -> pd.DataFrame:
        """Registered models: owner, family, target, stake, version."""
        return self.db.models()

    def spec(self, model: str) -> AnyModelSpec:
        text = self.db.spec_json(model)
        return model_spec_from(json.loads(text), f"the registered spec of {model!r}")

    def round_dir(self, round_id: str) -> Path:
        return self.root / "rounds" / round_id

    def round_record(self, round_id: str) -> RoundRecord:
        """The round's state, and per model its bundle and where its submission stands."""
        return self.db.round_record(round_id)

    def predictions(self, round_id: str) -> pd.DataFrame:
        folder = self.round_dir(round_id) / "predictions"
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not files:
            raise FundError(f"no submission of round {round_id!r} was received yet.")
        return pd.concat([pd.read_parquet(f) for f in files], axis=1)

    def packed_models(self, round_id: str) -> list[str]:
        """The round's models that run on its packed dataset (share its round key)."""
        folder = self.keys.directory(round_id, PACKED_KEYS)
        if not folder.is_dir():
            return []
        key_set_id = self.keys.info(round_id, PACKED_KEYS)["key_set_id"]
        record = self.round_record(round_id)
        return [m for m, bundle in record.bundles.items() if bundle.key_set_id == key_set_id]

    def retire_packed_key(self, round_id: str, reason: str) -> None:
        """Retire the round's packed key, if it has one still in use."""
        if self.packed_models(round_id) and not self.keys.is_retired(round_id, PACKED_KEYS):
            self.keys.retire(round_id, PACKED_KEYS, reason=reason)


def report_progress(callback: Callable[..., None] | None, *args: Any) -> None:
    if callback is not None:
        callback(*args)
