"""What the fund takes from a participant, without FHE: only the files a manifest lists, copied
without following links; one receive at a time; targets checked before a round is scored."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fhe_toolkit.errors import FundError, ManifestError
from fhe_toolkit.fund.answers import keep_copy, receiving
from fhe_toolkit.fund.resolution import _check_targets
from fhe_toolkit.protocol.artifacts import PREDICTIONS, SUBMISSION, open_answer, write_artifact
from fhe_toolkit.protocol.manifest import MANIFEST, SIGNATURE

BINDING = {
    "round_id": "r1", "model": "m", "key_set_id": "a" * 32, "spec_sha256": "b" * 64,
    "bundle_sha256": "c" * 64, "n_rows": 2, "n_batches": 2, "batch_size": 1, "versions": {},
}  # fmt: skip


@pytest.fixture
def submission(tmp_path: Path) -> Path:
    directory = tmp_path / "sub"
    write_artifact(directory, SUBMISSION, batches={"ciphertext": [b"x", b"y"]}, **BINDING)
    (directory / SIGNATURE).write_bytes(b"s" * 64)
    return directory


def test_an_unlisted_file_link_or_fifo_is_refused_by_name(submission, tmp_path):
    assert open_answer(submission).manifest.model == "m"
    secret = tmp_path / "keys" / "keyset.bin"
    secret.parent.mkdir()
    secret.write_bytes(b"secret key")
    (submission / "keyset.bin").symlink_to(secret)
    with pytest.raises(ManifestError, match=r"holds \['keyset.bin'\], which its manifest"):
        open_answer(submission)
    (submission / "keyset.bin").unlink()
    os.mkfifo(submission / "pipe")
    with pytest.raises(ManifestError, match="pipe"):
        open_answer(submission)  # must not block on the FIFO
    (submission / "pipe").unlink()
    listed = submission / PREDICTIONS
    listed.rename(tmp_path / "elsewhere.parquet")
    listed.symlink_to(tmp_path / "elsewhere.parquet")
    with pytest.raises(ManifestError, match="is a symbolic link"):
        open_answer(submission)


def test_the_kept_copy_holds_only_what_is_listed_and_survives_a_resend_of_itself(
    submission, tmp_path
):
    kept = tmp_path / "fund" / "submissions" / "m"
    keep_copy(open_answer(submission), kept)
    assert {p.name for p in kept.iterdir()} == {MANIFEST, SIGNATURE, PREDICTIONS}
    # Sent again from the fund's own copy: the copy must not be deleted before it is read.
    keep_copy(open_answer(kept), kept)
    assert open_answer(kept).manifest.model == "m"
    assert not any(p.name.startswith(".") for p in kept.parent.iterdir())


def test_two_receives_of_one_submission_never_overlap(tmp_path):
    lock = tmp_path / ".m.lock"
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with receiving(lock, "m's submission"):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    with (
        pytest.raises(FundError, match="being received by another process"),
        receiving(lock, "m's submission"),
    ):
        pass
    release.set()
    thread.join()
    with receiving(lock, "m's submission"):
        pass  # free again once the first is done


def test_targets_that_cannot_resolve_a_round_are_refused_with_every_reason():
    ids = pd.Index([f"id{i}" for i in range(10)], name="id")
    good = pd.DataFrame({"target": np.tile([0.0, 0.25, 0.5, 0.75, 1.0], 2)}, index=ids)
    _check_targets(good, ids, ["target"])
    bad = good.iloc[:8].assign(target=lambda f: f["target"] * 100)
    with pytest.raises(FundError) as refused:
        _check_targets(bad, ids, ["target", "target_60d"])
    message = str(refused.value)
    assert "2 of the round's 10 live ids have no row" in message
    assert "no column ['target_60d']" in message
    assert "outside the buckets" in message and "Nothing was scored" in message
    unresolved = good.assign(target=np.nan)
    with pytest.raises(FundError, match=r"unresolved \(NaN\) for 100%"):
        _check_targets(unresolved, ids, ["target"])
    with pytest.raises(FundError, match="more than once"):
        _check_targets(pd.concat([good, good.iloc[:1]]), ids, ["target"])
