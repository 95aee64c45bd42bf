"""The fund's records as tables (SQLAlchemy 2.0). The migrations in ``migrations/versions``
build the same schema step by step; a test checks that the two agree.

Each ORM class is named for a row of its table, so that no name means two things: a
``BundleRow`` is a row of ``bundles``, not the bundle the fund publishes
(:mod:`fhe_toolkit.protocol.artifacts`) nor the ``BundleRecord`` the registry hands out
(:mod:`fhe_toolkit.registry.records`). Only the registry's store uses these classes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fhe_toolkit.registry.records import (
    RoundStatus,
    SubmissionStatus,
    TrainingJobStatus,
    UploadStatus,
)
from fhe_toolkit.registry.stakes import STAKE_CEILING


class Base(DeclarativeBase):
    pass


def stake_in_range(table: str) -> CheckConstraint:
    """The database's own refusal of a stake outside ``0..STAKE_CEILING`` (and of NaN)."""
    return CheckConstraint(
        f"stake >= 0 AND stake <= {int(STAKE_CEILING)}", name=f"ck_{table}_stake"
    )


def status_type(enum: type[StrEnum], length: int) -> Enum:
    """A status column: the enum's values as plain text (``VARCHAR(length)``; no database enum
    type and no CHECK constraint, so a new status needs no schema change)."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class ParticipantRow(Base):
    __tablename__ = "participants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    """Ed25519 public key (raw 32 bytes): verifies the participant's submissions."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (stake_in_range("models"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    target: Mapped[str] = mapped_column(String(128))
    stake: Mapped[float] = mapped_column(Float)
    """The current stake; its history is in ``stake_events``."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(64))
    spec_sha256: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SettingRow(Base):
    """One of the fund's settings, e.g. the cap on stakes (:mod:`fhe_toolkit.registry.stakes`)."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=False)


class StakeEventRow(Base):
    __tablename__ = "stake_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    kind: Mapped[str] = mapped_column(String(16))
    """``set`` (the participant's change), ``payout`` (a gain) or ``burn`` (a loss)."""
    amount: Mapped[float] = mapped_column(Float)
    balance: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RoundRow(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[RoundStatus] = mapped_column(status_type(RoundStatus, 16))
    n_rows: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BundleRow(Base):
    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("round_id", "model_id"), stake_in_range("bundles"))

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    key_set_id: Mapped[str] = mapped_column(String(32))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    stake: Mapped[float] = mapped_column(Float)
    """The stake when the round opened: what the round pays on."""
    batch_ids: Mapped[list[list[str]]] = mapped_column(JSON)
    status: Mapped[SubmissionStatus] = mapped_column(status_type(SubmissionStatus, 128))
    """Where the model's submission stands (the column is as wide as when it held messages)."""
    detail: Mapped[str | None] = mapped_column(Text)
    """What goes with the status, e.g. why the submission was refused."""


class SubmissionRow(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id"), unique=True)
    """One submission per bundle: a duplicate breaks this constraint, whatever the code does."""
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    signed_by: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ScoreRow(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("round_id", "model_id", "era", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    target: Mapped[str] = mapped_column(String(128))
    era: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)


class PayoutRow(Base):
    __tablename__ = "payouts"
    __table_args__ = (UniqueConstraint("round_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    stake: Mapped[float] = mapped_column(Float)
    corr: Mapped[float | None] = mapped_column(Float)
    mmc: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    """The payout score, ``w_corr·CORR + w_mmc·MMC``: what reputation averages."""
    payout: Mapped[float] = mapped_column(Float)
    reputation: Mapped[float | None] = mapped_column(Float)


class CorrelationRow(Base):
    __tablename__ = "correlations"
    __table_args__ = (UniqueConstraint("round_id", "first", "second"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    first: Mapped[str] = mapped_column(String(64))
    second: Mapped[str] = mapped_column(String(64))
    """Model names, or ``meta_model``: the round's pairwise prediction correlations."""
    value: Mapped[float | None] = mapped_column(Float)


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    """The participant's name for the job (its training spec's ``name``)."""
    participant_id: Mapped[int | None] = mapped_column(ForeignKey("participants.id"))
    status: Mapped[TrainingJobStatus] = mapped_column(status_type(TrainingJobStatus, 16))
    detail: Mapped[str | None] = mapped_column(Text)
    key_set_id: Mapped[str] = mapped_column(String(32))
    spec_sha256: Mapped[str] = mapped_column(String(64))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    positive_share: Mapped[float] = mapped_column(Float)
    iterations: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_sha256: Mapped[str | None] = mapped_column(String(64))


class ServiceUploadRow(Base):
    """A submission uploaded to the fund's service: the decryption queue
    (:mod:`fhe_toolkit.service`)."""

    __tablename__ = "service_uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(32), unique=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    status: Mapped[UploadStatus] = mapped_column(status_type(UploadStatus, 16))
    detail: Mapped[str | None] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    archive_sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
