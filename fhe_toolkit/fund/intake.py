"""One receive path for what participants send back: round submissions and training results.

Each answer goes through the same steps: its manifest and files check out (done by opening it),
it is bound to what the fund sent (round or job, model, key set, spec, bundle), a copy is kept
as sent, and it is decrypted once in worker processes, after which its keys are retired
whatever happened: a key set decrypts once.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fhe_toolkit.errors import FundError, IdentityError, PackedError, RowsCrashedError
from fhe_toolkit.fhe.codecs import LinearCodec, SpecCodec
from fhe_toolkit.fhe.engine import RowFailure, run_rows
from fhe_toolkit.fhe.glwe import RoundKey, decrypt_chunk
from fhe_toolkit.fhe.keystore import SPECS, KeyStore
from fhe_toolkit.fhe.packed import (
    PACKED_KEYS,
    PADDING_PREFIX,
    load_round_key,
    verify_products,
)
from fhe_toolkit.fhe.tasks import DecryptTask
from fhe_toolkit.fund.base import PACKED_LIVE, FundBase, report_progress
from fhe_toolkit.protocol.artifacts import (
    PACKED_SUBMISSION,
    SUBMISSION,
    Artifact,
    copy_artifact,
    open_answer,
)
from fhe_toolkit.protocol.modelspec import AnyModelSpec, LinearSpec, model_spec_from
from fhe_toolkit.protocol.signing import signed_by, verify_directory
from fhe_toolkit.registry import BundleRecord, SubmissionStatus


def check_binding(
    answer: Artifact, expected: Mapping[str, object], noun: str, answers: str
) -> None:
    """Refuse ``answer`` unless each manifest field in ``expected`` has the expected value.

    ``noun`` names the answer ("submission"), ``answers`` what it must answer ("training job
    'j1'"), for the message.
    """
    for field, value in expected.items():
        found = getattr(answer.manifest, field)
        if found != value:
            raise FundError(
                f"the {noun}'s {field} ({str(found)[:16]}) does not match {answers} "
                f"({str(value)[:16]}): it was made from another bundle or was altered."
            )


def keep_copy(answer: Artifact, target: Path) -> None:
    """Keep the answer in ``target`` as sent: its manifest, signature and listed files only,
    copied to a staging folder first, so a crash leaves no half copy and a copy kept by an
    attempt that was cut off is replaced only once the new one is complete (even when the
    answer is sent again from that very copy)."""
    staging = target.with_name(f".{target.name}.receiving")
    shutil.rmtree(staging, ignore_errors=True)
    copy_artifact(answer, staging)
    if target.exists():
        old = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


@contextmanager
def receiving(lock: Path, what: str) -> Iterator[None]:
    """Hold the one right to receive ``what`` (a lock file, released by the OS even if the
    process is killed): two receives of the same answer never both decrypt."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FundError(
                f"{what} is being received by another process right now; wait for it to finish "
                "(its result is final: a key set decrypts once)."
            ) from None
        yield


def decrypt_once(
    keys: KeyStore,
    scope: str,
    name: str,
    items: Sequence[Any],
    *,
    reason: str,
    workers: int | None = None,
    on_done: Callable[[int], None] | None = None,
    scheduler: str | None = None,
) -> tuple[dict[int, Any], list[RowFailure]]:
    """Decrypt every item with the key set of (``scope``, ``name``) in worker processes (or on
    the Dask cluster at ``scheduler``), then retire the key set (``reason`` is recorded),
    whatever happened.

    Returns the decrypted items by position, and the items that could not be decrypted (the
    runtime crashed or refused them: they were not computed under these keys).
    """
    task = DecryptTask(str(keys.directory(scope, name) / SPECS), keys.secret_source(scope, name))
    decrypted: dict[int, Any] = {}
    try:
        failures = run_rows(
            task, items, range(len(items)), decrypted.__setitem__,
            workers=workers, chunk_size=32, on_done=on_done, scheduler=scheduler,
        )  # fmt: skip
    except RowsCrashedError as exc:
        failures = exc.failures
    finally:
        keys.retire(scope, name, reason=reason)
    return decrypted, failures


class Intake(FundBase):
    def receive(
        self,
        round_id: str,
        submission_dir: str | Path,
        *,
        workers: int | None = None,
        scheduler: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> pd.Series:
        """Check a submission, decrypt it once, and keep the predictions.

        A circuit model's outputs are decrypted in worker processes (or on the Dask cluster at
        ``scheduler``); a packed model's here, with the round key.

        Refused before any decryption (keys kept, the participant can fix and resend): a
        manifest or file that does not check out, another round, model, key set or bundle,
        missing or repeated batches, a signature that is not the model owner's, a model already
        received, a round closed or past its deadline. A circuit model's keys are retired after
        its one decryption whatever happens; a packed model's products are refused unless they
        are exactly ``x · w`` over its features with integer weights within its declared bound,
        and the round's packed key is retired after the round's last packed model. Returns the
        predictions by id.
        """
        record = self.round_record(round_id)
        submission = open_answer(submission_dir)
        model = submission.model
        if submission.manifest.round_id != round_id:
            raise FundError(
                f"this submission answers round {submission.manifest.round_id!r}, not {round_id!r}."
            )
        bundle = record.bundles.get(model)
        if bundle is None:
            raise FundError(f"model {model!r} has no bundle in round {round_id!r}.")
        # The version the round was opened with: the model may have a newer one by now.
        spec = model_spec_from(json.loads(bundle.spec_json), f"{model!r} in {round_id!r}")
        expected_kind = PACKED_SUBMISSION if isinstance(spec, LinearSpec) else SUBMISSION
        if submission.kind is not expected_kind:
            raise FundError(
                f"model {model!r} takes a {expected_kind.name} in round {round_id!r}, not a "
                f"{submission.kind.name}: it was made from another bundle."
            )
        expected = {
            "key_set_id": bundle.key_set_id,
            "spec_sha256": bundle.spec_sha256,
            "bundle_sha256": bundle.bundle_sha256,
            "n_batches": bundle.n_batches,
        }
        check_binding(
            submission, expected, "submission",
            f"the bundle sent for model {model!r} in round {round_id!r}",
        )  # fmt: skip
        lock = self.round_dir(round_id) / "submissions" / f".{model}.lock"
        with receiving(lock, f"model {model!r}'s submission for round {round_id!r}"):
            return self._take(round_id, spec, bundle, submission, workers, scheduler, on_progress)

    def _take(
        self,
        round_id: str,
        spec: AnyModelSpec,
        bundle: BundleRecord,
        submission: Artifact,
        workers: int | None,
        scheduler: str | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> pd.Series:
        """Accept a checked submission, keep it, decrypt it once, and keep its predictions."""
        model = spec.name
        ciphertexts = submission.batches()["ciphertext"].tolist()
        signer = self._check_signature(submission.directory, model)
        self.db.accept_submission(round_id, model, submission.sha256, signer)
        keep_copy(submission, self.round_dir(round_id) / "submissions" / model)

        sizes = [len(batch) for batch in bundle.batch_ids]
        done = 0

        def report(batch: int) -> None:
            nonlocal done
            done += sizes[batch]
            report_progress(on_progress, done, sum(sizes))

        if isinstance(spec, LinearSpec):
            try:
                values = self._decrypt_packed(round_id, spec, ciphertexts, sizes, report)
            finally:
                self._retire_packed_key_when_done(round_id)
        else:
            decrypted, failures = decrypt_once(
                self.keys, round_id, model, ciphertexts,
                reason="decrypted the submission", workers=workers, on_done=report,
                scheduler=scheduler,
            )  # fmt: skip
            self._refuse_failures(round_id, model, failures, "circuit with this round's keys")
            codec = SpecCodec(spec)
            values = np.concatenate(
                [codec.decode(decrypted[b])[: sizes[b]] for b in range(len(sizes))]
            )
        predictions = pd.Series(values, index=pd.Index(bundle.ids, name="id"), name=model)
        predictions = predictions[~predictions.index.str.startswith(PADDING_PREFIX)]
        if not np.all(np.isfinite(values)):
            self._refuse(round_id, model, "non-finite predictions")
            raise FundError(f"{model!r}'s decrypted predictions contain NaN or infinity.")
        out = self.round_dir(round_id) / "predictions"
        out.mkdir(exist_ok=True)
        predictions.to_frame().to_parquet(out / f"{model}.parquet")
        constant = predictions.nunique() <= 1
        self.db.set_submission_status(
            round_id, model, SubmissionStatus.RECEIVED, "constant predictions" if constant else None
        )
        if isinstance(spec, LinearSpec):
            self._retire_packed_key_when_done(round_id)
        return predictions

    def _decrypt_packed(
        self,
        round_id: str,
        spec: LinearSpec,
        ciphertexts: list[bytes],
        sizes: list[int],
        report: Callable[[int], None],
    ) -> np.ndarray:
        """A packed model's products, decrypted with the round key and verified to be exactly
        ``x · w`` over its features; its predictions.

        Decrypted here, not in worker processes: every chunk's layout is checked against the
        round's parameters before the library reads it (:mod:`fhe_toolkit.fhe.glwe`), and the
        round key loads once for all the round's models.
        """
        key = self._round_key(round_id)
        products = []
        for batch, (ciphertext, rows) in enumerate(zip(ciphertexts, sizes, strict=True)):
            try:
                products.append(decrypt_chunk(key, ciphertext, n_rows=rows)[:, 0])
            except PackedError as exc:
                self._refuse(round_id, spec.name, "outputs could not be decrypted")
                raise FundError(
                    f"batch {batch} of {spec.name!r}'s submission could not be decrypted ({exc}); "
                    "it was not computed from this round's packed features. The model has no "
                    "score this round."
                ) from None
            report(batch)
        decrypted = np.concatenate(products)
        live = pd.read_parquet(self.round_dir(round_id) / PACKED_LIVE, columns=spec.features)
        try:
            verify_products(live.to_numpy(), spec, decrypted)
        except PackedError as exc:
            self._refuse(round_id, spec.name, "not a linear model within its declared bounds")
            raise FundError(
                f"{spec.name!r}'s decrypted outputs are refused: {exc} A packed submission must "
                "be the round's features times the model's own integer weights."
            ) from None
        return LinearCodec(spec).decode(decrypted)

    def _round_key(self, round_id: str) -> RoundKey:
        """The round's packed key, loaded once per fund object and round."""
        cached = self._round_keys.get(round_id)
        if cached is None or self.keys.is_retired(round_id, PACKED_KEYS):
            cached = self._round_keys[round_id] = load_round_key(self.keys, round_id)
        return cached

    def _retire_packed_key_when_done(self, round_id: str) -> None:
        bundles = self.round_record(round_id).bundles
        pending = (SubmissionStatus.AWAITING, SubmissionStatus.DECRYPTING)
        if not any(bundles[m].status in pending for m in self.packed_models(round_id)):
            self.retire_packed_key(round_id, "every packed model of the round was decrypted")
            self._round_keys.pop(round_id, None)

    def _refuse(self, round_id: str, model: str, detail: str) -> None:
        self.db.set_submission_status(round_id, model, SubmissionStatus.REFUSED, detail)

    def _refuse_failures(
        self, round_id: str, model: str, failures: list[RowFailure], what: str
    ) -> None:
        if not failures:
            return
        self._refuse(round_id, model, "outputs could not be decrypted")
        raise FundError(
            f"{len(failures)} batch(es) of {model!r}'s submission could not be decrypted "
            f"(first: batch {failures[0].position}: {failures[0].reason}); the outputs were "
            f"not computed from this {what}. The model has no score this round."
        )

    def _check_signature(self, directory: Path, model: str) -> str:
        """The model's owner, if the owner signed ``directory``; otherwise a refusal that names
        who did sign, when it is another known participant."""
        owner = self.db.owner(model)
        keys = self.db.participant_keys()
        try:
            verify_directory(directory, keys[owner], owner)
        except IdentityError as exc:
            for other, key in keys.items():
                if other != owner and signed_by(directory, key):
                    raise FundError(
                        f"this submission for model {model!r} is signed by {other!r}, who does "
                        f"not own the model ({owner!r} does); it is refused."
                    ) from None
            raise FundError(f"refused: {exc}") from None
        return owner
