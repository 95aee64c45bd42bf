"""The participant's side of encrypted training: declare a job, compile its SGD step, run the
steps on the fund's encrypted batches, and turn the weights the fund returns into a model that
enters the encrypted rounds like any other.

A training job directory::

    job_dir/
      training_spec.json   public: send it to the fund
      deployment/          private: server.zip (the SGD step circuit) and its compiled library
      job.json             the job as declared

The participant never sees a feature value or a label: the fund encrypts the batches, the
weights stay encrypted from the first step to the last, and only the fund can decrypt them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from fhe_toolkit.data.schema import FEATURE_VALUES
from fhe_toolkit.errors import ParticipantError, RowFailedError, RunError, WorkerCrashedError
from fhe_toolkit.fhe.engine import SequentialWorker
from fhe_toolkit.fhe.server_library import SERVER_ZIP, ensure_server_library
from fhe_toolkit.fhe.tasks import ServerTask
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.participant.model import DEPLOYMENT_DIR, TrainedModel, new_deployment
from fhe_toolkit.participant.outputs import (
    CHECKPOINT,
    check_fund_signature,
    finished_answer,
    open_checkpoint,
)
from fhe_toolkit.protocol.artifacts import (
    BIAS,
    EVALUATION_KEYS,
    INITIAL_BIAS,
    INITIAL_WEIGHTS,
    TRAINING_BUNDLE,
    TRAINING_RESULT,
    WEIGHTS,
    answer_fields,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.families import get_family
from fhe_toolkit.protocol.modelspec import QuantizerSpec, problems_of, read_spec
from fhe_toolkit.protocol.signing import load_private_key, sign_directory
from fhe_toolkit.protocol.training_spec import TrainedWeights, TrainingSpec

TRAINING_SPEC_FILE = "training_spec.json"
JOB_FILE = "job.json"


@dataclass(frozen=True)
class TrainingJob:
    """An encrypted training job as the participant declares it.

    The label is 1 where ``target`` is above ``label_threshold``. Give ``iterations`` (SGD
    steps, one batch of ``batch_size`` rows each) or ``epochs`` (passes over the fund's rows in
    expectation; the fund turns them into steps, since only it knows how many rows it has).
    Weights start uniform in ``parameter_range``, which also bounds them during training: the
    circuit's integers are sized for it. ``seed`` fixes the initial weights and every batch.
    """

    features: Sequence[str]
    target: str = "target"
    label_threshold: float = 0.5
    iterations: int | None = 10
    epochs: float | None = None
    batch_size: int = 8
    parameter_range: tuple[float, float] = (-1.0, 1.0)
    seed: int = 0
    fit_intercept: bool = True
    p_error: float = 1e-5
    """Each bootstrap's error probability. Concrete ML's own default for training, 0.01, lets
    errors pile up over the steps (8 steps of the weights' quantizer after 4 SGD steps, in
    the README's figures); 1e-5 costs ~10% more per step."""

    def estimator(self) -> Any:
        """Concrete ML's ``SGDClassifier`` configured for this job (also the single-process
        reference: ``fit(X, y, fhe=...)`` on the same rows draws the same batches)."""
        from concrete.ml.sklearn import SGDClassifier

        model = SGDClassifier(
            fit_encrypted=True,
            parameters_range=tuple(self.parameter_range),
            random_state=self.seed,
            max_iter=self.iterations or 1,
            fit_intercept=self.fit_intercept,
        )
        model.batch_size = self.batch_size
        model.training_p_error = self.p_error
        return model


def compile_training_job(job: TrainingJob, out_dir: str | Path, name: str) -> TrainingSpec:
    """Compile the job's SGD step and write its public spec and private deployment.

    Features are Numerai bins, 0..4, so the circuit is sized for that range without seeing any
    data. Refuses a directory that already holds a compiled job.
    """
    from concrete.ml.deployment import FHEModelDev

    if (job.iterations is None) == (job.epochs is None):
        raise ParticipantError("give either iterations or epochs for the training job.")
    if not 0 < job.p_error < 1:
        raise ParticipantError(f"p_error is a probability in (0, 1), not {job.p_error}.")
    out = Path(out_dir)
    deployment = new_deployment(out, "a compiled training job")
    features = list(job.features)
    model = job.estimator()
    low, high = FEATURE_VALUES
    module = model._get_training_quantized_module(
        x_min=np.full(len(features), float(low)), x_max=np.full(len(features), float(high)),
        device="cpu",
    )  # fmt: skip
    model.training_quantized_module = module
    try:
        spec = TrainingSpec(
            name=name,
            target=job.target,
            features=features,
            label_threshold=job.label_threshold,
            iterations=job.iterations,
            epochs=job.epochs,
            batch_size=job.batch_size,
            parameter_range=[float(v) for v in job.parameter_range],
            seed=job.seed,
            fit_intercept=job.fit_intercept,
            input_quantizers=[QuantizerSpec.from_quantizer(q) for q in module.input_quantizers],
            output_quantizers=[QuantizerSpec.from_quantizer(q) for q in module.output_quantizers],
            client_specs=json.loads(module.fhe_circuit.client.specs.serialize()),
            versions=package_versions(),
        )
    except ValidationError as exc:
        raise ParticipantError(f"the training job is not valid: {problems_of(exc)}") from None
    out.mkdir(parents=True, exist_ok=True)
    FHEModelDev(str(deployment), model).save(mode="training")
    ensure_server_library(deployment, module.fhe_circuit.server)
    (out / TRAINING_SPEC_FILE).write_text(spec.to_json())
    (out / JOB_FILE).write_text(json.dumps(asdict(job) | {"name": name}, indent=1, default=list))
    return spec


def load_training_job(job_dir: str | Path) -> tuple[TrainingSpec, Path]:
    """The spec and deployment directory of a compiled training job."""
    root = Path(job_dir)
    spec = read_spec(root / TRAINING_SPEC_FILE, TrainingSpec)
    deployment = root / DEPLOYMENT_DIR
    if not (deployment / SERVER_ZIP).is_file():
        raise ParticipantError(
            f"{deployment / SERVER_ZIP} is missing: {root} is not a compiled training job "
            "(see `fhe-toolkit participant training-job`)."
        )
    return spec, deployment


def run_training_bundle(
    bundle_dir: str | Path,
    job_dir: str | Path,
    out_dir: str | Path,
    *,
    identity: str | Path,
    fund_key: str | Path | bytes | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Run every SGD step of a training bundle on its encrypted batches; write the result,
    signed with the participant's private key ``identity`` (the fund refuses it otherwise).

    ``fund_key``: the fund's public key (file or hex): the bundle must carry the fund's
    signature. The weights stay encrypted between steps and are checkpointed after each one, so
    an interrupted run resumes at the next step. ``on_progress(steps_done, steps)``. Steps run
    in a worker process, so a crash of Concrete's runtime is reported, not fatal. Returns
    ``out_dir``, which holds the encrypted weights and bias and their manifest for the fund.
    """
    signing_key = load_private_key(identity)
    bundle = open_artifact(bundle_dir, TRAINING_BUNDLE)
    check_fund_signature(bundle_dir, fund_key)
    spec, deployment = load_training_job(job_dir)
    if bundle.spec.sha256() != spec.sha256():
        raise ParticipantError(
            f"this bundle was encrypted for training spec {bundle.spec.sha256()[:12]}… "
            f"({bundle.spec.name!r}), not for the job in {job_dir} ({spec.sha256()[:12]}…)."
        )
    out = Path(out_dir)
    if finished_answer(out, bundle, TRAINING_RESULT, spec.name):
        sign_directory(out, signing_key)
        return out
    library = ensure_server_library(deployment)
    batches = bundle.batches()
    steps = len(batches)
    with open_checkpoint(out, bundle) as checkpoint:
        saved = checkpoint.latest()
        first, state = (
            (saved[0] + 1, _unpack(saved[1]))
            if saved
            else (0, (bundle.read(INITIAL_WEIGHTS), bundle.read(INITIAL_BIAS)))
        )
        _call(on_progress, first, steps)
        task = ServerTask(str(library), str(bundle.path(EVALUATION_KEYS)))
        with SequentialWorker(task) as worker:
            for step in range(first, steps):
                try:
                    state = worker.call((batches.at[step, "x"], batches.at[step, "y"], *state))
                except (WorkerCrashedError, RowFailedError) as exc:
                    raise RunError(
                        f"SGD step {step} failed: {exc}. If the first step fails, the bundle's "
                        f"keys or ciphertexts do not fit this job. Steps 0..{step - 1} are kept "
                        f"in {out / CHECKPOINT}; running again resumes at step {step}."
                    ) from None
                checkpoint.add(step, _pack(state))
                checkpoint.discard_before(step)
                checkpoint.commit()
                _call(on_progress, step + 1, steps)
        write_artifact(
            out,
            TRAINING_RESULT,
            blobs={WEIGHTS: state[0], BIAS: state[1]},
            versions=package_versions(),
            **answer_fields(bundle),
        )
        sign_directory(out, signing_key)
    return out


def load_weights(path: str | Path) -> TrainedWeights:
    """Read the weights file the fund returns (plain JSON, validated)."""
    path = Path(path)
    try:
        return TrainedWeights.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ParticipantError(f"{path} does not exist.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise ParticipantError(f"{path} is not a trained-weights file: {exc}") from None


def model_from_weights(
    weights: TrainedWeights, spec: TrainingSpec, calibration: pd.DataFrame
) -> TrainedModel:
    """A logistic inference model with the encrypted training's weights, ready to compile and
    export like any other (family ``logistic``: it predicts P(label = 1)).

    ``calibration``: rows whose features set the input quantizers (the released training
    eras); their targets are not used.
    """
    if weights.spec_sha256 != spec.sha256() or weights.features != spec.features:
        raise ParticipantError(
            f"these weights come from job {weights.job_id!r} ({weights.name!r}, spec "
            f"{weights.spec_sha256[:12]}…), not from this training job ({spec.sha256()[:12]}…)."
        )
    from concrete.ml.sklearn import LogisticRegression
    from sklearn.linear_model import LogisticRegression as ClearLogisticRegression

    missing = [f for f in spec.features if f not in calibration.columns]
    if missing:
        raise ParticipantError(f"the calibration rows lack features {missing[:5]}.")
    family = get_family("logistic")
    clear = ClearLogisticRegression()
    clear.coef_ = np.asarray([weights.coef], dtype=np.float64)
    clear.intercept_ = np.asarray([weights.intercept], dtype=np.float64)
    clear.classes_ = np.asarray([0, 1])
    clear.n_features_in_ = len(spec.features)
    x = calibration[spec.features].to_numpy(np.float32)
    estimator = LogisticRegression.from_sklearn_model(clear, X=x, n_bits=family.defaults["n_bits"])
    params = {"n_bits": family.defaults["n_bits"], "trained_encrypted_in_job": weights.job_id}
    return TrainedModel(family, list(spec.features), spec.target, estimator, params)


def _pack(parts: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(part)) + part for part in parts)


def _unpack(blob: bytes) -> tuple[bytes, ...]:
    parts, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<Q", blob, offset)
        parts.append(blob[offset + 8 : offset + 8 + size])
        offset += 8 + size
    return tuple(parts)


def _call(callback: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if callback is not None:
        callback(done, total)
