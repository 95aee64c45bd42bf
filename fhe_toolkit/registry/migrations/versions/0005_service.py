"""The fund's service: the queue of uploaded submissions.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("service_uploads"):
        # Otherwise created, then cut off before the version was recorded (SQLite commits DDL).
        op.create_table(
            "service_uploads",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("upload_id", sa.String(32), nullable=False, unique=True),
            sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
            sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
            sa.Column(
                "participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False
            ),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("detail", sa.Text),
            sa.Column("manifest_sha256", sa.String(64), nullable=False),
            sa.Column("archive_sha256", sa.String(64), nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("queued_at", WHEN, nullable=False),
            sa.Column("started_at", WHEN),
            sa.Column("finished_at", WHEN),
        )


def downgrade() -> None:
    op.drop_table("service_uploads")
