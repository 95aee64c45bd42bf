"""Every exception the toolkit raises on purpose, in one hierarchy under :class:`FheToolkitError`.

Each message says what is wrong, why it matters when that is not obvious, and how to fix it.
Bad input subclasses ``ValueError`` (a wrong kind of object ``TypeError``) and work the runtime
could not do subclasses ``RuntimeError``, so callers that already catch those keep working. The
command line prints any :class:`FheToolkitError` as one line and exits with status 2.

Messages name the Python-level fix; the command line adds its own hints, so storage and
runtime errors never assume a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class FheToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""


# --- data and scoring ------------------------------------------------------------------------
class DataValidationError(FheToolkitError, ValueError):
    """A tournament data file or frame that does not follow the Numerai format."""


class ScoringInputError(FheToolkitError, ValueError):
    """Predictions, targets, features or stakes that cannot be scored as given."""


class ScoringTypeError(FheToolkitError, TypeError):
    """A scoring function got the wrong kind of object (e.g. a Series where a DataFrame goes)."""


# --- what crosses between fund and participant ---------------------------------------------
class SpecError(FheToolkitError, ValueError):
    """A model or training spec that cannot be registered or used, with the reason."""


class ManifestError(FheToolkitError, ValueError):
    """A bundle, submission or training artifact whose manifest or files do not check out."""


class IdentityError(FheToolkitError, ValueError):
    """A key file that cannot be used, or a signature that does not verify."""


# --- the FHE runtime ---------------------------------------------------------------------------
class KeyStoreError(FheToolkitError, ValueError):
    """A key set that does not exist, exists already, or was retired."""


class CheckpointError(FheToolkitError, ValueError):
    """A checkpoint that belongs to different work."""


class EngineError(FheToolkitError, RuntimeError):
    """FHE work that the worker processes could not do."""


class WorkerSetupError(EngineError):
    """Workers could not even start the task (e.g. the model or keys could not be loaded)."""


class RowFailedError(EngineError):
    """The task raised on an item."""


class WorkerCrashedError(EngineError):
    """The FHE runtime killed the worker on an item."""


class RowsCrashedError(EngineError):
    """Every row tried crashed the runtime: the inputs (keys, ciphertexts) do not fit the task.

    ``failures``: the rows tried, each with ``position`` and ``reason``.
    """

    def __init__(self, failures: Sequence[Any]) -> None:
        self.failures = list(failures)
        first = self.failures[0]
        super().__init__(
            f"the FHE runtime crashed on {len(self.failures)} row(s) in a row "
            f"(first: row {first.position}: {first.reason})"
        )


class PackedError(FheToolkitError, ValueError):
    """A packed-round input refused (parameters, keys, ciphertexts, weights or outputs)."""


class VerificationError(PackedError):
    """Decrypted outputs refused by :meth:`~fhe_toolkit.fhe.glwe.LinearVerifier.verify`.

    The message names the reason only and may be told to the participant. Which rows failed,
    and the decrypted values, stay in :attr:`detail` for the fund's own log: a participant who
    submits crafted ciphertexts would read key bits from them (see :mod:`fhe_toolkit.fhe.glwe`).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail


# --- the two roles and the fund's records ----------------------------------------------------
class ParticipantError(FheToolkitError, ValueError):
    """A participant-side step that cannot go ahead as asked."""


class RunError(FheToolkitError, RuntimeError):
    """Rows the FHE runtime could not process; finished rows stay in the checkpoint."""


class FundError(FheToolkitError, ValueError):
    """A fund operation refused, with the reason."""


class AnswerRefused(FundError):
    """A decrypted answer the fund refuses (raised inside the receive path, which records
    ``detail``, what the participant is told, retires the keys, and raises a
    :class:`FundError` with ``message``, why, for whoever runs the receive)."""

    def __init__(self, detail: str, message: str) -> None:
        super().__init__(message)
        self.detail, self.message = detail, message


class DryRunRefusal(FundError):
    """A check of a spec's dry run that failed, inside the dry run's worker process (its
    message says which)."""


class RegistryError(FheToolkitError, ValueError):
    """A record that does not exist, exists already, or cannot change as asked."""


class LeaderboardError(FheToolkitError, ValueError):
    """A leaderboard asked for in a way it cannot be given."""


class ReportError(FheToolkitError, ValueError):
    """A report that cannot be written (nothing to show yet, or an unwritable path)."""


# --- the fund's service ------------------------------------------------------------------------
class ServiceError(FheToolkitError, RuntimeError):
    """The fund's service refused a request, or could not be reached; the message says which
    and what to do. ``status`` is the HTTP status the service answers with (``None`` when it
    did not answer); ``headers`` go with that answer (e.g. ``Retry-After``)."""

    def __init__(
        self, message: str, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ArchiveError(FheToolkitError, ValueError):
    """An uploaded archive that is not a plain tar of regular files with plain names."""
