"""The fund's records in a SQL database: SQLite by default, any SQLAlchemy URL (PostgreSQL) too.

Opening a database brings its schema to the current version first (Alembic migrations in
``migrations/versions``), so an older database is upgraded in place and keeps its data. Every
method is one transaction: it happens whole or not at all, whatever kills the process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, delete, event, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from fhe_toolkit.errors import RegistryError
from fhe_toolkit.registry.records import (
    BundleRecord,
    NewBundle,
    NewTrainingJob,
    RoundRecord,
    RoundStatus,
    SubmissionStatus,
    TrainingJobRecord,
    TrainingJobStatus,
    UploadRecord,
    UploadStatus,
)
from fhe_toolkit.registry.stakes import (
    DEFAULT_MAX_STAKE,
    MAX_STAKE_SETTING,
    check_cap,
    check_stake,
)
from fhe_toolkit.registry.tables import (
    BundleRow,
    CorrelationRow,
    ModelRow,
    ModelVersionRow,
    ParticipantRow,
    PayoutRow,
    RoundRow,
    ScoreRow,
    ServiceUploadRow,
    SettingRow,
    StakeEventRow,
    SubmissionRow,
    TrainingJobRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def migrations_config(connection: Any = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database's schema to ``revision`` (the newest by default), keeping its data."""
    with schema_change(engine) as connection:
        command.upgrade(migrations_config(connection), revision)


@contextmanager
def schema_change(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for migrations (Alembic's ``command.upgrade`` or
    ``downgrade``). On SQLite, foreign keys are off until it ends and checked before it commits:
    SQLite adds a constraint by rebuilding the table, and dropping a table others refer to
    breaks their references for a moment (SQLite's documented procedure; the pragma only
    takes effect outside a transaction)."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                yield connection
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RegistryError(
                        "changing the fund's database schema would break references between its "
                        "tables; nothing was changed. Restore it from a backup."
                    )
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def connect(url: str) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys enforced, as other databases do."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


class Registry:
    """Participants, models, stakes, rounds, submissions, scores, payouts and encrypted
    training jobs. What it hands out and takes are the records of
    :mod:`fhe_toolkit.registry.records`, or data frames for tables of results."""

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
            known = s.scalar(select(ParticipantRow).where(ParticipantRow.name == name))
            if known is not None:
                if known.public_key == public_key:
                    return
                raise RegistryError(
                    f"participant {name!r} is registered with another public key; a participant "
                    "keeps its identity (register a new name for a new key)."
                )
            s.add(ParticipantRow(name=name, public_key=public_key, created_at=_now()))

    def participant_keys(self) -> dict[str, bytes]:
        with self.session() as s:
            return {p.name: p.public_key for p in s.scalars(select(ParticipantRow))}

    def owner(self, model: str) -> str:
        """The name of the participant who owns ``model``."""
        with self.session() as s:
            found = self._model(s, model)
            return s.get_one(ParticipantRow, found.participant_id).name

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
            model = s.scalar(select(ModelRow).where(ModelRow.name == name))
            if model is None:
                model = ModelRow(
                    name=name,
                    participant_id=owner.id,
                    target=target,
                    stake=0.0,
                    created_at=_now(),
                )
                s.add(model)
                s.flush()
            elif model.participant_id != owner.id:
                raise RegistryError(
                    f"model {name!r} belongs to another participant; model names are unique in "
                    "the tournament: register yours under another name."
                )
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
                    ModelVersionRow(
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

    # --- the fund's settings ------------------------------------------------------------
    def max_stake(self) -> float:
        """The cap on one model's stake (:data:`~fhe_toolkit.registry.stakes.DEFAULT_MAX_STAKE`
        until set)."""
        with self.session() as s:
            return self._max_stake(s)

    def check_stake(self, stake: object) -> float:
        """``stake`` if it is one this fund takes (finite, ≥ 0, within its cap); refused with the
        reason otherwise."""
        return check_stake(stake, self.max_stake())

    def set_max_stake(self, cap: float) -> None:
        """Set the cap on one model's stake; refused below a stake the fund holds now."""
        with self.session() as s:
            largest = s.scalar(select(func.max(ModelRow.stake))) or 0.0
            value = check_cap(cap, largest)
            found = s.get(SettingRow, MAX_STAKE_SETTING)
            if found is None:
                s.add(SettingRow(name=MAX_STAKE_SETTING, value=value))
            else:
                found.value = value

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
            for model in s.scalars(select(ModelRow).order_by(ModelRow.name)):
                latest = self._latest_version(s, model.id)
                rows.append(
                    {
                        "model": model.name,
                        "participant": s.get_one(ParticipantRow, model.participant_id).name,
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
        self, name: str, n_rows: int, deadline: datetime | None, bundles: Sequence[NewBundle]
    ) -> None:
        """Record an opened round and its bundles; each bundle keeps its model's latest spec
        version and current stake, and awaits its submission."""
        with self.session() as s:
            if s.scalar(select(RoundRow).where(RoundRow.name == name)) is not None:
                raise RegistryError(f"round {name!r} exists already.")
            record = RoundRow(
                name=name,
                status=RoundStatus.OPEN,
                n_rows=n_rows,
                opened_at=_now(),
                deadline=deadline,
            )
            s.add(record)
            s.flush()
            for bundle in bundles:
                model = self._model(s, bundle.model)
                latest = self._latest_version(s, model.id)
                if latest is None:
                    raise RegistryError(f"model {model.name!r} has no registered spec.")
                s.add(
                    BundleRow(
                        round_id=record.id,
                        model_id=model.id,
                        model_version_id=latest.id,
                        key_set_id=bundle.key_set_id,
                        bundle_sha256=bundle.bundle_sha256,
                        stake=model.stake,
                        batch_ids=[list(batch) for batch in bundle.batch_ids],
                        status=SubmissionStatus.AWAITING,
                    )
                )

    def has_round(self, name: str) -> bool:
        with self.session() as s:
            return s.scalar(select(RoundRow).where(RoundRow.name == name)) is not None

    def round_record(self, name: str) -> RoundRecord:
        """The round's state, and per model its bundle: spec version, key set, hashes, stake,
        where its submission stands."""
        with self.session() as s:
            record = self._round(s, name)
            bundles = {
                model.name: _as_record(
                    BundleRecord,
                    bundle,
                    model=model.name,
                    version=version.version,
                    spec_sha256=version.spec_sha256,
                    spec_json=version.spec_json,
                    batch_ids=tuple(tuple(batch) for batch in bundle.batch_ids),
                )
                for bundle, model, version in s.execute(
                    select(BundleRow, ModelRow, ModelVersionRow)
                    .join(ModelRow, BundleRow.model_id == ModelRow.id)
                    .join(ModelVersionRow, BundleRow.model_version_id == ModelVersionRow.id)
                    .where(BundleRow.round_id == record.id)
                    .order_by(ModelRow.name)
                )
            }
            return _as_record(RoundRecord, record, bundles=bundles)

    def rounds(self) -> pd.DataFrame:
        with self.session() as s:
            rows = [
                {
                    "round": r.name,
                    "status": r.status.value,
                    "rows": r.n_rows,
                    "opened_at": r.opened_at,
                    "deadline": r.deadline,
                    "resolved_at": r.resolved_at,
                }
                for r in s.scalars(select(RoundRow).order_by(RoundRow.id))
            ]
        return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()

    def accept_submission(
        self, round_name: str, model: str, manifest_sha256: str, signer: str
    ) -> None:
        """Record a submission before its copy is kept and it is decrypted (its bundle is then
        :attr:`~SubmissionStatus.ACCEPTED`); refuse a second one for the bundle, or one after
        the round closed or its deadline passed."""
        with self.session() as s:
            record = self._round(s, round_name)
            bundle = self._bundle(s, record, model)
            earlier = s.scalar(select(SubmissionRow).where(SubmissionRow.bundle_id == bundle.id))
            if earlier is not None or bundle.status != SubmissionStatus.AWAITING:
                raise _received_already(model, round_name)
            if record.status != RoundStatus.OPEN:
                raise RegistryError(
                    f"round {round_name!r} is {record.status}: it takes no more submissions."
                )
            if record.deadline is not None and _now() > _aware(record.deadline):
                raise RegistryError(
                    f"round {round_name!r} stopped taking submissions at {record.deadline}."
                )
            s.add(
                SubmissionRow(
                    bundle_id=bundle.id,
                    manifest_sha256=manifest_sha256,
                    signed_by=self._participant(s, signer).id,
                    received_at=_now(),
                )
            )
            bundle.status, bundle.detail = SubmissionStatus.ACCEPTED, None
            try:
                s.flush()
            except IntegrityError:  # the same submission, received at the same moment
                raise _received_already(model, round_name) from None

    def roll_back_submission(self, round_name: str, model: str) -> None:
        """Forget a submission accepted but never decrypted (the fund was cut off while keeping
        its copy): the bundle awaits a submission again."""
        with self.session() as s:
            bundle = self._bundle(s, self._round(s, round_name), model)
            if bundle.status != SubmissionStatus.ACCEPTED:
                raise RegistryError(
                    f"model {model!r}'s submission to round {round_name!r} is {bundle.status}; "
                    "only one still being kept (accepted) can be rolled back."
                )
            s.execute(delete(SubmissionRow).where(SubmissionRow.bundle_id == bundle.id))
            bundle.status, bundle.detail = SubmissionStatus.AWAITING, None

    def accepted_submission(self, round_name: str, model: str) -> str | None:
        """The manifest hash of the submission the fund accepted for ``model`` in the round,
        if any."""
        with self.session() as s:
            bundle = self._bundle(s, self._round(s, round_name), model)
            return s.scalar(
                select(SubmissionRow.manifest_sha256).where(SubmissionRow.bundle_id == bundle.id)
            )

    def set_submission_status(
        self, round_name: str, model: str, status: SubmissionStatus, detail: str | None = None
    ) -> None:
        """Record where ``model``'s submission to the round stands, with an optional message
        (``detail``) that goes with it."""
        with self.session() as s:
            bundle = self._bundle(s, self._round(s, round_name), model)
            bundle.status, bundle.detail = SubmissionStatus(status), detail

    def close_round(self, name: str) -> None:
        with self.session() as s:
            record = self._round(s, name)
            if record.status != RoundStatus.OPEN:
                raise RegistryError(f"round {name!r} is {record.status} already.")
            record.status, record.closed_at = RoundStatus.CLOSED, _now()

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
        ``corr``, ``mmc``, ``score``, ``payout``. Gains add to the stake (not beyond the fund's
        cap) and losses burn it (not below 0). Reputation: the mean payout score over the
        model's last ``reputation_rounds`` resolved rounds, this one included. Returns per model
        ``stake_after``, ``beyond_cap`` (the part of a gain the cap kept out of the stake) and
        ``reputation``.
        """
        with self.session() as s:
            record = self._round(s, round_name)
            if record.status == RoundStatus.RESOLVED:
                raise RegistryError(f"round {round_name!r} is resolved already.")
            if record.status == RoundStatus.OPEN:
                record.status, record.closed_at = RoundStatus.CLOSED, _now()
            models = {m.name: m for m in s.scalars(select(ModelRow))}
            s.add_all(
                ScoreRow(
                    round_id=record.id,
                    model_id=models[row.model].id,
                    target=row.target,
                    era=row.era,
                    metric=row.metric,
                    value=_number(row.value),
                )
                for row in per_era.itertuples()
            )
            paid: dict[str, PayoutRow] = {}
            beyond_cap: dict[str, float] = {}
            for name, row in payouts.iterrows():
                model = models[str(name)]
                bundle = self._bundle(s, record, model.name)
                paid[model.name] = PayoutRow(
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
                wanted = model.stake + float(row["payout"])
                self._set_stake(s, model, wanted, kind, record.id)
                beyond_cap[model.name] = max(wanted - model.stake, 0.0)
            s.add_all(
                CorrelationRow(round_id=record.id, first=str(a), second=str(b), value=_number(v))
                for (a, b), v in correlations.stack(dropna=False).items()
            )
            record.status, record.resolved_at = RoundStatus.RESOLVED, _now()
            s.flush()
            out = []
            for name, payout in paid.items():
                payout.reputation = self._reputation(s, models[name], reputation_rounds)
                out.append(
                    {
                        "model": name,
                        "stake_after": models[name].stake,
                        "beyond_cap": beyond_cap[name],
                        "reputation": payout.reputation,
                    }
                )
        return pd.DataFrame(out).set_index("model")

    # --- encrypted training jobs --------------------------------------------------------
    def has_training_job(self, job_id: str) -> bool:
        with self.session() as s:
            return self._find_job(s, job_id) is not None

    def open_training_job(self, job: NewTrainingJob) -> None:
        """Record a training job whose bundle was just encrypted: it awaits its result."""
        record = TrainingJobRecord(
            **asdict(job), status=TrainingJobStatus.AWAITING, detail=None, opened_at=_now()
        )
        with self.session() as s:
            if self._find_job(s, job.job_id) is not None:
                raise RegistryError(f"training job {job.job_id!r} exists already.")
            self._add_training_job(s, record)

    def import_training_job(self, job: TrainingJobRecord) -> bool:
        """Record a job as it stands (one opened before jobs were kept here); a job recorded
        already is left as it is. Returns whether it was recorded now."""
        with self.session() as s:
            if self._find_job(s, job.job_id) is not None:
                return False
            self._add_training_job(s, job)
            return True

    def training_job(self, job_id: str) -> TrainingJobRecord:
        with self.session() as s:
            found = self._job(s, job_id)
            owner = (
                None
                if found.participant_id is None
                else s.get_one(ParticipantRow, found.participant_id).name
            )
            return _as_record(TrainingJobRecord, found, participant=owner)

    def accept_training_result(self, job_id: str, result_sha256: str) -> None:
        """Record a job's result before its copy is kept and it is decrypted (the job is then
        :attr:`~TrainingJobStatus.ACCEPTED`); refuse a second one."""
        with self.session() as s:
            job = self._job(s, job_id)
            if job.status != TrainingJobStatus.AWAITING:
                raise RegistryError(f"the result of training job {job_id!r} was received already.")
            job.status, job.detail = TrainingJobStatus.ACCEPTED, None
            job.received_at, job.result_sha256 = _now(), result_sha256

    def roll_back_training_result(self, job_id: str) -> None:
        """Forget a result accepted but never decrypted (the fund was cut off while keeping its
        copy): the job awaits a result again."""
        with self.session() as s:
            job = self._job(s, job_id)
            if job.status != TrainingJobStatus.ACCEPTED:
                raise RegistryError(
                    f"training job {job_id!r} is {job.status}; only a result still being kept "
                    "(accepted) can be rolled back."
                )
            job.status, job.detail = TrainingJobStatus.AWAITING, None
            job.received_at, job.result_sha256 = None, None

    def set_training_status(
        self, job_id: str, status: TrainingJobStatus, detail: str | None = None
    ) -> None:
        """Record where the training job stands, with an optional message (``detail``)."""
        with self.session() as s:
            job = self._job(s, job_id)
            job.status, job.detail = TrainingJobStatus(status), detail

    def _add_training_job(self, s: Session, job: TrainingJobRecord) -> None:
        columns = asdict(job)
        owner = columns.pop("participant")
        columns["participant_id"] = None if owner is None else self._participant(s, owner).id
        columns["status"] = TrainingJobStatus(job.status)
        s.add(TrainingJobRow(**columns))
        try:
            s.flush()
        except IntegrityError:  # recorded at the same moment by another process
            raise RegistryError(f"training job {job.job_id!r} exists already.") from None

    # --- reading results ----------------------------------------------------------------
    def payouts(self) -> pd.DataFrame:
        """Every resolved round's payouts: round, model, stake, corr, mmc, score, payout,
        reputation, in round order."""
        return self._per_round(
            PayoutRow,
            PayoutRow.stake,
            PayoutRow.corr,
            PayoutRow.mmc,
            PayoutRow.score,
            PayoutRow.payout,
            PayoutRow.reputation,
        )

    def scores(self) -> pd.DataFrame:
        """Every per-era score: round, model, target, era, metric, value."""
        return self._per_round(
            ScoreRow, ScoreRow.target, ScoreRow.era, ScoreRow.metric, ScoreRow.value,
            then=ScoreRow.era,
        )  # fmt: skip

    def correlations(self) -> pd.DataFrame:
        """Every resolved round's pairwise prediction correlations: round, first, second,
        value."""
        return self._per_round(
            CorrelationRow, CorrelationRow.first, CorrelationRow.second, CorrelationRow.value,
            per_model=False,
        )  # fmt: skip

    def stake_history(self) -> pd.DataFrame:
        query = (
            select(
                ModelRow.name.label("model"),
                StakeEventRow.kind,
                StakeEventRow.amount,
                StakeEventRow.balance,
                StakeEventRow.at,
                RoundRow.name.label("round"),
            )
            .join(ModelRow, StakeEventRow.model_id == ModelRow.id)
            .outerjoin(RoundRow, StakeEventRow.round_id == RoundRow.id)
            .order_by(StakeEventRow.id)
        )
        return self._frame(query)

    # --- helpers ------------------------------------------------------------------------
    def _per_round(
        self, table: Any, *columns: Any, per_model: bool = True, then: Any = None
    ) -> pd.DataFrame:
        """``columns`` of ``table``'s rows, after their round's name (``round``, and
        ``round_order``: rounds in the order they opened) and, ``per_model``, their model's
        name; in round order, then model, then ``then``."""
        query = select(RoundRow.name.label("round"), RoundRow.id.label("round_order"))
        query = query.join_from(table, RoundRow, table.round_id == RoundRow.id)
        order: list[Any] = [RoundRow.id]
        if per_model:
            query = query.add_columns(ModelRow.name.label("model"))
            query = query.join(ModelRow, table.model_id == ModelRow.id)
            order.append(ModelRow.name)
        if then is not None:
            order.append(then)
        return self._frame(query.add_columns(*columns).order_by(*order))

    def _frame(self, query: Any) -> pd.DataFrame:
        with self.engine.connect() as connection:
            return pd.read_sql(query, connection)

    @staticmethod
    def _participant(s: Session, name: str) -> ParticipantRow:
        return _one(
            s, select(ParticipantRow).where(ParticipantRow.name == name),
            f"participant {name!r} is not registered; see `fhe-toolkit fund add-participant`.",
        )  # fmt: skip

    @staticmethod
    def _model(s: Session, name: str) -> ModelRow:
        return _one(
            s, select(ModelRow).where(ModelRow.name == name),
            f"model {name!r} is not registered; see `fhe-toolkit fund register`.",
        )  # fmt: skip

    @staticmethod
    def _round(s: Session, name: str) -> RoundRow:
        return _one(
            s, select(RoundRow).where(RoundRow.name == name), f"round {name!r} was never opened."
        )

    @staticmethod
    def _find_job(s: Session, job_id: str) -> TrainingJobRow | None:
        return s.scalar(select(TrainingJobRow).where(TrainingJobRow.job_id == job_id))

    @staticmethod
    def _job(s: Session, job_id: str) -> TrainingJobRow:
        return _one(
            s, select(TrainingJobRow).where(TrainingJobRow.job_id == job_id),
            f"training job {job_id!r} was never opened.",
        )  # fmt: skip

    @staticmethod
    def _bundle(s: Session, record: RoundRow, model: str) -> BundleRow:
        return _one(
            s,
            select(BundleRow)
            .join(ModelRow, BundleRow.model_id == ModelRow.id)
            .where(BundleRow.round_id == record.id, ModelRow.name == model),
            f"model {model!r} has no bundle in round {record.name!r}.",
        )

    @staticmethod
    def _latest_version(s: Session, model_id: int) -> ModelVersionRow | None:
        return s.scalar(
            select(ModelVersionRow)
            .where(ModelVersionRow.model_id == model_id)
            .order_by(ModelVersionRow.version.desc())
            .limit(1)
        )

    @staticmethod
    def _max_stake(s: Session) -> float:
        found = s.get(SettingRow, MAX_STAKE_SETTING)
        return DEFAULT_MAX_STAKE if found is None else float(found.value)

    @staticmethod
    def _set_stake(
        s: Session, model: ModelRow, stake: float, kind: str, round_id: int | None
    ) -> None:
        """Set a model's stake: ``set`` by its owner (checked, refused outside the limits), or
        after a ``payout`` or ``burn`` (kept within them: a loss stops at 0, a gain at the
        fund's cap; the payout's record keeps what was earned)."""
        cap = Registry._max_stake(s)
        if kind == "set":
            balance = check_stake(stake, cap)
        elif not math.isfinite(stake):
            raise RegistryError(
                f"a payout would leave the stake of model {model.name!r} at {stake}; nothing was "
                "paid."
            )
        else:
            balance = min(max(stake, 0.0), cap)
        if balance != model.stake or kind != "set":
            s.add(
                StakeEventRow(
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
    def _reputation(s: Session, model: ModelRow, rounds: int) -> float | None:
        recent = (
            select(PayoutRow.score)
            .join(RoundRow, PayoutRow.round_id == RoundRow.id)
            .where(PayoutRow.model_id == model.id, RoundRow.status == RoundStatus.RESOLVED)
            .order_by(RoundRow.resolved_at.desc(), RoundRow.id.desc())
            .limit(rounds)
            .subquery()
        )
        value = s.scalar(select(func.avg(recent.c.score)))
        return None if value is None else float(value)


def _one(s: Session, query: Any, missing: str) -> Any:
    """The one row ``query`` selects; :class:`RegistryError` saying ``missing`` if none."""
    found = s.scalar(query)
    if found is None:
        raise RegistryError(missing)
    return found


Record = TypeVar("Record")


def _as_record(kind: type[Record], row: Any, **given: Any) -> Record:
    """A ``kind`` record: ``given``, and for its other fields the row's columns of the same
    names, times in UTC."""
    names = [f.name for f in fields(kind) if f.name not in given]  # type: ignore[arg-type]
    return kind(**{name: _utc(getattr(row, name)) for name in names}, **given)


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


def _utc(value: Any) -> Any:
    """``value``, made aware if it is a naive datetime (see :func:`_aware`)."""
    return _aware(value) if isinstance(value, datetime) else value


class ServiceStore:
    """The fund service's records beside the registry's, in the same database: the queue of
    uploaded submissions (:mod:`fhe_toolkit.service`). Every method is one transaction."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # --- the upload queue ---------------------------------------------------------------
    def enqueue(
        self,
        upload_id: str,
        round_name: str,
        model: str,
        participant: str,
        *,
        manifest_sha256: str,
        archive_sha256: str,
        size: int,
    ) -> UploadRecord:
        """Queue a checked upload for decryption; refused while another upload for the same
        model and round waits or is being decrypted."""
        with self.registry.session() as s:
            record = Registry._round(s, round_name)
            found = Registry._model(s, model)
            pending = s.scalar(
                select(ServiceUploadRow).where(
                    ServiceUploadRow.round_id == record.id,
                    ServiceUploadRow.model_id == found.id,
                    ServiceUploadRow.status.in_([UploadStatus.QUEUED, UploadStatus.DECRYPTING]),
                )
            )
            if pending is not None:
                raise RegistryError(
                    f"an upload for model {model!r} in round {round_name!r} is "
                    f"{pending.status} already ({pending.upload_id})."
                )
            row = ServiceUploadRow(
                upload_id=upload_id,
                round_id=record.id,
                model_id=found.id,
                participant_id=Registry._participant(s, participant).id,
                status=UploadStatus.QUEUED,
                manifest_sha256=manifest_sha256,
                archive_sha256=archive_sha256,
                size=size,
                attempts=0,
                queued_at=_now(),
            )
            s.add(row)
            s.flush()
            return self._record(s, row)

    def upload(self, upload_id: str) -> UploadRecord:
        with self.registry.session() as s:
            return self._record(s, self._upload(s, upload_id))

    def uploads(
        self,
        *,
        participant: str | None = None,
        round_name: str | None = None,
        model: str | None = None,
    ) -> list[UploadRecord]:
        """Uploads, oldest first, optionally only a participant's, a round's or a model's."""
        with self.registry.session() as s:
            query = select(ServiceUploadRow).order_by(ServiceUploadRow.id)
            if participant is not None:
                query = query.where(
                    ServiceUploadRow.participant_id == Registry._participant(s, participant).id
                )
            if round_name is not None:
                query = query.where(ServiceUploadRow.round_id == Registry._round(s, round_name).id)
            if model is not None:
                query = query.where(ServiceUploadRow.model_id == Registry._model(s, model).id)
            return [self._record(s, row) for row in s.scalars(query)]

    def claim_next(self, max_attempts: int) -> UploadRecord | None:
        """The next upload to decrypt, marked as being decrypted: first one whose decryption
        was cut off (its worker died), then the oldest queued. One cut off ``max_attempts``
        times already is marked failed instead."""
        with self.registry.session() as s:
            while True:
                row = next(
                    (
                        found
                        for status in (UploadStatus.DECRYPTING, UploadStatus.QUEUED)
                        if (found := self._oldest(s, status)) is not None
                    ),
                    None,
                )
                if row is None:
                    return None
                if row.attempts >= max_attempts:
                    row.status, row.finished_at = UploadStatus.FAILED, _now()
                    row.detail = (
                        f"its decryption was cut off {row.attempts} time(s) (the worker died); "
                        "the fund's operator has been left the files."
                    )
                    s.flush()
                    continue
                row.status, row.attempts, row.started_at = (
                    UploadStatus.DECRYPTING, row.attempts + 1, _now(),
                )  # fmt: skip
                s.flush()
                return self._record(s, row)

    def finish(self, upload_id: str, status: UploadStatus, detail: str | None = None) -> None:
        """Record how the worker finished with an upload."""
        with self.registry.session() as s:
            row = self._upload(s, upload_id)
            row.status, row.detail, row.finished_at = UploadStatus(status), detail, _now()

    @staticmethod
    def _upload(s: Session, upload_id: str) -> ServiceUploadRow:
        return _one(
            s,
            select(ServiceUploadRow).where(ServiceUploadRow.upload_id == upload_id),
            f"no upload {upload_id!r}.",
        )

    @staticmethod
    def _oldest(s: Session, status: UploadStatus) -> ServiceUploadRow | None:
        return s.scalar(
            select(ServiceUploadRow)
            .where(ServiceUploadRow.status == status)
            .order_by(ServiceUploadRow.id)
            .limit(1)
        )

    @staticmethod
    def _record(s: Session, row: ServiceUploadRow) -> UploadRecord:
        return _as_record(
            UploadRecord,
            row,
            round=s.get_one(RoundRow, row.round_id).name,
            model=s.get_one(ModelRow, row.model_id).name,
            participant=s.get_one(ParticipantRow, row.participant_id).name,
        )
