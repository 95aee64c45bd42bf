"""The fund's records in a SQL database, with a versioned schema.

- :mod:`~fhe_toolkit.registry.store`: :class:`Registry`, the one way in
- :mod:`~fhe_toolkit.registry.records`: what it takes and hands out, and the statuses
- :mod:`~fhe_toolkit.registry.tables`: the tables (SQLAlchemy ORM, ``...Row`` classes)
"""

from fhe_toolkit.registry.records import (
    BundleRecord,
    NewBundle,
    NewTrainingJob,
    RoundRecord,
    RoundStatus,
    SubmissionStatus,
    TrainingJobRecord,
    TrainingJobStatus,
)
from fhe_toolkit.registry.store import Registry, upgrade

__all__ = [
    "BundleRecord",
    "NewBundle",
    "NewTrainingJob",
    "Registry",
    "RoundRecord",
    "RoundStatus",
    "SubmissionStatus",
    "TrainingJobRecord",
    "TrainingJobStatus",
    "upgrade",
]
