"""The fund's records in a SQL database, with a versioned schema."""

from fhe_toolkit.registry.store import Registry, RegistryError, upgrade

__all__ = ["Registry", "RegistryError", "upgrade"]
