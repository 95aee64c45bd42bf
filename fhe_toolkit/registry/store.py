"""The fund's records in a SQL database: SQLite by default, any SQLAlchemy URL (PostgreSQL) too.

Opening a database brings its schema to the current version first (Alembic migrations in
``migrations/versions``), so an older database is upgraded in place and keeps its data. Every
method is one transaction: it happens whole or not at all, whatever kills the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fhe_toolkit.errors import FundError
from fhe_toolkit.registry.tables import (
    Bundle,
    Correlation,
    Model,
    ModelVersion,
    Participant,
    Payout,
    Round,
    Score,
    StakeEvent,
    Submission,
)

MIGRATIONS = Path(__file__).parent / "migrations"
ACCEPTED = "accepted: decrypting"


class RegistryError(FundError):
    """A record that does not exist, exists already, or cannot change as asked."""


def migrations_config(connection: Any = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (the newest by default), keeping its data."""
    with engine.begin() as connection:
        command.upgrade(migrations_config(connection), revision)


def connect(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys enforced, as other databases do."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


class Registry:
    """Participants, models, stakes, rounds, submissions, scores and payouts."""

    def __init__(self, url: str) -> None:
        self.engine = connect(url)
        try:
            upgrade(self.engine)
        except OperationalError as exc:
            raise RegistryError(
                f"cannot open the fund's database {self.engine.url!r}: {exc.orig}"
            ) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    # --- participants and models --------------------------------------------------------
    def add_participant(self, name: str, public_key: bytes) -> None:
        with self.session() as s:
            known = s.scalar(select(Participant).where(Participant.name == name))
            if known is not None:
                if known.public_key == public_key:
                    return
                raise RegistryError(
                    f"participant {name!r} is registered with another public key; a participant "
                    "keeps its identity (register a new name for a new key)."
                )
            s.add(Participant(name=name, public_key=public_key, created_at=_now()))

    def participant_keys(self) -> dict[str, bytes]:
        with self.session() as s:
            return {p.name: p.public_key for p in s.scalars(select(Participant))}

    def owner(self, model: str) -> str:
        """The name of the participant who owns ``model``."""
        with self.session() as s:
            found = self._model(s, model)
            return s.get_one(Participant, found.participant_id).name

    def register_model(
        self,
        name: str,
        participant: str,
        family: str,
        target: str,
        spec_json: str,
        spec_sha256: str,
        stake: float,
    ) -> int:
        """Register a model (or a new version of it, same owner and target); return the
        version. Re-registering the same spec changes nothing but the stake."""
        with self.session() as s:
            owner = self._participant(s, participant)
            model = s.scalar(select(Model).where(Model.name == name))
            if model is None:
                model = Model(
                    name=name,
                    participant_id=owner.id,
                    target=target,
                    stake=0.0,
                    created_at=_now(),
                )
                s.add(model)
                s.flush()
            elif model.participant_id != owner.id:
                raise RegistryError(f"model {name!r} belongs to another participant.")
            elif model.target != target:
                raise RegistryError(
                    f"model {name!r} is registered for {model.target!r}, not {target!r}; a "
                    "model keeps its target (register a new name)."
                )
            latest = self._latest_version(s, model.id)
            version = 0 if latest is None else latest.version
            if latest is None or latest.spec_sha256 != spec_sha256:
                version += 1
                s.add(
                    ModelVersion(
                        model_id=model.id,
                        version=version,
                        family=family,
                        spec_sha256=spec_sha256,
                        spec_json=spec_json,
                        registered_at=_now(),
                    )
                )
            self._set_stake(s, model, stake, "set", None)
            return version

    def set_stake(self, model: str, stake: float) -> None:
        """Raise or lower a model's stake; rounds already open keep the stake they opened with."""
        with self.session() as s:
            self._set_stake(s, self._model(s, model), stake, "set", None)

    def spec_json(self, model: str) -> str:
        """The latest registered spec of ``model``, as JSON text."""
        with self.session() as s:
            latest = self._latest_version(s, self._model(s, model).id)
            if latest is None:
                raise RegistryError(f"model {model!r} has no registered spec.")
            return latest.spec_json

    def models(self) -> pd.DataFrame:
        """One row per model: owner, family, target, stake, version, registered_at."""
        with self.session() as s:
            rows = []
            for model in s.scalars(select(Model).order_by(Model.name)):
                latest = self._latest_version(s, model.id)
                rows.append(
                    {
                        "model": model.name,
                        "participant": s.get_one(Participant, model.participant_id).name,
                        "family": latest.family if latest else None,
                        "target": model.target,
                        "stake": model.stake,
                        "version": latest.version if latest else None,
                        "registered_at": latest.registered_at if latest else None,
                    }
                )
        return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()

    # --- rounds -------------------------------------------------------------------------
    def create_round(
        self, name: str, n_rows: int, deadline: datetime | None, bundles: list[dict[str, Any]]
    ) -> None:
        """Record an opened round and its bundles (``model``, ``key_set_id``,
        ``bundle_sha256``, ``batch_ids``); each bundle keeps its model's current stake."""
        with self.session() as s:
            if s.scalar(select(Round).where(Round.name == name)) is not None:
                raise RegistryError(f"round {name!r} exists already.")
            record = Round(
                name=name, status="open", n_rows=n_rows, opened_at=_now(), deadline=deadline
            )
            s.add(record)
            s.flush()
            for bundle in bundles:
                model = self._model(s, bundle["model"])
                latest = self._latest_version(s, model.id)
                if latest is None:
                    raise RegistryError(f"model {model.name!r} has no registered spec.")
                s.add(
                    Bundle(
                        round_id=record.id,
                        model_id=model.id,
                        model_version_id=latest.id,
                        key_set_id=bundle["key_set_id"],
                        bundle_sha256=bundle["bundle_sha256"],
                        stake=model.stake,
                        batch_ids=bundle["batch_ids"],
                        status="awaiting submission",
                    )
                )

    def has_round(self, name: str) -> bool:
        with self.session() as s:
            return s.scalar(select(Round).where(Round.name == name)) is not None

    def round_info(self, name: str) -> dict[str, Any]:
        """The round's state, and per model its bundle: key set, hashes, stake, status."""
        with self.session() as s:
            record = self._round(s, name)
            models = {}
            for bundle, model, version in s.execute(
                select(Bundle, Model, ModelVersion)
                .join(Model, Bundle.model_id == Model.id)
                .join(ModelVersion, Bundle.model_version_id == ModelVersion.id)
                .where(Bundle.round_id == record.id)
            ):
                models[model.name] = {
                    "key_set_id": bundle.key_set_id,
                    "bundle_sha256": bundle.bundle_sha256,
                    "spec_sha256": version.spec_sha256,
                    "spec_json": version.spec_json,
                    "stake": bundle.stake,
                    "batch_ids": bundle.batch_ids,
                    "status": bundle.status,
                }
            return {
                "round_id": record.name,
                "status": record.status,
                "n_rows": record.n_rows,
                "opened_at": record.opened_at,
                "deadline": record.deadline,
                "models": models,
            }

    def rounds(self) -> pd.DataFrame:
        with self.session() as s:
            rows = [
                {
                    "round": r.name,
                    "status": r.status,
                    "rows": r.n_rows,
                    "opened_at": r.opened_at,
                    "deadline": r.deadline,
                    "resolved_at": r.resolved_at,
                }
                for r in s.scalars(select(Round).order_by(Round.id))
            ]
        return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()

    def accept_submission(
        self, round_name: str, model: str, manifest_sha256: str, signer: str
    ) -> None:
        """Record a submission before it is decrypted; refuse a second one for the bundle, or
        one after the round closed or its deadline passed. The same submission again, while
        its decryption never finished (the fund was cut off), is accepted again."""
        with self.session() as s:
            record = self._round(s, round_name)
            bundle = self._bundle(s, record, model)
            earlier = s.scalar(select(Submission).where(Submission.bundle_id == bundle.id))
            if earlier is not None:
                if earlier.manifest_sha256 == manifest_sha256 and bundle.status == ACCEPTED:
                    return
                raise _received_already(model, round_name)
            if record.status != "open":
                raise RegistryError(
                    f"round {round_name!r} is {record.status}: it takes no more submissions."
                )
            if record.deadline is not None and _now() > _aware(record.deadline):
                raise RegistryError(
                    f"round {round_name!r} stopped taking submissions at {record.deadline}."
                )
            s.add(
                Submission(
                    bundle_id=bundle.id,
                    manifest_sha256=manifest_sha256,
                    signed_by=self._participant(s, signer).id,
                    received_at=_now(),
                )
            )
            bundle.status = ACCEPTED
            try:
                s.flush()
            except IntegrityError:  # the same submission, received at the same moment
                raise _received_already(model, round_name) from None

    def set_status(self, round_name: str, model: str, status: str) -> None:
        with self.session() as s:
            self._bundle(s, self._round(s, round_name), model).status = status

    def close_round(self, name: str) -> None:
        with self.session() as s:
            record = self._round(s, name)
            if record.status != "open":
                raise RegistryError(f"round {name!r} is {record.status} already.")
            record.status, record.closed_at = "closed", _now()

    def record_results(
        self,
        round_name: str,
        per_era: pd.DataFrame,
        payouts: pd.DataFrame,
        correlations: pd.DataFrame,
        reputation_rounds: int,
    ) -> pd.DataFrame:
        """Store a resolved round's results and pay, in one transaction.

        ``per_era``: long rows (model, target, era, metric, value). ``payouts``: per model
        ``corr``, ``mmc``, ``score``, ``payout``. Gains add to the stake and losses burn it (not
        below 0). Reputation: the mean payout score over the model's last
        ``reputation_rounds`` resolved rounds, this one included. Returns the payouts with
        stakes and reputation.
        """
        with self.session() as s:
            record = self._round(s, round_name)
            if record.status == "resolved":
                raise RegistryError(f"round {round_name!r} is resolved already.")
            if record.status == "open":
                record.status, record.closed_at = "closed", _now()
            models = {m.name: m for m in s.scalars(select(Model))}
            s.add_all(
                Score(
                    round_id=record.id,
                    model_id=models[row.model].id,
                    target=row.target,
                    era=row.era,
                    metric=row.metric,
                    value=_number(row.value),
                )
                for row in per_era.itertuples()
            )
            paid: dict[str, Payout] = {}
            for name, row in payouts.iterrows():
                model = models[str(name)]
                bundle = self._bundle(s, record, model.name)
                paid[model.name] = Payout(
                    round_id=record.id,
                    model_id=model.id,
                    stake=bundle.stake,
                    corr=_number(row["corr"]),
                    mmc=_number(row["mmc"]),
                    score=_number(row["score"]),
                    payout=float(row["payout"]),
                )
                s.add(paid[model.name])
                kind = "payout" if row["payout"] >= 0 else "burn"
                self._set_stake(s, model, model.stake + float(row["payout"]), kind, record.id)
            s.add_all(
                Correlation(round_id=record.id, first=str(a), second=str(b), value=_number(v))
                for (a, b), v in correlations.stack(dropna=False).items()
            )
            record.status, record.resolved_at = "resolved", _now()
            s.flush()
            out = []
            for name, payout in paid.items():
                payout.reputation = self._reputation(s, models[name], reputation_rounds)
                out.append(
                    {
                        "model": name,
                        "stake_after": models[name].stake,
                        "reputation": payout.reputation,
                    }
                )
        return pd.DataFrame(out).set_index("model")

    # --- reading results ----------------------------------------------------------------
    def payouts(self) -> pd.DataFrame:
        """Every resolved round's payouts: round, model, stake, corr, mmc, score, payout,
        reputation, in round order."""
        query = (
            select(
                Round.name.label("round"),
                Round.id.label("round_order"),
                Model.name.label("model"),
                Payout.stake,
                Payout.corr,
                Payout.mmc,
                Payout.score,
                Payout.payout,
                Payout.reputation,
            )
            .join(Round, Payout.round_id == Round.id)
            .join(Model, Payout.model_id == Model.id)
            .order_by(Round.id, Model.name)
        )
        return self._frame(query)

    def scores(self) -> pd.DataFrame:
        """Every per-era score: round, model, target, era, metric, value."""
        query = (
            select(
                Round.name.label("round"),
                Round.id.label("round_order"),
                Model.name.label("model"),
                Score.target,
                Score.era,
                Score.metric,
                Score.value,
            )
            .join(Round, Score.round_id == Round.id)
            .join(Model, Score.model_id == Model.id)
            .order_by(Round.id, Model.name, Score.era)
        )
        return self._frame(query)

    def correlations(self) -> pd.DataFrame:
        query = (
            select(
                Round.name.label("round"),
                Round.id.label("round_order"),
                Correlation.first,
                Correlation.second,
                Correlation.value,
            )
            .join(Round, Correlation.round_id == Round.id)
            .order_by(Round.id)
        )
        return self._frame(query)

    def stake_history(self) -> pd.DataFrame:
        query = (
            select(
                Model.name.label("model"),
                StakeEvent.kind,
                StakeEvent.amount,
                StakeEvent.balance,
                StakeEvent.at,
                Round.name.label("round"),
            )
            .join(Model, StakeEvent.model_id == Model.id)
            .outerjoin(Round, StakeEvent.round_id == Round.id)
            .order_by(StakeEvent.id)
        )
        return self._frame(query)

    # --- helpers ------------------------------------------------------------------------
    def _frame(self, query: Any) -> pd.DataFrame:
        with self.engine.connect() as connection:
            return pd.read_sql(query, connection)

    @staticmethod
    def _participant(s: Session, name: str) -> Participant:
        found = s.scalar(select(Participant).where(Participant.name == name))
        if found is None:
            raise RegistryError(
                f"participant {name!r} is not registered; see `fhe-toolkit fund add-participant`."
            )
        return found

    @staticmethod
    def _model(s: Session, name: str) -> Model:
        found = s.scalar(select(Model).where(Model.name == name))
        if found is None:
            raise RegistryError(
                f"model {name!r} is not registered; see `fhe-toolkit fund register`."
            )
        return found

    @staticmethod
    def _round(s: Session, name: str) -> Round:
        found = s.scalar(select(Round).where(Round.name == name))
        if found is None:
            raise RegistryError(f"round {name!r} was never opened.")
        return found

    def _bundle(self, s: Session, record: Round, model: str) -> Bundle:
        found = s.scalar(
            select(Bundle)
            .join(Model, Bundle.model_id == Model.id)
            .where(Bundle.round_id == record.id, Model.name == model)
        )
        if found is None:
            raise RegistryError(f"model {model!r} has no bundle in round {record.name!r}.")
        return found

    @staticmethod
    def _latest_version(s: Session, model_id: int) -> ModelVersion | None:
        return s.scalar(
            select(ModelVersion)
            .where(ModelVersion.model_id == model_id)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )

    @staticmethod
    def _set_stake(s: Session, model: Model, stake: float, kind: str, round_id: int | None) -> None:
        if not (stake == stake and abs(stake) != float("inf")):
            raise RegistryError(f"a stake must be a finite number, got {stake}.")
        if kind == "set" and stake < 0:
            raise RegistryError(f"a stake must be ≥ 0, got {stake}.")
        balance = max(stake, 0.0)
        if balance != model.stake or kind != "set":
            s.add(
                StakeEvent(
                    model_id=model.id,
                    round_id=round_id,
                    kind=kind,
                    amount=balance - model.stake,
                    balance=balance,
                    at=_now(),
                )
            )
        model.stake = balance

    @staticmethod
    def _reputation(s: Session, model: Model, rounds: int) -> float | None:
        recent = (
            select(Payout.score)
            .join(Round, Payout.round_id == Round.id)
            .where(Payout.model_id == model.id, Round.status == "resolved")
            .order_by(Round.resolved_at.desc(), Round.id.desc())
            .limit(rounds)
            .subquery()
        )
        value = s.scalar(select(func.avg(recent.c.score)))
        return None if value is None else float(value)


def _received_already(model: str, round_name: str) -> RegistryError:
    return RegistryError(
        f"a submission for model {model!r} in round {round_name!r} was received already; each "
        "model submits once per round."
    )


def _number(value: Any) -> float | None:
    number = float(value)
    return None if number != number else number


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes for what was stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
