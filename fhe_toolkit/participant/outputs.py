"""What a participant's long FHE runs share: the bundle checked against the fund's signature, and
an output directory that resumes unfinished work and refuses to mix in other work.

A run (inference on a round bundle, encrypted training on a training bundle) writes its answer
into an output directory, with a checkpoint of finished batches beside it until it is done, and
signs it with the participant's key.
"""

from __future__ import annotations

from pathlib import Path

from fhe_toolkit.errors import IdentityError, ParticipantError
from fhe_toolkit.fhe.checkpoint import Checkpoint
from fhe_toolkit.protocol.artifacts import Artifact, Kind, open_artifact
from fhe_toolkit.protocol.manifest import MANIFEST
from fhe_toolkit.protocol.signing import load_public_key, verify_directory

CHECKPOINT = ".checkpoint.sqlite"


def check_fund_signature(bundle_dir: str | Path, fund_key: str | Path | bytes | None) -> None:
    """Refuse a bundle the fund did not sign: ``fund_key`` is the fund's public key (a ``.pub``
    file, 64 hex characters, or the raw bytes); ``None`` checks nothing."""
    if fund_key is None:
        return
    key = fund_key if isinstance(fund_key, bytes) else load_public_key(fund_key)
    try:
        verify_directory(bundle_dir, key, "the fund")
    except IdentityError as exc:
        raise ParticipantError(f"not running this bundle: {exc}") from None


def finished_answer(out: Path, bundle: Artifact, kind: Kind, model: str) -> bool:
    """Whether ``out`` holds the finished answer (of ``kind``) of ``model`` to ``bundle``.

    Refuses an ``out`` that holds another answer (another bundle, or another model's answer to
    a round's shared packed dataset): running this one there would mix two runs' work.
    """
    if not (out / MANIFEST).exists():
        return False
    finished = open_artifact(out, kind)
    if finished.manifest.bundle_sha256 == bundle.sha256 and finished.manifest.model == model:
        return True
    raise ParticipantError(
        f"{out} holds the {kind.name} of model {finished.manifest.model!r} for another model or "
        f"bundle (round or job {finished.manifest.round_id!r}); write this one to a new --out."
    )


def open_checkpoint(out: Path, bundle: Artifact) -> Checkpoint:
    """The checkpoint of the run of ``bundle`` into ``out`` (made if new); refuses another's."""
    out.mkdir(parents=True, exist_ok=True)
    return Checkpoint(out / CHECKPOINT, owner=bundle.sha256)
