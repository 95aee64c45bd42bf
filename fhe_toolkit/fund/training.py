"""The fund's side of encrypted training: encrypt a job's batches and starting weights under fresh
keys, then decrypt the trained weights once and hand them back.

A job's record (spec hash, key set, bundle hash, rows, steps, status) is in the fund's registry,
next to its rounds. A fund directory's training jobs::

    fund/training/<job>/
      training_spec.json     the participant's validated training spec
      bundle/                published to the participant (see fhe_toolkit.protocol.artifacts)
      result/                the encrypted result, kept as sent
      weights.json           the decrypted weights: return this file to the participant

Jobs opened by earlier versions kept their record in ``training/<job>/job.json``: the first
:class:`FundTraining` that finds one without a record imports it into the registry, which keeps
it from then on (the file is left as it was, and no longer read).

Keys live in the key store under ``training/<job>/<name>/`` and are retired after their one
decryption, like a round's. A job is for one registered participant: the fund signs its bundle,
and takes only a result that participant signed (see :mod:`fhe_toolkit.fund.answers`).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.data import load_tournament
from fhe_toolkit.errors import AnswerRefused, FundError
from fhe_toolkit.fhe.codecs import TrainingCodec, plan_batches
from fhe_toolkit.fhe.keystore import TRAINING_KEYS
from fhe_toolkit.fhe.versions import check_versions, package_versions
from fhe_toolkit.fund.answers import (
    Slot,
    Stage,
    check_binding,
    check_signer,
    decrypt_items,
    receive_answer,
    retire_once,
    usable,
)
from fhe_toolkit.fund.base import FundBase
from fhe_toolkit.protocol.artifacts import (
    BIAS,
    EVALUATION_KEYS,
    INITIAL_BIAS,
    INITIAL_WEIGHTS,
    TRAINING_BUNDLE,
    TRAINING_RESULT,
    TRAINING_SPEC,
    WEIGHTS,
    Artifact,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.protocol.manifest import ROUND_PATTERN, utc_now
from fhe_toolkit.protocol.modelspec import read_spec
from fhe_toolkit.protocol.signing import sign_directory
from fhe_toolkit.protocol.training_spec import TrainedWeights, TrainingSpec
from fhe_toolkit.registry import (
    NewTrainingJob,
    TrainingJobRecord,
    TrainingJobStatus,
)

TRAINING_DIR = "training"
LEGACY_JOB_INFO = "job.json"
"""Where jobs opened by earlier versions kept their record (imported into the registry)."""
SPEC_FILE = "training_spec.json"
WEIGHTS_FILE = "weights.json"


class FundTraining(FundBase):
    """The fund's encrypted training jobs: files in ``root/training`` (``fund/`` by default),
    records in the fund's registry (``database``, as for :class:`~fhe_toolkit.fund.Fund`), keys
    in the key store's ``training/`` folder."""

    def __init__(
        self,
        root: str | Path = "fund",
        key_store: str | Path = "keys",
        *,
        database: str | None = None,
    ) -> None:
        super().__init__(root, key_store, database=database)
        self.training_keys = self.keys.nested(TRAINING_KEYS)

    @property
    def training_dir(self) -> Path:
        return self.root / TRAINING_DIR

    def job_dir(self, job_id: str) -> Path:
        return self.training_dir / job_id

    def job_record(self, job_id: str) -> TrainingJobRecord:
        """The job's record: what it was opened with, and where it stands."""
        if not self._has_job(job_id):
            raise FundError(f"training job {job_id!r} was never opened.")
        return self.db.training_job(job_id)

    def _has_job(self, job_id: str) -> bool:
        """Whether the registry has the job, once a ``job.json`` left by an earlier version
        has been imported (the first time the job is looked up)."""
        if self.db.has_training_job(job_id):
            return True
        legacy = self.job_dir(job_id) / LEGACY_JOB_INFO
        if not re.fullmatch(ROUND_PATTERN, job_id) or not legacy.is_file():
            return False
        self.db.import_training_job(legacy_job(legacy))
        return True

    def open_job(
        self,
        job_id: str,
        spec_path: str | Path,
        data: pd.DataFrame | str | Path,
        *,
        participant: str,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Validate a participant's training spec and publish its encrypted training bundle,
        signed by the fund.

        ``data``: the fund's rows to train on (Numerai format; rows whose target is NaN are
        left out). ``participant``: the registered participant the job is for: only a result
        that participant signed is taken. Fresh keys for the job; the starting weights and
        every step's batch are drawn from the spec's seed as Concrete ML would, quantized and
        encrypted. ``on_progress(steps_encrypted, steps)``, first with 0 once the checks pass and
        before the keys are made. Returns the bundle directory.
        """
        if not re.fullmatch(ROUND_PATTERN, job_id):
            raise FundError(f"job id {job_id!r} must be letters, digits, '_', '-' or '.'.")
        directory = self.job_dir(job_id)
        staging = directory.with_name(f".{job_id}.opening")
        if self._has_job(job_id):
            if not directory.exists() and staging.is_dir():
                return self._publish(job_id, staging)  # recorded, then cut off: finish
            raise FundError(f"training job {job_id!r} is open already ({directory}).")
        if directory.exists():
            raise FundError(
                f"{directory} exists but the fund's records have no training job {job_id!r}."
            )
        spec = read_spec(spec_path, TrainingSpec)
        check_versions(spec)
        frame = data if isinstance(data, pd.DataFrame) else load_tournament(data)
        x, y = _training_rows(spec, frame)
        if participant not in self.db.participant_keys():
            raise FundError(
                f"participant {participant!r} is not registered; see `fhe-toolkit fund "
                "add-participant`."
            )
        weights, bias, batches = plan_batches(spec, len(x))
        codec = TrainingCodec(spec)

        if on_progress is not None:  # every check passed: the long part starts
            on_progress(0, len(batches))
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        key_set = self.training_keys.create(job_id, spec.name, spec, replace_unpublished=True)
        client: Any = key_set.client
        encrypted = []
        for step, rows in enumerate(batches):
            ex, ey, _, _ = client.encrypt(*codec.quantize_batch(x[rows], y[rows]), None, None)
            encrypted.append((ex.serialize(), ey.serialize()))
            if on_progress is not None:
                on_progress(step + 1, len(batches))
        _, _, ew, eb = client.encrypt(None, None, *codec.quantize_parameters(weights, bias))
        bundle_sha = write_artifact(
            staging / "bundle",
            TRAINING_BUNDLE,
            batches={"x": [x for x, _ in encrypted], "y": [y for _, y in encrypted]},
            blobs={
                INITIAL_WEIGHTS: ew.serialize(),
                INITIAL_BIAS: eb.serialize(),
                EVALUATION_KEYS: key_set.evaluation_keys,
                TRAINING_SPEC: spec.to_json().encode(),
            },
            round_id=job_id,
            model=spec.name,
            key_set_id=key_set.key_set_id,
            spec_sha256=spec.sha256(),
            n_rows=len(batches) * spec.batch_size,
            n_batches=len(batches),
            batch_size=spec.batch_size,
            versions=package_versions(),
        )
        sign_directory(staging / "bundle", self.signing_key())
        write_atomic(staging / SPEC_FILE, spec.to_json().encode())
        self.db.open_training_job(
            NewTrainingJob(
                job_id=job_id,
                name=spec.name,
                participant=participant,
                key_set_id=key_set.key_set_id,
                spec_sha256=spec.sha256(),
                bundle_sha256=bundle_sha,
                n_samples=len(x),
                positive_share=round(float(y.mean()), 4),
                iterations=len(batches),
            )
        )
        return self._publish(job_id, staging)

    def _publish(self, job_id: str, staging: Path) -> Path:
        directory = self.job_dir(job_id)
        staging.rename(directory)
        self.training_keys.mark_published(job_id, self.db.training_job(job_id).name)
        return directory / "bundle"

    def receive(self, job_id: str, result_dir: str | Path) -> TrainedWeights:
        """Check a training result, decrypt it once, retire the job's keys, write the weights.

        Refused before decryption (keys kept, the participant can fix and resend): a manifest or
        file that does not check out, another job, key set or bundle, a signature that is not
        the job's participant's, a result received already. A receive of the job that was cut
        off is finished or rolled back first (see :mod:`fhe_toolkit.fund.answers`). Returns
        the weights, also written to ``training/<job>/weights.json``.
        """
        job = self.job_record(job_id)  # an unknown job is refused before anything is made for it
        result = open_artifact(result_dir, TRAINING_RESULT, exact=True)
        expected = {
            "round_id": job_id,
            "model": job.name,
            "key_set_id": job.key_set_id,
            "spec_sha256": job.spec_sha256,
            "bundle_sha256": job.bundle_sha256,
            "n_batches": job.iterations,
        }
        check_binding(result, expected, "result", f"training job {job_id!r}")
        weights: TrainedWeights = receive_answer(TrainingResult(self, job), result)
        return weights


TRAINING_STAGES = {
    TrainingJobStatus.AWAITING: Stage.AWAITING,
    TrainingJobStatus.ACCEPTED: Stage.ACCEPTED,
    TrainingJobStatus.DECRYPTING: Stage.DECRYPTING,
    TrainingJobStatus.DECRYPTED: Stage.DONE,
    TrainingJobStatus.REFUSED: Stage.DONE,
}


class TrainingResult(Slot):
    """A training job's result: recorded with the job, kept in ``training/<job>/result/``,
    decrypted into ``training/<job>/weights.json``."""

    kind = TRAINING_RESULT

    def __init__(self, training: FundTraining, job: TrainingJobRecord) -> None:
        self.training, self.job_id, self.name = training, job.job_id, job.name
        self.participant = job.participant
        self.what = f"the result of training job {job.job_id!r}"
        directory = training.job_dir(job.job_id)
        self.lock = directory / ".receiving.lock"
        self.kept = directory / "result"
        self.output = directory / WEIGHTS_FILE
        self.spec_path = directory / SPEC_FILE

    def _job(self) -> TrainingJobRecord:
        return self.training.db.training_job(self.job_id)

    def stage(self) -> Stage:
        return TRAINING_STAGES[self._job().status]

    def accepted_sha256(self) -> str | None:
        return self._job().result_sha256

    def check_signer(self, answer: Artifact) -> str:
        if self.participant is None:
            raise FundError(
                f"training job {self.job_id!r} was opened without a participant (by an earlier "
                "version), so no result can be checked against anyone's signature; open a new "
                "job for the participant with `fhe-toolkit fund open-training ... --participant "
                "NAME`."
            )
        return check_signer(
            self.training.db, answer.directory, self.participant, "result",
            f"training job {self.job_id!r}",
        )  # fmt: skip

    def accept(self, answer: Artifact, signer: str) -> None:
        self.training.db.accept_training_result(self.job_id, answer.sha256)

    def roll_back(self) -> None:
        self.training.db.roll_back_training_result(self.job_id)

    def start_decrypting(self) -> None:
        self.training.db.set_training_status(self.job_id, TrainingJobStatus.DECRYPTING)

    def keys_usable(self) -> bool:
        return usable(self.training.training_keys, self.job_id, self.name)

    def decrypt(self, kept: Artifact) -> TrainedWeights:
        spec = read_spec(self.spec_path, TrainingSpec)
        decrypted, failures = decrypt_items(
            self.training.training_keys, self.job_id, spec.name,
            [(kept.read(WEIGHTS), kept.read(BIAS))], workers=1,
        )  # fmt: skip
        if failures:
            raise AnswerRefused(
                "the result could not be decrypted",
                f"the result of training job {self.job_id!r} could not be decrypted "
                f"({failures[0].reason}): it was not computed by this job's circuit with its "
                "keys. The keys are retired.",
            )
        coef, intercept = TrainingCodec(spec).decode(*decrypted[0])
        if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
            raise AnswerRefused(
                "non-finite weights",
                f"the decrypted weights of job {self.job_id!r} are not finite.",
            )
        job = self._job()
        return TrainedWeights(
            job_id=self.job_id,
            name=spec.name,
            spec_sha256=spec.sha256(),
            features=spec.features,
            coef=[float(c) for c in coef],
            intercept=intercept,
            iterations=job.iterations,
            n_samples=job.n_samples,
            decrypted_at=utc_now(),
        )

    def store(self, output: TrainedWeights) -> None:
        write_atomic(self.output, output.model_dump_json(indent=1).encode())

    def load(self) -> TrainedWeights:
        return TrainedWeights.model_validate_json(self.output.read_bytes())

    def finish(self, output: TrainedWeights) -> None:
        self.training.db.set_training_status(self.job_id, TrainingJobStatus.DECRYPTED)

    def refuse(self, detail: str) -> None:
        self.training.db.set_training_status(self.job_id, TrainingJobStatus.REFUSED, detail)

    def retire_keys(self) -> None:
        retire_once(
            self.training.training_keys, self.job_id, self.name, "decrypted the training result"
        )


LEGACY_STATUSES = {
    "awaiting result": TrainingJobStatus.AWAITING,
    "decrypted: weights ready to return": TrainingJobStatus.DECRYPTED,
}


def legacy_job(path: Path) -> TrainingJobRecord:
    """The record of a job from the ``job.json`` an earlier version wrote.

    Its status was free text: ``awaiting result``, ``decrypted: weights ready to return``, or
    ``refused: <why>`` (the why becomes the record's detail). A job whose ``result/`` folder
    was kept but that never left ``awaiting result`` was cut off while decrypting.
    """
    try:
        info = json.loads(path.read_text())
        if info["job_id"] != path.parent.name:
            raise ValueError(f"it names job {info['job_id']!r}, not {path.parent.name!r}")
        text = str(info["status"])
        status = LEGACY_STATUSES.get(text)
        detail = None
        if status is None:
            word, _, detail = text.partition(": ")
            status = TrainingJobStatus(word)
        if status == TrainingJobStatus.AWAITING and (path.parent / "result").is_dir():
            status = TrainingJobStatus.DECRYPTING
        return TrainingJobRecord(
            job_id=str(info["job_id"]),
            name=str(info["name"]),
            participant=None,
            status=status,
            detail=detail or None,
            key_set_id=str(info["key_set_id"]),
            spec_sha256=str(info["spec_sha256"]),
            bundle_sha256=str(info["bundle_sha256"]),
            n_samples=int(info["n_samples"]),
            positive_share=float(info["positive_share"]),
            iterations=int(info["iterations"]),
            opened_at=datetime.fromisoformat(info["opened_at"]).astimezone(UTC),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FundError(
            f"{path} (a training job opened by an earlier version) cannot be imported into the "
            f"fund's records: {exc!r}. Fix or move it away."
        ) from None


def _training_rows(spec: TrainingSpec, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The job's features and 0/1 labels, from the rows whose target is known."""
    missing = [c for c in [*spec.features, spec.target] if c not in frame.columns]
    if missing:
        raise FundError(f"the training data has no column(s) {missing[:5]} that the job uses.")
    rows = frame[frame[spec.target].notna()]
    if len(rows) < spec.batch_size:
        raise FundError(
            f"only {len(rows)} rows have a {spec.target!r} value; a batch takes {spec.batch_size}."
        )
    labels = (rows[spec.target].to_numpy(np.float64) > spec.label_threshold).astype(np.int64)
    if labels.min() == labels.max():
        raise FundError(
            f"every row's label is {labels[0]} with label_threshold {spec.label_threshold}: "
            "training needs both classes; the participant should choose another threshold."
        )
    return rows[spec.features].to_numpy(np.float64), labels
