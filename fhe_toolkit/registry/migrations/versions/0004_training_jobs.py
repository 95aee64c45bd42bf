"""Encrypted training jobs, until now each in its own ``fund/training/<job>/job.json``.

Revision ID: 0004
Revises: 0003

A migration does not know where the fund directory is: ``FundTraining`` imports a job's
``job.json`` into this table the first time it finds one without a row. Downgrading drops the
table, and with it the jobs opened since (they have no ``job.json``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("training_jobs"):
        return  # created, then cut off before the version was recorded (SQLite commits DDL)
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id")),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("key_set_id", sa.String(32), nullable=False),
        sa.Column("spec_sha256", sa.String(64), nullable=False),
        sa.Column("bundle_sha256", sa.String(64), nullable=False),
        sa.Column("n_samples", sa.Integer, nullable=False),
        sa.Column("positive_share", sa.Float, nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("opened_at", WHEN, nullable=False),
        sa.Column("received_at", WHEN),
        sa.Column("result_sha256", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("training_jobs")
