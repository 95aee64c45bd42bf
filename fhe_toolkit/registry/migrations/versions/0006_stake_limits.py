"""Stakes within limits: a CHECK on ``models.stake`` and ``bundles.stake`` (0 to 1e15), and a
``settings`` table for the fund's settings (the cap on stakes).

Revision ID: 0006
Revises: 0005

Before, the database took any number as a stake (1.8e308, which no round can pay on). A
database holding a stake outside 0..1e15 stops the upgrade before any change, naming the
models and the SQL that fixes them, rather than having a value guessed for it. SQLite adds a
constraint by rebuilding the table (:func:`fhe_toolkit.registry.store.upgrade` turns foreign
keys off for that, and checks them all before committing); a rebuild cut off halfway left a
``_alembic_tmp_<table>`` that running the upgrade again clears.
"""

import sqlalchemy as sa
from alembic import op

from fhe_toolkit.errors import RegistryError

revision = "0006"
down_revision = "0005"

CEILING = "1000000000000000"
"""1e15, written out: :data:`fhe_toolkit.registry.stakes.STAKE_CEILING` when this was made."""
IN_RANGE = f"stake >= 0 AND stake <= {CEILING}"
TABLES = ("models", "bundles")


def upgrade() -> None:
    connection = op.get_bind()
    _refuse_stakes_out_of_range(connection)
    inspector = sa.inspect(connection)
    if not inspector.has_table("settings"):
        op.create_table(
            "settings",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.JSON, nullable=False),
        )
    for table in TABLES:
        if inspector.has_table(f"_alembic_tmp_{table}"):
            op.drop_table(f"_alembic_tmp_{table}")
        if f"ck_{table}_stake" in {c["name"] for c in inspector.get_check_constraints(table)}:
            continue
        with op.batch_alter_table(table) as batch:
            batch.create_check_constraint(f"ck_{table}_stake", IN_RANGE)


def _refuse_stakes_out_of_range(connection: sa.Connection) -> None:
    models = sa.table("models", sa.column("id"), sa.column("name"), sa.column("stake"))
    bundles = sa.table("bundles", sa.column("model_id"), sa.column("stake"))
    ceiling = sa.literal_column(CEILING)
    found = connection.execute(
        sa.union(
            sa.select(models.c.name, models.c.stake).where(
                ~sa.and_(models.c.stake >= 0, models.c.stake <= ceiling)
            ),
            sa.select(models.c.name, bundles.c.stake)
            .join(models, bundles.c.model_id == models.c.id)
            .where(~sa.and_(bundles.c.stake >= 0, bundles.c.stake <= ceiling)),
        )
    ).all()
    if found:
        names = ", ".join(f"'{name}'" for name in sorted({name for name, _ in found}))
        # Advice for the operator, never run here.
        fix = f"UPDATE models SET stake = 0 WHERE name IN ({names})"  # noqa: S608
        fix_bundles = "UPDATE bundles SET stake = 0 WHERE NOT (stake >= 0 AND stake <= 1e15)"
        raise RegistryError(
            f"the fund's database holds stakes outside 0..1e15, which no round can pay on: "
            f"{[(name, stake) for name, stake in found][:5]}. Set each to a stake the model "
            f"should have, e.g. {fix}; {fix_bundles}; then open the database again."
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"ck_{table}_stake", type_="check")
    op.drop_table("settings")
