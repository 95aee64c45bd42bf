"""The fund's side of encrypted training: encrypt a job's batches and starting weights under fresh
keys, then decrypt the trained weights once and hand them back.

A fund directory's training jobs::

    fund/training/<job>/
      job.json               the job: spec hash, key set, bundle hash, rows, steps, status
      training_spec.json     the participant's validated training spec
      bundle/                published to the participant (see fhe_toolkit.training_bundle)
      result/                the encrypted result, kept as sent
      weights.json           the decrypted weights: return this file to the participant

Keys live in the key store under ``training/<job>/<name>/`` and are retired after their one
decryption, like a round's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.data import load_tournament
from fhe_toolkit.errors import FundError
from fhe_toolkit.fund import check_versions
from fhe_toolkit.jobs import DecryptJob
from fhe_toolkit.keystore import SPECS, TRAINING_KEYS, KeyStore
from fhe_toolkit.manifest import ROUND_PATTERN, utc_now, write_atomic
from fhe_toolkit.modelspec import read_spec
from fhe_toolkit.participant import package_versions
from fhe_toolkit.pool import JobWorker, RowFailedError, WorkerCrashedError
from fhe_toolkit.training_bundle import (
    open_training_result,
    write_training_bundle,
)
from fhe_toolkit.training_spec import TrainedWeights, TrainingCodec, TrainingSpec, plan_batches

JOB_INFO = "job.json"
WEIGHTS_FILE = "weights.json"


class FundTraining:
    """The fund's encrypted training jobs, next to its rounds in ``root`` (``fund/`` by default)."""

    def __init__(self, root: str | Path = "fund", key_store: str | Path = "keys") -> None:
        self.root = Path(root) / "training"
        self.keys = KeyStore(Path(key_store) / TRAINING_KEYS)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def job_info(self, job_id: str) -> dict[str, Any]:
        path = self.job_dir(job_id) / JOB_INFO
        if not path.is_file():
            raise FundError(f"training job {job_id!r} was never opened (no {path}).")
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    def open_job(
        self,
        job_id: str,
        spec_path: str | Path,
        data: pd.DataFrame | str | Path,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Validate a participant's training spec and publish its encrypted training bundle.

        ``data``: the fund's rows to train on (Numerai format; rows whose target is NaN are
        left out). Fresh keys for the job; the starting weights and every step's batch are
        drawn from the spec's seed as Concrete ML would, quantized and encrypted.
        ``on_progress(steps_encrypted, steps)``. Returns the bundle directory.
        """
        if not re.fullmatch(ROUND_PATTERN, job_id):
            raise FundError(f"job id {job_id!r} must be letters, digits, '_', '-' or '.'.")
        directory = self.job_dir(job_id)
        if directory.exists():
            raise FundError(f"training job {job_id!r} is open already ({directory}).")
        spec = read_spec(spec_path, TrainingSpec)
        check_versions(spec)
        frame = data if isinstance(data, pd.DataFrame) else load_tournament(data)
        x, y = _training_rows(spec, frame)
        weights, bias, batches = plan_batches(spec, len(x))
        codec = TrainingCodec(spec)

        staging = directory.with_name(f".{job_id}.opening")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        key_set = self.keys.create(job_id, spec.name, spec, replace_unpublished=True)
        client: Any = key_set.client
        encrypted = []
        for step, rows in enumerate(batches):
            ex, ey, _, _ = client.encrypt(*codec.quantize_batch(x[rows], y[rows]), None, None)
            encrypted.append((ex.serialize(), ey.serialize()))
            if on_progress is not None:
                on_progress(step + 1, len(batches))
        _, _, ew, eb = client.encrypt(None, None, *codec.quantize_parameters(weights, bias))
        bundle_sha = write_training_bundle(
            staging / "bundle",
            job_id=job_id,
            spec=spec,
            key_set_id=key_set.key_set_id,
            evaluation_keys=key_set.evaluation_keys,
            batches=encrypted,
            initial=(ew.serialize(), eb.serialize()),
            versions=package_versions(),
        )
        write_atomic(staging / "training_spec.json", spec.to_json().encode())
        info = {
            "job_id": job_id,
            "name": spec.name,
            "opened_at": utc_now(),
            "status": "awaiting result",
            "key_set_id": key_set.key_set_id,
            "spec_sha256": spec.sha256(),
            "bundle_sha256": bundle_sha,
            "n_samples": len(x),
            "positive_share": round(float(y.mean()), 4),
            "iterations": len(batches),
        }
        write_atomic(staging / JOB_INFO, json.dumps(info, indent=1).encode())
        staging.rename(directory)
        self.keys.mark_published(job_id, spec.name)
        return directory / "bundle"

    def receive(self, job_id: str, result_dir: str | Path) -> TrainedWeights:
        """Check a training result, decrypt it once, retire the job's keys, write the weights.

        Refused before decryption (keys kept, the participant can fix and resend): a manifest or
        file that does not check out, another job, key set or bundle, a result received
        already. Returns the weights, also written to ``training/<job>/weights.json``.
        """
        info = self.job_info(job_id)
        result = open_training_result(result_dir)
        manifest = result.manifest
        expected = {
            "round_id": job_id,
            "model": info["name"],
            "key_set_id": info["key_set_id"],
            "spec_sha256": info["spec_sha256"],
            "bundle_sha256": info["bundle_sha256"],
            "n_batches": info["iterations"],
        }
        for field, value in expected.items():
            if getattr(manifest, field) != value:
                raise FundError(
                    f"the result's {field} ({str(getattr(manifest, field))[:16]}) does not match "
                    f"training job {job_id!r} ({str(value)[:16]}): it was made from another "
                    "bundle or was altered."
                )
        directory = self.job_dir(job_id)
        kept = directory / "result"
        if kept.exists():
            raise FundError(f"the result of training job {job_id!r} was received already.")
        parameters = result.parameters()
        staging = directory / ".result.receiving"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(result.directory, staging)
        staging.rename(kept)

        spec = read_spec(directory / "training_spec.json", TrainingSpec)
        keys = self.keys.directory(job_id, spec.name)
        job = DecryptJob(str(keys / SPECS), str(self.keys.keyset_path(job_id, spec.name)))
        failure = None
        try:
            with JobWorker(job) as worker:
                decrypted = worker.call(parameters)
        except (WorkerCrashedError, RowFailedError) as exc:
            failure = str(exc)
        finally:
            self.keys.retire(job_id, spec.name, reason="decrypted the training result")
        if failure is not None:
            self._set_status(job_id, "refused: the result could not be decrypted")
            raise FundError(
                f"the result of training job {job_id!r} could not be decrypted ({failure}): it "
                "was not computed by this job's circuit with its keys. The keys are retired."
            )
        coef, intercept = TrainingCodec(spec).decode(*decrypted)
        if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
            self._set_status(job_id, "refused: non-finite weights")
            raise FundError(f"the decrypted weights of job {job_id!r} are not finite.")
        weights = TrainedWeights(
            job_id=job_id,
            name=spec.name,
            spec_sha256=spec.sha256(),
            features=spec.features,
            coef=[float(c) for c in coef],
            intercept=intercept,
            iterations=info["iterations"],
            n_samples=info["n_samples"],
            decrypted_at=utc_now(),
        )
        write_atomic(directory / WEIGHTS_FILE, weights.model_dump_json(indent=1).encode())
        self._set_status(job_id, "decrypted: weights ready to return")
        return weights

    def _set_status(self, job_id: str, status: str) -> None:
        info = self.job_info(job_id)
        info["status"] = status
        write_atomic(self.job_dir(job_id) / JOB_INFO, json.dumps(info, indent=1).encode())


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
