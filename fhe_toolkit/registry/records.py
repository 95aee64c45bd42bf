"""What the registry takes and hands out: frozen records, and the states a record can be in.

A status is a :class:`~enum.StrEnum` whose values are what the database stores (short, readable
words: ``open``, ``received``...). A message that goes with a status (why a submission was
refused, that its predictions were constant) is the record's separate ``detail``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class RoundStatus(StrEnum):
    """Where a round stands."""

    OPEN = "open"
    """Taking submissions (until it is closed or its deadline passes)."""
    CLOSED = "closed"
    """Taking no more submissions; waiting for its targets."""
    RESOLVED = "resolved"
    """Scored and paid."""


class SubmissionStatus(StrEnum):
    """Where a model's answer to a round stands: one per bundle the fund published."""

    AWAITING = "awaiting"
    """The bundle is out; no submission was accepted yet."""
    ACCEPTED = "accepted"
    """A submission was checked and recorded, and its copy is being kept. Nothing was decrypted:
    if the fund was cut off here, the next receive rolls it back to ``awaiting``."""
    DECRYPTING = "decrypting"
    """Its copy is kept and it is being decrypted. If the fund was cut off here, the next
    receive finishes it from the kept copy (the same ciphertexts, never another submission)."""
    RECEIVED = "received"
    """Decrypted and kept; ``detail`` may note something about it (constant predictions)."""
    REFUSED = "refused"
    """Decrypted but refused (``detail`` says why): the model has no score this round."""


class TrainingJobStatus(StrEnum):
    """Where an encrypted training job stands."""

    AWAITING = "awaiting"
    """The training bundle is out; no result was accepted yet."""
    ACCEPTED = "accepted"
    """A result was checked and recorded, and its copy is being kept (cut off here: rolled
    back by the next receive)."""
    DECRYPTING = "decrypting"
    """The result's copy is kept and it is being decrypted (cut off here: finished by the next
    receive, from the kept copy)."""
    DECRYPTED = "decrypted"
    """The weights are decrypted and written: return ``weights.json`` to the participant."""
    REFUSED = "refused"
    """The result was decrypted but refused (``detail`` says why); its keys are retired."""


@dataclass(frozen=True)
class NewBundle:
    """A bundle the fund encrypted for a model, to record with its round
    (:meth:`Registry.create_round`). It is recorded with the model's latest spec version and
    current stake."""

    model: str
    key_set_id: str
    bundle_sha256: str
    batch_ids: Sequence[Sequence[str]]
    """The live row ids each ciphertext holds, in order (the last batch may be short)."""


@dataclass(frozen=True)
class BundleRecord:
    """A model's bundle in a round, and where its submission stands."""

    model: str
    version: int
    """The model's spec version the round was opened with (it may have a newer one now)."""
    key_set_id: str
    spec_sha256: str
    spec_json: str
    bundle_sha256: str
    batch_ids: tuple[tuple[str, ...], ...]
    stake: float
    """The stake when the round opened: what the round pays on."""
    status: SubmissionStatus
    detail: str | None = None

    @property
    def n_batches(self) -> int:
        return len(self.batch_ids)

    @property
    def ids(self) -> list[str]:
        """Every live row id, in the order the batches hold them."""
        return [i for batch in self.batch_ids for i in batch]


@dataclass(frozen=True)
class RoundRecord:
    """A round: its state, and per model (by name) its bundle."""

    name: str
    status: RoundStatus
    n_rows: int
    opened_at: datetime
    deadline: datetime | None
    closed_at: datetime | None
    resolved_at: datetime | None
    bundles: Mapping[str, BundleRecord]


@dataclass(frozen=True)
class NewTrainingJob:
    """An encrypted training job the fund has just encrypted, to record
    (:meth:`Registry.open_training_job`)."""

    job_id: str
    name: str
    """The participant's name for the job (its training spec's ``name``)."""
    key_set_id: str
    spec_sha256: str
    bundle_sha256: str
    n_samples: int
    """The fund's labelled rows the batches are drawn from."""
    positive_share: float
    iterations: int
    participant: str | None = None
    """The registered participant the job is for, when the fund says so."""


@dataclass(frozen=True, kw_only=True)
class TrainingJobRecord(NewTrainingJob):
    """An encrypted training job as it was opened, and where it stands."""

    status: TrainingJobStatus
    detail: str | None
    opened_at: datetime
    received_at: datetime | None = None
    """When a result was accepted for decryption."""
    result_sha256: str | None = None
    """The accepted result's manifest hash (unknown for jobs imported from ``job.json``)."""


class UploadStatus(StrEnum):
    """Where a submission uploaded to the fund's service stands (its queue entry)."""

    QUEUED = "queued"
    """Checked (archive, manifest, hashes, owner's signature), kept, waiting for the worker."""
    DECRYPTING = "decrypting"
    """Taken by the worker, which runs the fund's receive path on it. If the worker was cut
    off here, the entry is taken again (up to the service's attempt limit)."""
    RECEIVED = "received"
    """Decrypted and kept by the fund; the bundle's status says the rest."""
    REFUSED = "refused"
    """The fund refused it (``detail`` says why)."""
    FAILED = "failed"
    """The service could not process it (``detail`` says why); nothing was decrypted, or the
    attempts ran out."""


@dataclass(frozen=True)
class UploadRecord:
    """A submission uploaded to the fund's service, and where it stands in the queue."""

    upload_id: str
    round: str
    model: str
    participant: str
    status: UploadStatus
    detail: str | None
    manifest_sha256: str
    """The uploaded submission's manifest hash: the same submission sent again is the same
    upload."""
    archive_sha256: str
    size: int
    """Bytes of the uploaded archive."""
    attempts: int
    """How many times the worker took it."""
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def pending(self) -> bool:
        """Whether the worker has yet to finish it."""
        return self.status in (UploadStatus.QUEUED, UploadStatus.DECRYPTING)
