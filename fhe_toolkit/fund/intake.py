"""Round submissions into the one receive path (:mod:`fhe_toolkit.fund.answers`): what a round
checks before accepting one, and how each path (a circuit model's own keys, or the round's packed
key) decrypts it and stores its predictions.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fhe_toolkit.errors import AnswerRefused, FundError, PackedError
from fhe_toolkit.fhe.codecs import LinearCodec, SpecCodec
from fhe_toolkit.fhe.glwe import RoundKey, decrypt_chunk
from fhe_toolkit.fhe.packed import (
    PACKED_KEYS,
    PADDING_PREFIX,
    load_round_key,
    verify_products,
)
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
from fhe_toolkit.fund.base import PACKED_LIVE, FundBase, report_progress
from fhe_toolkit.protocol.artifacts import (
    PACKED_SUBMISSION,
    SUBMISSION,
    Artifact,
    open_answer,
)
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.protocol.modelspec import AnyModelSpec, LinearSpec, ModelSpec, model_spec_from
from fhe_toolkit.registry import BundleRecord, SubmissionStatus

STAGES = {
    SubmissionStatus.AWAITING: Stage.AWAITING,
    SubmissionStatus.ACCEPTED: Stage.ACCEPTED,
    SubmissionStatus.DECRYPTING: Stage.DECRYPTING,
    SubmissionStatus.RECEIVED: Stage.DONE,
    SubmissionStatus.REFUSED: Stage.DONE,
}
PENDING = (SubmissionStatus.AWAITING, SubmissionStatus.ACCEPTED, SubmissionStatus.DECRYPTING)


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
        its one decryption; a packed model's products are refused unless they are exactly
        ``x · w`` over its features with integer weights within its declared bound, and the
        round's packed key is retired after the round's last packed model. A receive of the
        model that was cut off is finished or rolled back first (see
        :mod:`fhe_toolkit.fund.answers`). Returns the predictions by id.
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
        submission.batches()  # missing or repeated batches are refused before it is accepted
        slot_type = PackedSubmission if isinstance(spec, LinearSpec) else CircuitSubmission
        slot = slot_type(self, round_id, spec, bundle, workers, scheduler, on_progress)
        predictions: pd.Series = receive_answer(slot, submission)
        return predictions

    def round_key(self, round_id: str) -> RoundKey:
        """The round's packed key, loaded once per fund object and round."""
        cached = self._round_keys.get(round_id)
        if cached is None or self.keys.is_retired(round_id, PACKED_KEYS):
            cached = self._round_keys[round_id] = load_round_key(self.keys, round_id)
        return cached

    def retire_packed_key_when_done(self, round_id: str) -> None:
        """Retire the round's packed key once no packed model's submission is pending."""
        bundles = self.round_record(round_id).bundles
        if not any(bundles[m].status in PENDING for m in self.packed_models(round_id)):
            self.retire_packed_key(round_id, "every packed model of the round was decrypted")
            self._round_keys.pop(round_id, None)


class RoundSubmission(Slot):
    """A model's submission to a round: recorded with its bundle, kept in
    ``rounds/<round>/submissions/<model>/``, decrypted into ``predictions/<model>.parquet``."""

    def __init__(
        self,
        fund: Intake,
        round_id: str,
        spec: AnyModelSpec,
        bundle: BundleRecord,
        workers: int | None,
        scheduler: str | None,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.fund, self.round_id, self.spec, self.bundle = fund, round_id, spec, bundle
        self.model = spec.name
        self.workers, self.scheduler, self.on_progress = workers, scheduler, on_progress
        self.what = f"model {self.model!r}'s submission for round {round_id!r}"
        self.kind = PACKED_SUBMISSION if isinstance(spec, LinearSpec) else SUBMISSION
        submissions = fund.round_dir(round_id) / "submissions"
        self.lock = submissions / f".{self.model}.lock"
        self.kept = submissions / self.model
        self.output = fund.round_dir(round_id) / "predictions" / f"{self.model}.parquet"
        self.sizes = [len(batch) for batch in bundle.batch_ids]

    def stage(self) -> Stage:
        return STAGES[self.fund.round_record(self.round_id).bundles[self.model].status]

    def accepted_sha256(self) -> str | None:
        return self.fund.db.accepted_submission(self.round_id, self.model)

    def check_signer(self, answer: Artifact) -> str:
        owner = self.fund.db.owner(self.model)
        return check_signer(
            self.fund.db, answer.directory, owner, "submission", f"the model {self.model!r}"
        )

    def accept(self, answer: Artifact, signer: str) -> None:
        self.fund.db.accept_submission(self.round_id, self.model, answer.sha256, signer)

    def roll_back(self) -> None:
        self.fund.db.roll_back_submission(self.round_id, self.model)

    def start_decrypting(self) -> None:
        self._record(SubmissionStatus.DECRYPTING)

    def decrypt(self, kept: Artifact) -> pd.Series:
        values = self._values(kept.batches()["ciphertext"].tolist())
        if not np.all(np.isfinite(values)):
            raise AnswerRefused(
                "non-finite predictions",
                f"{self.model!r}'s decrypted predictions contain NaN or infinity.",
            )
        predictions = pd.Series(values, index=pd.Index(self.bundle.ids, name="id"), name=self.model)
        return predictions[~predictions.index.str.startswith(PADDING_PREFIX)]

    @abstractmethod
    def _values(self, ciphertexts: list[bytes]) -> np.ndarray:
        """The predictions of every row the bundle held, in order."""

    def _report(self) -> Callable[[int], None]:
        """Progress, reported after each decrypted batch."""
        done = 0

        def report(batch: int) -> None:
            nonlocal done
            done += self.sizes[batch]
            report_progress(self.on_progress, done, sum(self.sizes))

        return report

    def store(self, output: pd.Series) -> None:
        self.output.parent.mkdir(exist_ok=True)
        write_atomic(self.output, output.to_frame().to_parquet())

    def load(self) -> pd.Series:
        return pd.read_parquet(self.output)[self.model]

    def finish(self, output: pd.Series) -> None:
        constant = output.nunique() <= 1
        self._record(SubmissionStatus.RECEIVED, "constant predictions" if constant else None)

    def refuse(self, detail: str) -> None:
        self._record(SubmissionStatus.REFUSED, detail)

    def _record(self, status: SubmissionStatus, detail: str | None = None) -> None:
        self.fund.db.set_submission_status(self.round_id, self.model, status, detail)


class CircuitSubmission(RoundSubmission):
    """A compiled model's outputs, decrypted in worker processes with its own key set."""

    spec: ModelSpec

    def keys_usable(self) -> bool:
        return usable(self.fund.keys, self.round_id, self.model)

    def _values(self, ciphertexts: list[bytes]) -> np.ndarray:
        decrypted, failures = decrypt_items(
            self.fund.keys, self.round_id, self.model, ciphertexts,
            workers=self.workers, on_done=self._report(), scheduler=self.scheduler,
        )  # fmt: skip
        if failures:
            raise AnswerRefused(
                "outputs could not be decrypted",
                f"{len(failures)} batch(es) of {self.model!r}'s submission could not be "
                f"decrypted (first: batch {failures[0].position}: {failures[0].reason}); the "
                "outputs were not computed from this circuit with this round's keys. The model "
                "has no score this round.",
            )
        codec = SpecCodec(self.spec)
        return np.concatenate(
            [codec.decode(decrypted[b])[: self.sizes[b]] for b in range(len(self.sizes))]
        )

    def retire_keys(self) -> None:
        retire_once(self.fund.keys, self.round_id, self.model, "decrypted the submission")


class PackedSubmission(RoundSubmission):
    """A packed model's products, decrypted here with the round's key and verified to be
    exactly ``x · w`` over its features.

    Decrypted here, not in worker processes: every chunk's layout is checked against the
    round's parameters before the library reads it (:mod:`fhe_toolkit.fhe.glwe`), and the round
    key loads once for all the round's models.
    """

    spec: LinearSpec

    def keys_usable(self) -> bool:
        return usable(self.fund.keys, self.round_id, PACKED_KEYS)

    def _values(self, ciphertexts: list[bytes]) -> np.ndarray:
        key = self.fund.round_key(self.round_id)
        report = self._report()
        products = []
        for batch, (ciphertext, rows) in enumerate(zip(ciphertexts, self.sizes, strict=True)):
            try:
                products.append(decrypt_chunk(key, ciphertext, n_rows=rows)[:, 0])
            except PackedError as exc:
                raise AnswerRefused(
                    "outputs could not be decrypted",
                    f"batch {batch} of {self.model!r}'s submission could not be decrypted "
                    f"({exc}); it was not computed from this round's packed features. The model "
                    "has no score this round.",
                ) from None
            report(batch)
        decrypted = np.concatenate(products)
        live = pd.read_parquet(
            self.fund.round_dir(self.round_id) / PACKED_LIVE, columns=self.spec.features
        )
        try:
            verify_products(live.to_numpy(), self.spec, decrypted)
        except PackedError as exc:
            raise AnswerRefused(
                "not a linear model within its declared bounds",
                f"{self.model!r}'s decrypted outputs are refused: {exc} A packed submission "
                "must be the round's features times the model's own integer weights.",
            ) from None
        return LinearCodec(self.spec).decode(decrypted)

    def retire_keys(self) -> None:
        """The round's key is shared: retired once the last packed model's outcome is recorded
        (so after :meth:`finish` or :meth:`refuse`, which call this again)."""
        self.fund.retire_packed_key_when_done(self.round_id)

    def finish(self, output: pd.Series) -> None:
        super().finish(output)
        self.retire_keys()

    def refuse(self, detail: str) -> None:
        super().refuse(detail)
        self.retire_keys()
