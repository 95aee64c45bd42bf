"""Where a participant's long FHE runs write: resume unfinished work, refuse to mix in other work.

A run (inference on a round bundle, encrypted training on a training bundle) writes its answer
into an output directory, with a checkpoint of finished batches beside it until it is done.
"""

from __future__ import annotations

from pathlib import Path

from fhe_toolkit.errors import ParticipantError
from fhe_toolkit.fhe.checkpoint import Checkpoint
from fhe_toolkit.protocol.artifacts import Artifact, Kind, open_artifact
from fhe_toolkit.protocol.manifest import MANIFEST

CHECKPOINT = ".checkpoint.sqlite"


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
