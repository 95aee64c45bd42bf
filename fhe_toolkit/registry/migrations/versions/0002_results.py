"""Results: per-era scores, payouts with reputation, and the models' pairwise correlations.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def _round_and_model() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id"), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "scores",
        *_round_and_model(),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("era", sa.String(32), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("value", sa.Float),
        sa.UniqueConstraint("round_id", "model_id", "era", "metric"),
    )
    op.create_table(
        "payouts",
        *_round_and_model(),
        sa.Column("stake", sa.Float, nullable=False),
        sa.Column("corr", sa.Float),
        sa.Column("mmc", sa.Float),
        sa.Column("score", sa.Float),
        sa.Column("payout", sa.Float, nullable=False),
        sa.Column("reputation", sa.Float),
        sa.UniqueConstraint("round_id", "model_id"),
    )
    op.create_table(
        "correlations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("first", sa.String(64), nullable=False),
        sa.Column("second", sa.String(64), nullable=False),
        sa.Column("value", sa.Float),
        sa.UniqueConstraint("round_id", "first", "second"),
    )


def downgrade() -> None:
    for table in ("correlations", "payouts", "scores"):
        op.drop_table(table)
