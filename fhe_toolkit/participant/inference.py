"""Run an exported model on the fund's encrypted round bundle and write the signed submission.

A compiled model runs on its own bundle (its circuit, the bundle's evaluation keys); a packed
linear model multiplies the round's shared packed dataset by its private integer weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhe_toolkit.errors import (
    PackedError,
    ParticipantError,
    RowsCrashedError,
    RunError,
)
from fhe_toolkit.fhe.engine import Task, run_rows
from fhe_toolkit.fhe.glwe import PackedParams
from fhe_toolkit.fhe.packed import MultiplyTask, load_weights, weight_vector
from fhe_toolkit.fhe.server_library import ensure_server_library
from fhe_toolkit.fhe.tasks import ServerTask
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.participant.model import WEIGHTS_FILE, load_model_dir
from fhe_toolkit.participant.outputs import (
    CHECKPOINT,
    check_fund_signature,
    finished_answer,
    open_checkpoint,
)
from fhe_toolkit.protocol.artifacts import (
    COLUMNS,
    COMPRESSION_KEY,
    EVALUATION_KEYS,
    PACKED_PARAMS,
    PACKED_ROUND,
    PACKED_SUBMISSION,
    ROUND_BUNDLE,
    SUBMISSION,
    Artifact,
    Kind,
    answer_fields,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.manifest import peek_kind
from fhe_toolkit.protocol.modelspec import LinearSpec, ModelSpec
from fhe_toolkit.protocol.signing import load_private_key, sign_directory


def run_bundle(
    bundle_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    identity: str | Path,
    fund_key: str | Path | bytes | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Run the exported model on every encrypted row of a round bundle; write the submission,
    signed with the participant's private key ``identity`` (the fund refuses it otherwise).

    ``fund_key``: the fund's public key (file or hex): the bundle must carry the fund's
    signature. Rows run in worker processes on all cores (a crash of Concrete's runtime costs a
    worker, and is reported with the row's ids), or on the Dask cluster at ``scheduler``
    (``tcp://HOST:PORT``; see docs/cluster.md). Finished batches are checkpointed in
    ``out_dir``, so running again after an interruption only computes what is left, and running
    again after success does nothing. ``on_progress(rows_done, rows)`` reports progress.
    Returns the submission directory (``out_dir``).
    """
    signing_key = load_private_key(identity)
    spec, deployment = load_model_dir(model_dir)
    packed = peek_kind(bundle_dir) == PACKED_ROUND.name
    bundle = open_artifact(bundle_dir, PACKED_ROUND if packed else ROUND_BUNDLE)
    check_fund_signature(bundle_dir, fund_key)
    out = Path(out_dir)
    if isinstance(spec, LinearSpec):
        if not packed:
            raise ParticipantError(
                f"{model_dir} holds a packed linear model: run it on the round's packed dataset "
                f"(the fund's rounds/<round>/packed), not on {bundle_dir}."
            )
        task, kind, binding = _packed_work(bundle, spec, deployment)
    else:
        if packed:
            raise ParticipantError(
                f"{bundle_dir} is a round's packed dataset, for linear models exported packed; "
                f"{model_dir} holds a compiled circuit: run it on its own bundle."
            )
        task, kind, binding = _circuit_work(bundle, spec, deployment, bundle_dir, model_dir)
    if finished_answer(out, bundle, kind, spec.name):
        sign_directory(out, signing_key)
        return out
    table = bundle.batches()
    sizes = table["ids"].map(len).tolist()
    with open_checkpoint(out, bundle) as checkpoint:
        done = checkpoint.done()
        finished = sum(sizes[b] for b in done)

        def report(batch: int | None = None) -> None:
            nonlocal finished
            finished += 0 if batch is None else sizes[batch]
            if on_progress is not None:
                on_progress(finished, sum(sizes))

        report()
        try:
            failures = run_rows(
                task,
                table["ciphertext"].tolist(),
                [b for b in range(len(sizes)) if b not in done],
                checkpoint.add,
                workers=workers,
                # A row per ciphertext is cheap: hand workers a few at a time.
                chunk_size=4 if isinstance(spec, ModelSpec) and spec.batch_size == 1 else 1,
                on_done=report,
                scheduler=scheduler,
            )
        except RowsCrashedError as exc:
            failures = exc.failures
        checkpoint.commit()
        if failures:
            listing = "; ".join(
                f"batch {f.position} (ids {list(table['ids'][f.position][:2])}…): {f.reason}"
                for f in failures[:3]
            )
            raise RunError(
                f"{len(failures)} batch(es) failed: {listing}. If every batch fails, the bundle's "
                f"keys or ciphertexts do not fit this model. Finished rows are kept in "
                f"{out / CHECKPOINT}; running again computes only what is left."
            )
        write_artifact(
            out,
            kind,
            batches={"ciphertext": [data for _, data in checkpoint.outputs()]},
            compress=False,
            versions=package_versions(),
            **binding,
        )
        sign_directory(out, signing_key)
    return out


def _circuit_work(
    bundle: Artifact,
    spec: ModelSpec,
    deployment: Path,
    bundle_dir: str | Path,
    model_dir: str | Path,
) -> tuple[Task, Kind, dict[str, Any]]:
    """The task, answer kind and manifest binding for a compiled model's own bundle."""
    if bundle.model != spec.name or bundle.manifest.spec_sha256 != spec.sha256():
        raise ParticipantError(
            f"{bundle_dir} was encrypted for model {bundle.model!r} (spec "
            f"{str(bundle.manifest.spec_sha256)[:12]}…), but {model_dir} holds model "
            f"{spec.name!r} (spec {spec.sha256()[:12]}…); run each bundle with the model it was "
            "made for."
        )
    mine = package_versions()
    if spec.versions.get("concrete-python") != mine["concrete-python"]:
        raise ParticipantError(
            f"the model was compiled with concrete-python {spec.versions.get('concrete-python')}"
            f" but {mine['concrete-python']} is installed; re-export it with this version."
        )
    library = ensure_server_library(deployment)
    task = ServerTask(str(library), str(bundle.path(EVALUATION_KEYS)))
    return task, SUBMISSION, answer_fields(bundle)


def _packed_work(
    bundle: Artifact, spec: LinearSpec, deployment: Path
) -> tuple[Task, Kind, dict[str, Any]]:
    """The task, answer kind and manifest binding for a packed model on the round's dataset:
    the answer names the model and its spec, which the shared dataset does not."""
    params = bundle.read(PACKED_PARAMS).decode()
    columns = json.loads(bundle.read(COLUMNS))
    try:
        weights = weight_vector(spec, load_weights(deployment / WEIGHTS_FILE, spec), columns)
    except PackedError as exc:
        raise ParticipantError(str(exc)) from None
    if spec.weight_bound > PackedParams.from_json(params).weight_bound:
        raise ParticipantError(
            f"the round's packed dataset allows weights up to "
            f"±{PackedParams.from_json(params).weight_bound}, but {spec.name!r} declares "
            f"±{spec.weight_bound}: the fund opened the round for other models."
        )
    task = MultiplyTask(params, str(bundle.path(COMPRESSION_KEY)), tuple(map(int, weights)))
    binding = {**answer_fields(bundle), "model": spec.name, "spec_sha256": spec.sha256()}
    return task, PACKED_SUBMISSION, binding
