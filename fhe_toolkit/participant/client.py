"""The participant's client for the fund's service (HTTP, :mod:`httpx`).

>>> with FundClient("http://fund.example:8000", "alice.pem") as fund:   # doctest: +SKIP
...     fund.download("R1", "alice-model", "bundle/")        # checked against the fund's key
...     run_bundle("bundle/", "alice-model/", "sub/", identity="alice.pem")
...     upload = fund.submit("sub/")                        # queued: 202 and a status URL
...     fund.wait(upload["upload"])                         # until it is decrypted

- **Every request is signed** with the participant's registered key (see
  :mod:`fhe_toolkit.service.wire`): the key is the participant's identity, no name or password.
- **The fund's key is pinned.** Given (``fund_key``), the server must serve that key; otherwise
  it is fetched on first contact and kept in ``pins`` (by default ``<identity>.funds.json``,
  server → key), and a server that later serves another key is refused.
- **Downloads are checked and resume.** The bundle's manifest must carry the fund's signature;
  each file it lists is fetched into ``.<name>.part`` and resumed from where it stopped (HTTP
  ``Range``, ``If-Range`` on its SHA-256), then checked against the manifest's size and
  SHA-256; the manifest is written last, and the folder is opened as a bundle to check it all.
- **Retries with backoff**: a connection that fails or breaks, and answers 429, 500, 502, 503
  or 504, are tried again after 0.5, 1, 2, 4... seconds (with jitter; ``Retry-After`` when the
  server says), ``retries`` times; every try is signed afresh (a request is never sent twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fhe_toolkit.errors import FheToolkitError, ServiceError
from fhe_toolkit.protocol.artifacts import PACKED_ROUND, ROUND_BUNDLE, open_answer, open_artifact
from fhe_toolkit.protocol.files import write_atomic
from fhe_toolkit.protocol.manifest import MANIFEST, Manifest
from fhe_toolkit.protocol.signing import (
    SIGNATURE,
    load_private_key,
    load_public_key,
    public_bytes,
    signed_by,
    verify_directory,
)
from fhe_toolkit.service.wire import (
    API,
    ARCHIVE_TYPE,
    CHUNK,
    EMPTY_SHA256,
    HEADER_SUBMISSION,
    pack_directory,
    sha256_of,
    sign_request,
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_WAIT = 60.0
PINS_SUFFIX = ".funds.json"
Progress = Callable[[int, int], None]
"""``on_progress(done, total)``, in bytes."""


class FundClient:
    """A participant's connection to the fund's service at ``server``, as the holder of the
    private key ``identity`` (the key registered with the fund)."""

    def __init__(
        self,
        server: str,
        identity: str | Path,
        *,
        fund_key: str | Path | bytes | None = None,
        pins: str | Path | None = None,
        retries: int = 6,
        backoff: float = 0.5,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ServiceError(f"the server must be an http:// or https:// URL, not {server!r}.")
        self.server = server.rstrip("/")
        self.key = load_private_key(identity)
        self.pins = Path(pins) if pins is not None else Path(f"{identity}{PINS_SUFFIX}")
        self.given_key = (
            None
            if fund_key is None
            else fund_key
            if isinstance(fund_key, bytes)
            else load_public_key(fund_key)
        )
        self.retries = retries
        self.backoff = backoff
        self.pinned_now = False
        """Whether the fund's key was pinned by this client (first contact)."""
        self._fund_key: bytes | None = None
        self.http = httpx.Client(
            base_url=self.server,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
            headers={"User-Agent": "fhe-toolkit-participant"},
        )

    def __enter__(self) -> FundClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- the fund's key ------------------------------------------------------------------
    def fund_key(self) -> bytes:
        """The fund's public key: the one given, or the one pinned for this server (pinned on
        first contact); refused if the server serves another."""
        if self._fund_key is not None:
            return self._fund_key
        response = self._send("GET", f"{API}/fund-key", signed=False)
        try:
            served = bytes.fromhex(response.json()["public_key"])
        except (ValueError, KeyError, TypeError):
            raise ServiceError(f"{self.server} did not answer with a fund's key.") from None
        if self.given_key is not None:
            if served != self.given_key:
                raise ServiceError(
                    f"{self.server} serves the fund key {served.hex()[:16]}…, not the one you "
                    f"gave ({self.given_key.hex()[:16]}…): it is not that fund; refusing it."
                )
        else:
            pins = self._read_pins()
            pinned = pins.get(self.server)
            if pinned is None:
                pins[self.server] = served.hex()
                self.pins.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.pins, (json.dumps(pins, indent=1) + "\n").encode(), mode=0o600)
                self.pinned_now = True
            elif pinned != served.hex():
                raise ServiceError(
                    f"{self.server} now serves the fund key {served.hex()[:16]}…, but "
                    f"{pinned[:16]}… was pinned for it in {self.pins}. If the fund really "
                    "changed its key (ask it), remove that line; otherwise this is not the fund."
                )
        self._fund_key = served
        return served

    def _read_pins(self) -> dict[str, str]:
        if not self.pins.exists():
            return {}
        try:
            pins = json.loads(self.pins.read_text())
        except (OSError, ValueError) as exc:
            raise ServiceError(f"{self.pins} is not a pins file (JSON): {exc}") from None
        if not isinstance(pins, dict):
            raise ServiceError(f"{self.pins} is not a pins file (a JSON object).")
        return {str(k): str(v) for k, v in pins.items()}

    # --- what the service says -----------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The service's limits, clock and version (unsigned)."""
        return dict(self._send("GET", f"{API}/info", signed=False).json())

    def rounds(self) -> list[dict[str, Any]]:
        """The open rounds in which this participant has models, with each model's status."""
        return list(self._json("GET", f"{API}/rounds")["rounds"])

    def status(self) -> dict[str, Any]:
        """This participant's models: per round, bundle status, uploads, scores and payout."""
        return self._json("GET", f"{API}/status")

    def upload(self, upload_id: str) -> dict[str, Any]:
        """Where an upload stands."""
        return self._json("GET", f"{API}/uploads/{upload_id}")

    def wait(
        self, upload_id: str, *, timeout: float = 600.0, interval: float = 1.0
    ) -> dict[str, Any]:
        """Ask where an upload stands until it is decrypted (or refused, or failed)."""
        deadline = time.monotonic() + timeout
        while True:
            upload = self.upload(upload_id)
            if not upload["pending"]:
                return upload
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"upload {upload_id} is still {upload['status']} after {timeout:.0f} s; ask "
                    "again later (`participant status`)."
                )
            time.sleep(interval)

    def leaderboard(self, sort_by: str = "reputation") -> list[dict[str, Any]]:
        response = self._send("GET", f"{API}/leaderboard?sort={sort_by}", signed=False)
        return list(_checked(response).json()["models"])

    # --- download ------------------------------------------------------------------------
    def download(
        self,
        round_id: str,
        model: str,
        out_dir: str | Path,
        *,
        on_progress: Progress | None = None,
    ) -> Path:
        """Download ``model``'s bundle for the round (or the round's packed dataset, for a
        packed model) into ``out_dir``, checked against the fund's signature; an interrupted
        download resumes where it stopped. Returns ``out_dir``."""
        fund_key = self.fund_key()
        base = f"{API}/rounds/{round_id}/models/{model}/bundle"
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        raw = self._json_bytes(f"{base}/{MANIFEST}")
        signature = self._json_bytes(f"{base}/{SIGNATURE}")
        try:
            Ed25519PublicKey.from_public_bytes(fund_key).verify(signature, raw)
        except (InvalidSignature, ValueError):
            raise ServiceError(
                f"the bundle of {model!r} in round {round_id!r} is not signed by the fund "
                f"({fund_key.hex()[:16]}…): refusing it."
            ) from None
        try:
            manifest = Manifest.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise ServiceError(f"the bundle's manifest is not valid: {exc}") from None
        expected_kind = manifest.kind in (ROUND_BUNDLE.name, PACKED_ROUND.name)
        own_model = manifest.kind == PACKED_ROUND.name or manifest.model == model
        if not expected_kind or manifest.round_id != round_id or not own_model:
            raise ServiceError(
                f"the service sent a {manifest.kind} of round {manifest.round_id!r} (model "
                f"{manifest.model!r}) for {model!r} in {round_id!r}: refusing it."
            )
        if (out / MANIFEST).exists() and (out / MANIFEST).read_bytes() != raw:
            raise ServiceError(
                f"{out} holds another bundle already; download into an empty folder."
            )
        total = sum(entry.size for entry in manifest.files.values())
        done = [0]

        def advance(count: int) -> None:
            done[0] += count
            if on_progress is not None:
                on_progress(done[0], total)

        advance(0)
        for name, entry in sorted(manifest.files.items()):
            self._fetch(f"{base}/{name}", out, name, entry.size, entry.sha256, advance)
        write_atomic(out / SIGNATURE, signature)
        write_atomic(out / MANIFEST, raw)
        kind = PACKED_ROUND if manifest.kind == PACKED_ROUND.name else ROUND_BUNDLE
        try:
            open_artifact(out, kind)
            verify_directory(out, fund_key, "the fund")
        except FheToolkitError as exc:
            raise ServiceError(f"the downloaded bundle does not check out: {exc}") from None
        return out

    def _fetch(
        self,
        path: str,
        out: Path,
        name: str,
        size: int,
        sha256: str,
        advance: Callable[[int], None],
    ) -> None:
        """One file, resumed from its ``.part`` when there is one, checked against its hash."""
        final, part = out / name, out / f".{name}.part"
        if final.is_file() and final.stat().st_size == size and sha256_of(final) == sha256:
            advance(size)
            return
        counted, broken, afresh = 0, 0, False
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            advance(have - counted)
            counted = have
            if have < size:
                headers = {"If-Range": f'"{sha256}"'}
                if have:
                    headers["Range"] = f"bytes={have}-"
                try:
                    counted = self._stream_into(path, part, have, headers, advance)
                except httpx.TransportError as exc:
                    broken += 1
                    if broken > self.retries:
                        raise ServiceError(
                            f"the download of {name} kept breaking ({exc}); run the same "
                            "command again to resume it."
                        ) from None
                    counted = part.stat().st_size if part.exists() else 0
                    self._pause(broken, None)
                    continue
                if counted < size:
                    broken += 1
                    if broken > self.retries:
                        raise ServiceError(f"the download of {name} keeps ending short.")
                    continue
            if sha256_of(part) == sha256:
                os.replace(part, final)
                return
            part.unlink()
            advance(-counted)
            counted = 0
            if afresh:
                raise ServiceError(
                    f"{name} does not match the SHA-256 in the fund's signed manifest, even "
                    "downloaded afresh: the service is serving a damaged file."
                )
            afresh = True

    def _stream_into(
        self,
        path: str,
        part: Path,
        have: int,
        headers: dict[str, str],
        advance: Callable[[int], None],
    ) -> int:
        """Fetch from byte ``have`` (or from the start when the server sends the whole file)
        into ``part``; the bytes it holds afterwards."""
        with self._stream("GET", path, headers) as response:
            if response.status_code == 206:
                start = response.headers.get("content-range", "").removeprefix("bytes ")
                if not start.startswith(f"{have}-"):
                    raise ServiceError(f"the service sent bytes {start} when {have}- was asked.")
                mode = "ab"
            else:
                advance(-have)
                have, mode = 0, "wb"
            with part.open(mode) as handle:
                for block in response.iter_raw(CHUNK):
                    handle.write(block)
                    have += len(block)
                    advance(len(block))
        return have

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        response = self._send(method, path, headers=headers, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                _checked(response)
            yield response
        finally:
            response.close()

    # --- upload --------------------------------------------------------------------------
    def submit(
        self, submission_dir: str | Path, *, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Upload a signed submission (made by ``run_bundle``); the upload as the service
        queued it (``status_url`` says where it stands). Checked here first: the same checks
        the fund makes of its files, and that it is signed with this identity. The same
        submission sent again is the same upload."""
        try:
            answer = open_answer(submission_dir)
        except FheToolkitError as exc:
            raise ServiceError(f"not sending {submission_dir}: {exc}") from None
        if not signed_by(submission_dir, public_bytes(self.key)):
            raise ServiceError(
                f"{submission_dir} is not signed with this identity's key: make it with "
                "`participant run ... --identity` and the key you registered with the fund."
            )
        round_id, model = answer.manifest.round_id, answer.model
        with tempfile.TemporaryDirectory(prefix="fhe-submission-") as folder:
            archive = Path(folder) / "submission.tar"
            with archive.open("wb") as handle:
                pack_directory(submission_dir, handle)
            size, digest = archive.stat().st_size, sha256_of(archive)

            def body() -> Iterator[bytes]:
                sent = 0
                with archive.open("rb") as handle:
                    for block in iter(lambda: handle.read(CHUNK), b""):
                        sent += len(block)
                        if on_progress is not None:
                            on_progress(sent, size)
                        yield block

            response = self._send(
                "POST",
                f"{API}/rounds/{round_id}/models/{model}/submission",
                body=body,
                body_sha256=digest,
                headers={
                    "Content-Type": ARCHIVE_TYPE,
                    "Content-Length": str(size),
                    HEADER_SUBMISSION: answer.sha256,
                },
            )
        return dict(_checked(response).json())

    # --- requests ------------------------------------------------------------------------
    def _json(self, method: str, path: str) -> dict[str, Any]:
        return dict(_checked(self._send(method, path)).json())

    def _json_bytes(self, path: str) -> bytes:
        return _checked(self._send("GET", path)).content

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Callable[[], Iterator[bytes]] | None = None,
        body_sha256: str = EMPTY_SHA256,
        headers: dict[str, str] | None = None,
        signed: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request, signed afresh on every try; tried again on a connection that fails
        and on answers that say "later"."""
        for attempt in range(self.retries + 1):
            request = self.http.build_request(
                method, path, content=None if body is None else body(), headers=headers
            )
            if signed:
                target = request.url.raw_path.decode("ascii")
                request.headers.update(
                    sign_request(self.key, method, target, body_sha256, self.fund_key())
                )
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ServiceError(
                        f"cannot reach the fund's service at {self.server} ({exc}); tried "
                        f"{attempt + 1} times."
                    ) from None
                self._pause(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                later = response.headers.get("retry-after")
                response.close()
                self._pause(attempt, later)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        wait = self.backoff * 2**attempt * (0.5 + random.random())  # noqa: S311 - jitter
        if retry_after is not None and retry_after.isdigit():
            wait = max(wait, float(retry_after))
        time.sleep(min(wait, MAX_WAIT))


def _checked(response: httpx.Response) -> httpx.Response:
    """The response, or the service's refusal as a :class:`ServiceError`."""
    if response.status_code < 400:
        return response
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    raise ServiceError(
        f"the fund's service refused ({response.status_code}): {message}", response.status_code
    )
