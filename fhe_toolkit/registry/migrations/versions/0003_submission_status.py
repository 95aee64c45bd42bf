"""Submission statuses: a status word in ``bundles.status`` and the message that went with it
in a new ``bundles.detail`` column.

Revision ID: 0003
Revises: 0002

Before, the status was free text that doubled as a message. Each value the toolkit wrote maps
to a status and a detail:

===================================== ============ ==================================
before                                status       detail
===================================== ============ ==================================
awaiting submission                   awaiting
accepted: decrypting                  decrypting
received                              received
received: constant predictions        received     constant predictions
refused: outputs could not be ...     refused      outputs could not be decrypted
refused: non-finite predictions       refused      non-finite predictions
===================================== ============ ==================================

(any ``received: ...`` or ``refused: ...`` splits the same way). A value the toolkit never
wrote stops the upgrade before anything changes, naming it, rather than being guessed at. The
column keeps its width, so no table is rebuilt (SQLite would have to drop ``bundles``, which
``submissions`` refers to). SQLite commits DDL at once: were the upgrade cut off after adding
the column, running it again carries on.
"""

import sqlalchemy as sa
from alembic import op

from fhe_toolkit.errors import RegistryError

revision = "0003"
down_revision = "0002"

RENAMED = {"awaiting submission": "awaiting", "accepted: decrypting": "decrypting"}
WITH_DETAIL = ("received", "refused")
STATUSES = ("awaiting", "decrypting", "received", "refused")

bundles = sa.table(
    "bundles",
    sa.column("id", sa.Integer),
    sa.column("status", sa.String(128)),
    sa.column("detail", sa.Text),
)


def upgrade() -> None:
    connection = op.get_bind()
    known = [*RENAMED, *STATUSES]
    mapped = sa.or_(
        bundles.c.status.in_(known),
        *(bundles.c.status.startswith(f"{s}: ", autoescape=True) for s in WITH_DETAIL),
    )
    unknown = sorted(
        connection.execute(sa.select(bundles.c.status).where(~mapped).distinct()).scalars()
    )
    if unknown:
        raise RegistryError(
            f"bundles.status holds values no version of fhe_toolkit wrote: {unknown[:5]}; set "
            f"each to one of {list(RENAMED)} or '<status>: <message>' with a status in "
            f"{list(WITH_DETAIL)}, and open the database again."
        )
    if "detail" not in {c["name"] for c in sa.inspect(connection).get_columns("bundles")}:
        op.add_column("bundles", sa.Column("detail", sa.Text))
    for old, new in RENAMED.items():
        op.execute(bundles.update().where(bundles.c.status == old).values(status=new))
    for status in WITH_DETAIL:
        prefix = f"{status}: "
        # Both right-hand sides read the row as it was: the detail is cut from the old status.
        op.execute(
            bundles.update()
            .where(bundles.c.status.startswith(prefix, autoescape=True))
            .values(status=status, detail=sa.func.substr(bundles.c.status, len(prefix) + 1))
        )


def downgrade() -> None:
    # "accepted" (recorded, its copy being kept) came later; versions before 0003 knew it as
    # being decrypted, and took the same submission again in that state, as it should be.
    op.execute(bundles.update().where(bundles.c.status == "accepted").values(status="decrypting"))
    for old, new in RENAMED.items():
        op.execute(bundles.update().where(bundles.c.status == new).values(status=old))
    op.execute(
        bundles.update()
        .where(bundles.c.detail.is_not(None))
        .values(status=bundles.c.status + ": " + bundles.c.detail)
    )
    op.drop_column("bundles", "detail")
