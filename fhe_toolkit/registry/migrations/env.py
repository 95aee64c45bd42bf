"""Alembic's entry point, run by :func:`fhe_toolkit.registry.store.upgrade` on a connection it
passes in (there is no alembic.ini: the database URL is the toolkit's to give)."""

from alembic import context

from fhe_toolkit.registry.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
