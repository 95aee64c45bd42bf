"""The fund's records as tables (SQLAlchemy 2.0). The migrations in ``migrations/versions``
build the same schema step by step; a test checks that the two agree."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    """Ed25519 public key (raw 32 bytes): verifies the participant's submissions."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    target: Mapped[str] = mapped_column(String(128))
    stake: Mapped[float] = mapped_column(Float)
    """The current stake; its history is in ``stake_events``."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(64))
    spec_sha256: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StakeEvent(Base):
    __tablename__ = "stake_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    kind: Mapped[str] = mapped_column(String(16))
    """``set`` (the participant's change), ``payout`` (a gain) or ``burn`` (a loss)."""
    amount: Mapped[float] = mapped_column(Float)
    balance: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Round(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    """``open`` (taking submissions), ``closed`` (waiting for targets) or ``resolved``."""
    n_rows: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Bundle(Base):
    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("round_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    key_set_id: Mapped[str] = mapped_column(String(32))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    stake: Mapped[float] = mapped_column(Float)
    """The stake when the round opened: what the round pays on."""
    batch_ids: Mapped[list[list[str]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(128))


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id"), unique=True)
    """One submission per bundle: a duplicate breaks this constraint, whatever the code does."""
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    signed_by: Mapped[int] = mapped_column(ForeignKey("participants.id"))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Score(Base):
    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("round_id", "model_id", "era", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    target: Mapped[str] = mapped_column(String(128))
    era: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)


class Payout(Base):
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


class Correlation(Base):
    __tablename__ = "correlations"
    __table_args__ = (UniqueConstraint("round_id", "first", "second"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    first: Mapped[str] = mapped_column(String(64))
    second: Mapped[str] = mapped_column(String(64))
    """Model names, or ``meta_model``: the round's pairwise prediction correlations."""
    value: Mapped[float | None] = mapped_column(Float)
