"""The registry: participants and their signing keys, models, versions, stakes, rounds,
bundles and submissions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "participants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("stake", sa.Float, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("spec_sha256", sa.String(64), nullable=False),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("registered_at", WHEN, nullable=False),
        sa.UniqueConstraint("model_id", "version"),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_rows", sa.Integer, nullable=False),
        sa.Column("opened_at", WHEN, nullable=False),
        sa.Column("deadline", WHEN),
        sa.Column("closed_at", WHEN),
        sa.Column("resolved_at", WHEN),
    )
    op.create_table(
        "stake_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("balance", sa.Float, nullable=False),
        sa.Column("at", WHEN, nullable=False),
    )
    op.create_table(
        "bundles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
        sa.Column(
            "model_version_id", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False
        ),
        sa.Column("key_set_id", sa.String(32), nullable=False),
        sa.Column("bundle_sha256", sa.String(64), nullable=False),
        sa.Column("stake", sa.Float, nullable=False),
        sa.Column("batch_ids", sa.JSON, nullable=False),
        sa.Column("status", sa.String(128), nullable=False),
        sa.UniqueConstraint("round_id", "model_id"),
    )
    op.create_table(
        "submissions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "bundle_id", sa.Integer, sa.ForeignKey("bundles.id"), nullable=False, unique=True
        ),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("signed_by", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
        sa.Column("received_at", WHEN, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "submissions", "bundles", "stake_events", "rounds", "model_versions", "models",
        "participants",
    ):  # fmt: skip
        op.drop_table(table)
