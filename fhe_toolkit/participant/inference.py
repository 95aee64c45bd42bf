"""Run an exported model on the fund's encrypted round bundle and write the signed submission."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fhe_toolkit.errors import IdentityError, ParticipantError, RowsCrashedError, RunError
from fhe_toolkit.fhe.engine import run_rows
from fhe_toolkit.fhe.server_library import ensure_server_library
from fhe_toolkit.fhe.tasks import ServerTask
from fhe_toolkit.fhe.versions import package_versions
from fhe_toolkit.participant.model import load_model_dir
from fhe_toolkit.participant.outputs import CHECKPOINT, finished_answer, open_checkpoint
from fhe_toolkit.protocol.artifacts import (
    EVALUATION_KEYS,
    ROUND_BUNDLE,
    SUBMISSION,
    answer_fields,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.signing import (
    load_private_key,
    load_public_key,
    sign_directory,
    verify_directory,
)


def run_bundle(
    bundle_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    identity: str | Path,
    fund_key: str | Path | bytes | None = None,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Run the exported model on every encrypted row of a round bundle; write the submission,
    signed with the participant's private key ``identity`` (the fund refuses it otherwise).

    ``fund_key``: the fund's public key (file or hex): the bundle must carry the fund's
    signature. Rows run in worker processes on all cores (a crash of Concrete's runtime costs a
    worker, and is reported with the row's ids). Finished batches are checkpointed in
    ``out_dir``, so running again after an interruption only computes what is left, and running
    again after success does nothing. ``on_progress(rows_done, rows)`` reports progress.
    Returns the submission directory (``out_dir``).
    """
    signing_key = load_private_key(identity)
    spec, deployment = load_model_dir(model_dir)
    bundle = open_artifact(bundle_dir, ROUND_BUNDLE)
    if fund_key is not None:
        key = fund_key if isinstance(fund_key, bytes) else load_public_key(fund_key)
        try:
            verify_directory(bundle_dir, key, "the fund")
        except IdentityError as exc:
            raise ParticipantError(f"not running this bundle: {exc}") from None
    if bundle.manifest.model != spec.name or bundle.manifest.spec_sha256 != spec.sha256():
        raise ParticipantError(
            f"{bundle_dir} was encrypted for model {bundle.manifest.model!r} (spec "
            f"{bundle.manifest.spec_sha256[:12]}…), but {model_dir} holds model {spec.name!r} "
            f"(spec {spec.sha256()[:12]}…); run each bundle with the model it was made for."
        )
    mine = package_versions()
    if spec.versions.get("concrete-python") != mine["concrete-python"]:
        raise ParticipantError(
            f"the model was compiled with concrete-python {spec.versions.get('concrete-python')}"
            f" but {mine['concrete-python']} is installed; re-export it with this version."
        )
    out = Path(out_dir)
    if finished_answer(out, bundle, SUBMISSION):
        sign_directory(out, signing_key)
        return out
    library = ensure_server_library(deployment)
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
                ServerTask(str(library), str(bundle.path(EVALUATION_KEYS))),
                table["ciphertext"].tolist(),
                [b for b in range(len(sizes)) if b not in done],
                checkpoint.add,
                workers=workers,
                chunk_size=1 if spec.batch_size > 1 else 4,
                on_done=report,
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
            SUBMISSION,
            batches={"ciphertext": [data for _, data in checkpoint.outputs()]},
            compress=False,
            versions=mine,
            **answer_fields(bundle),
        )
        sign_directory(out, signing_key)
    return out
