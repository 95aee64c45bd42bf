"""One receive path for what participants send back: round submissions and training results.

Every answer goes through the same states, recorded in the fund's registry before each step, so
that a fund killed at any point finishes or rolls back cleanly the next time it receives:

==========  ============================================  =====================================
state       what holds                                    cut off here, the next receive
==========  ============================================  =====================================
awaiting    nothing accepted                              takes the answer it is given
accepted    the answer checked out (manifest, files,      rolls back to awaiting (nothing was
            binding, signer) and is recorded; its copy    decrypted), then takes the answer it
            is being kept                                 is given
decrypting  the kept copy is complete; it is being        finishes: decrypts the kept copy (the
            decrypted                                     same ciphertexts, never another answer)
received    the output is stored and the keys retired     retires the keys, if that was cut off
/ refused   (or the refusal recorded, then the keys
            retired)
==========  ============================================  =====================================

(a training job says ``decrypted`` for ``received``). The output (predictions, weights) is
written whole, through a temporary file and a rename, then the keys are retired, then the state
says ``received``: never "keys retired but nothing stored", and an answer cut off in between is
left ``decrypting``, where the operator sees it and the next receive finishes it. A refusal after
decryption is recorded before the keys are retired. Once received or refused, any answer
(the same one too) is refused as received already.

One process at a time works on an answer: it holds a lock file, which the OS releases when the
process dies however it dies, so an answer found ``accepted`` or ``decrypting`` by the lock's
holder was cut off.
"""

from __future__ import annotations

import fcntl
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from fhe_toolkit.errors import (
    AnswerRefused,
    FundError,
    IdentityError,
    KeyStoreError,
    ManifestError,
    RowsCrashedError,
)
from fhe_toolkit.fhe.engine import RowFailure, run_rows
from fhe_toolkit.fhe.keystore import SPECS, KeyStore
from fhe_toolkit.fhe.tasks import DecryptTask
from fhe_toolkit.protocol.artifacts import Artifact, Kind, copy_artifact, open_artifact
from fhe_toolkit.protocol.signing import signed_by, verify_directory
from fhe_toolkit.registry import Registry


class Stage(Enum):
    """Where an answer stands, whatever its registry record calls it."""

    AWAITING = "awaiting"
    ACCEPTED = "accepted"
    DECRYPTING = "decrypting"
    DONE = "done"
    """Received or refused after decryption: final."""


class Slot(ABC):
    """Where one answer to one bundle lands: its record in the registry, its lock, its kept
    copy, its keys and its decrypted output."""

    what: str
    """The answer, for messages: "model 'lin''s submission for round 'r1'"."""
    kind: Kind
    lock: Path
    kept: Path
    output: Path

    @abstractmethod
    def stage(self) -> Stage: ...

    @abstractmethod
    def accepted_sha256(self) -> str | None:
        """The manifest hash of the answer accepted, if any (unknown for some old records)."""

    @abstractmethod
    def check_signer(self, answer: Artifact) -> str:
        """Who signed ``answer``, if it is whose answer this is; refused otherwise."""

    @abstractmethod
    def accept(self, answer: Artifact, signer: str) -> None:
        """awaiting → accepted, or refused (received already, too late...)."""

    @abstractmethod
    def roll_back(self) -> None:
        """accepted → awaiting."""

    @abstractmethod
    def start_decrypting(self) -> None:
        """accepted → decrypting."""

    @abstractmethod
    def keys_usable(self) -> bool: ...

    @abstractmethod
    def decrypt(self, kept: Artifact) -> Any:
        """The decrypted output of the kept copy; :class:`AnswerRefused` if it cannot be used."""

    @abstractmethod
    def store(self, output: Any) -> None:
        """Write the output to :attr:`output`, whole or not at all."""

    @abstractmethod
    def load(self) -> Any: ...

    @abstractmethod
    def finish(self, output: Any) -> None:
        """decrypting → received."""

    @abstractmethod
    def refuse(self, detail: str) -> None:
        """decrypting → refused."""

    @abstractmethod
    def retire_keys(self) -> None:
        """Retire the keys, unless they are retired already."""


def receive_answer(slot: Slot, answer: Artifact) -> Any:
    """Take ``answer`` (opened and bound to its bundle by the caller) into ``slot``: finish or
    roll back an earlier receive that was cut off, accept, keep, decrypt once, store, retire.
    Returns the decrypted output."""
    with receiving(slot.lock, slot.what):
        stage = slot.stage()
        if stage is Stage.ACCEPTED:
            slot.roll_back()  # cut off while keeping its copy: nothing was decrypted
        elif stage is Stage.DECRYPTING:
            finished, output = _finish_cut_off(slot, answer)
            if finished != answer.sha256:
                raise FundError(
                    f"{slot.what} was received already: the one accepted earlier "
                    f"({_short(finished)}), cut off while being decrypted, was finished now from "
                    "the fund's kept copy. This one is refused; each bundle is answered once."
                )
            return output
        elif stage is Stage.DONE:
            slot.retire_keys()  # in case a receive was cut off before it retired them
            raise FundError(f"{slot.what} was received already; each bundle is answered once.")
        slot.accept(answer, slot.check_signer(answer))
        keep_copy(answer, slot.kept)
        kept = _kept(slot, answer.sha256)
        if kept is None:
            raise FundError(f"{slot.kept} changed while it was being kept; receive it again.")
        slot.start_decrypting()
        return _decrypt(slot, kept)


def _finish_cut_off(slot: Slot, answer: Artifact) -> tuple[str | None, Any]:
    """Finish an answer whose receive was cut off while decrypting; returns the finished
    answer's manifest hash, and its output."""
    accepted = slot.accepted_sha256()
    if slot.output.is_file():  # stored, then cut off before it was recorded
        output = slot.load()
        slot.retire_keys()
        slot.finish(output)
        return accepted, output
    if not slot.keys_usable():
        slot.refuse("cut off while decrypting; its keys were retired with nothing stored")
        raise FundError(
            f"{slot.what} was cut off while being decrypted, and its keys were retired since with "
            "nothing stored (by an earlier version of the toolkit, or when the round was "
            "resolved): it cannot be decrypted again and is recorded as refused."
        )
    kept = _kept(slot, accepted)
    if kept is None:
        if accepted is None or answer.sha256 != accepted:
            raise FundError(
                f"{slot.what} ({_short(accepted)}) was cut off while being decrypted, and the "
                f"fund's copy of it ({slot.kept}) is missing or damaged. Its keys decrypt that "
                "answer only: ask its sender for the same directory again, and receive it."
            )
        slot.check_signer(answer)
        keep_copy(answer, slot.kept)
        kept = _kept(slot, accepted)
        if kept is None:
            raise FundError(f"{slot.kept} changed while it was being kept; receive it again.")
    return kept.sha256, _decrypt(slot, kept)


def _decrypt(slot: Slot, kept: Artifact) -> Any:
    try:
        output = slot.decrypt(kept)
    except AnswerRefused as refusal:
        slot.refuse(refusal.detail)
        slot.retire_keys()
        raise FundError(refusal.message) from None
    slot.store(output)
    slot.retire_keys()
    slot.finish(output)
    return output


def _kept(slot: Slot, accepted: str | None) -> Artifact | None:
    """The kept copy, if it is complete and is the accepted answer (any complete one when the
    record does not say which)."""
    try:
        kept = open_artifact(slot.kept, slot.kind, exact=True)
    except ManifestError:
        return None
    return kept if accepted in (None, kept.sha256) else None


def _short(sha256: str | None) -> str:
    return "SHA-256 unknown" if sha256 is None else f"manifest SHA-256 {sha256[:12]}…"


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


def check_signer(db: Registry, directory: Path, owner: str, noun: str, owned: str) -> str:
    """``owner``, if ``owner`` signed ``directory``; otherwise a refusal that names who did
    sign, when it is another registered participant. ``noun`` names the answer
    ("submission"), ``owned`` what ``owner`` owns ("the model 'lin'")."""
    keys = db.participant_keys()
    try:
        verify_directory(directory, keys[owner], owner)
    except IdentityError as exc:
        for other, key in keys.items():
            if other != owner and signed_by(directory, key):
                raise FundError(
                    f"this {noun} for {owned} is signed by {other!r}, who does not own {owned} "
                    f"({owner!r} does); it is refused."
                ) from None
        raise FundError(f"refused: {exc}") from None
    return owner


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


def decrypt_items(
    keys: KeyStore,
    scope: str,
    name: str,
    items: Sequence[Any],
    *,
    workers: int | None = None,
    on_done: Callable[[int], None] | None = None,
    scheduler: str | None = None,
) -> tuple[dict[int, Any], list[RowFailure]]:
    """Decrypt every item with the key set of (``scope``, ``name``) in worker processes (or on
    the Dask cluster at ``scheduler``). The caller retires the keys once the outcome is stored.

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
    return decrypted, failures


def retire_once(keys: KeyStore, scope: str, name: str, reason: str) -> None:
    """Retire the key set of (``scope``, ``name``) unless it cannot decrypt anyway (retired
    already: a receive that finishes one cut off may come here twice)."""
    if usable(keys, scope, name):
        keys.retire(scope, name, reason=reason)


def usable(keys: KeyStore, scope: str, name: str) -> bool:
    """Whether the key set of (``scope``, ``name``) can still decrypt."""
    try:
        keys.keyset_path(scope, name)
    except KeyStoreError:
        return False
    return True
