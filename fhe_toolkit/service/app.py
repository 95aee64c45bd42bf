"""The fund's service as an ASGI application (Starlette), over the fund's directory and records.

==========================================================  ======  ==============================
route                                                       who     what
==========================================================  ======  ==============================
``GET /v1/fund-key``                                        anyone  the fund's public signing key
``GET /v1/info``                                            anyone  limits, clock, version
``GET /v1/rounds``                                          signed  open rounds with your models
``GET /v1/rounds/{round}/models/{model}/bundle``            owner   the bundle's file list
``GET /v1/rounds/{round}/models/{model}/bundle/{file}``     owner   one file, with ``Range``
``GET /v1/rounds/{round}/packed/{file}``                    packed  the shared packed dataset
``POST /v1/rounds/{round}/models/{model}/submission``       owner   upload (tar): 202 + status URL
``GET /v1/uploads/{id}``                                    owner   where an upload stands
``GET /v1/status``                                          signed  your models: statuses, scores
``GET /v1/leaderboard``                                     anyone  the leaderboard (JSON)
``GET /leaderboard``                                        anyone  the leaderboard (HTML)
``GET /report``                                             anyone  the tournament report (HTML)
==========================================================  ======  ==============================

"signed": any registered participant's signed request (:mod:`fhe_toolkit.service.wire`);
"owner": only the participant who owns the model (another gets 403); "packed": any
participant with a packed model in the round (the packed dataset is shared by all of them).
Errors are JSON ``{"error": message}`` with the HTTP status that fits (401 unsigned, stale,
replayed or forged; 403 not yours; 404 unknown; 409 not now; 413 too large; 429 too many
requests, with ``Retry-After``; 503 too many uploads at once, with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pandas as pd
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from fhe_toolkit import __version__
from fhe_toolkit.errors import (
    FheToolkitError,
    IdentityError,
    LeaderboardError,
    ReportError,
    ServiceError,
)
from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.base import PACKED_DIR
from fhe_toolkit.fund.leaderboard import SORT_KEYS
from fhe_toolkit.fund.report import write_report
from fhe_toolkit.protocol.artifacts import open_answer
from fhe_toolkit.protocol.files import read_regular
from fhe_toolkit.protocol.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    NAME_PATTERN,
    ROUND_PATTERN,
    Manifest,
)
from fhe_toolkit.protocol.signing import SIGNATURE, verify_directory
from fhe_toolkit.registry import RoundRecord, RoundStatus, SubmissionStatus
from fhe_toolkit.registry.records import UploadRecord, UploadStatus
from fhe_toolkit.registry.store import ServiceStore
from fhe_toolkit.service.config import ServiceConfig
from fhe_toolkit.service.nonces import NONCES_FILE, NonceStore
from fhe_toolkit.service.wire import (
    API,
    CHUNK,
    EMPTY_SHA256,
    HEADER_CONTENT_SHA256,
    HEADER_SUBMISSION,
    SignedFields,
    unpack_archive,
)
from fhe_toolkit.service.worker import SUBMISSION_DIR, WorkerSupervisor, file_lock

log = logging.getLogger("fhe_toolkit.service")
MAX_SIGNATURE_BYTES = 1024
ROUNDED = 4
"""Scores and payouts go out rounded to 4 decimals, as the fund's results files are."""
REPORT_TTL = 30.0
UPLOAD_IDLE_TIMEOUT = 60.0
"""Seconds an upload may send nothing before it is dropped."""


class RateLimiter:
    """At most ``per_minute`` requests per participant in any 60 seconds (a sliding window)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}

    def check(self, who: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        times = self._seen.setdefault(who, deque())
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.per_minute:
            wait = max(1, math.ceil(60 - (now - times[0])))
            raise ServiceError(
                f"more than {self.per_minute} requests in a minute from {who}; wait {wait} s.",
                429,
                {"Retry-After": str(wait)},
            )
        times.append(now)


class Service:
    """What the application serves: the fund, its service records, and the service's state."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.fund = Fund(config.fund_dir, config.key_dir, database=config.database, create=False)
        self.store = ServiceStore(self.fund.db)
        self.fund_key = self.fund.public_key()
        self.rate = RateLimiter(self.limits.requests_per_minute)
        self.active_uploads = 0
        self.uploading: set[tuple[str, str]] = set()
        self.supervisor = WorkerSupervisor(config) if config.decrypt else None
        self._lock: contextlib.ExitStack | None = None
        self.nonces: NonceStore | None = None
        self._keys: tuple[float, dict[str, str]] = (0.0, {})
        self._owners: tuple[float, dict[str, str]] = (0.0, {})
        self._manifests: dict[Path, tuple[tuple[int, int], bytes, Manifest]] = {}
        self._report: tuple[float, bytes | None, str] = (0.0, None, "")

    # --- life ----------------------------------------------------------------------------
    def acquire(self) -> None:
        """Become the one server of this fund (refused if another one serves it), and make the
        service's folders; leftovers of uploads cut off mid-way are removed."""
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(file_lock(self.config.service_dir / "server.lock", wait=False))
        except BlockingIOError:
            raise ServiceError(
                f"another server is serving the fund in {self.config.fund_dir} (it holds "
                f"{self.config.service_dir / 'server.lock'}); stop it first."
            ) from None
        self._lock = stack
        self.nonces = NonceStore(self.config.service_dir / NONCES_FILE)
        shutil.rmtree(self.config.incoming_dir, ignore_errors=True)
        self.config.incoming_dir.mkdir(parents=True, mode=0o700)
        self.config.uploads_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        known = {upload.upload_id: upload for upload in self.store.uploads()}
        for folder in self.config.uploads_dir.iterdir():
            upload = known.get(folder.name)
            # Moved here, then cut off before it was queued; or finished, then cut off before
            # its files were removed. A failed upload's files stay for the fund's operator.
            if upload is None or upload.status in (UploadStatus.RECEIVED, UploadStatus.REFUSED):
                shutil.rmtree(folder, ignore_errors=True)

    def start(self) -> None:
        if self._lock is None:
            self.acquire()
        if self.supervisor is not None:
            self.supervisor.start()

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.nonces is not None:
            self.nonces.close()
            self.nonces = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- authentication ------------------------------------------------------------------
    async def authenticate(self, request: Request, body_sha256: str | None = EMPTY_SHA256) -> str:
        """The participant who signed ``request``, once its signature, timestamp, nonce and
        rate are checked; ``body_sha256``: the body's hash when known (``None`` for an upload,
        checked as it streams in)."""
        fields = SignedFields(request.headers)
        if body_sha256 is not None and fields.body_sha256 != body_sha256:
            raise ServiceError(
                "the signed body hash is not the body's: sign the body you send.", 401
            )
        skew = self.limits.max_clock_skew
        drift = fields.timestamp - time.time()
        if abs(drift) > skew:
            side = "ahead of" if drift > 0 else "behind"
            raise ServiceError(
                f"the request's timestamp is {abs(drift):,.0f} s {side} "
                f"the fund's clock (at most {skew} s is accepted): a request is only good once, "
                "when it is made. Check your clock and send a new request.",
                401,
            )
        participant = await run_in_threadpool(self.participant_of, fields.key_hex)
        if participant is None:
            raise ServiceError(
                "that key is not a registered participant's (fund add-participant).", 401
            )
        if not fields.verify(request.method, request_target(request), self.fund_key):
            raise ServiceError(
                f"the signature does not verify with {participant}'s key: the request was signed "
                "by another key, altered, or meant for another fund.",
                401,
            )
        self.rate.check(participant)
        if self.nonces is None:
            raise ServiceError("the service is not started.", 503)
        if not self.nonces.use(participant, fields.nonce, fields.timestamp + skew):
            raise ServiceError(
                "this request was sent before (its nonce is used): it is refused.", 401
            )
        return participant

    def participant_of(self, key_hex: str) -> str | None:
        """The registered participant whose key this is (participants added while the service
        runs are seen at once)."""
        at, keys = self._keys
        if key_hex not in keys or time.monotonic() - at > 10:
            keys = {key.hex(): name for name, key in self.fund.db.participant_keys().items()}
            self._keys = (time.monotonic(), keys)
        return keys.get(key_hex)

    def owners(self, *, unless_known: str | None = None) -> dict[str, str]:
        """Each model's owner, read again every 10 s (or at once for a model not known yet: a
        model's owner never changes, new models appear)."""
        at, owners = self._owners
        stale = time.monotonic() - at > 10
        if stale or (unless_known is not None and unless_known not in owners):
            models = self.fund.db.models()
            owners = {} if models.empty else models["participant"].astype(str).to_dict()
            self._owners = (time.monotonic(), owners)
        return owners

    def owner(self, model: str) -> str | None:
        return self.owners(unless_known=model).get(model)

    def owned(self, participant: str) -> set[str]:
        return {model for model, who in self.owners().items() if who == participant}

    # --- rounds and bundles --------------------------------------------------------------
    def round(self, round_id: str) -> RoundRecord:
        if not re.fullmatch(ROUND_PATTERN, round_id) or not self.fund.db.has_round(round_id):
            raise ServiceError(f"there is no round {round_id!r}.", 404)
        return self.fund.round_record(round_id)

    def bundle_dir(self, round_id: str, model: str, participant: str) -> Path:
        """The folder ``participant`` fetches for its ``model`` in the round: the model's own
        bundle, or the round's packed dataset."""
        record = self.round(round_id)
        if model not in record.bundles:
            raise ServiceError(f"model {model!r} has no bundle in round {round_id!r}.", 404)
        if self.owner(model) != participant:
            raise ServiceError(
                f"model {model!r} is not {participant}'s: its bundle is refused.", 403
            )
        own = self.fund.round_dir(round_id) / "bundles" / model
        if own.is_dir():
            return own
        packed = self.fund.round_dir(round_id) / PACKED_DIR
        if packed.is_dir():
            return packed
        raise ServiceError(f"the bundle of {model!r} in round {round_id!r} is gone.", 404)

    def packed_dir(self, round_id: str, participant: str) -> Path:
        """The round's packed dataset, for a participant with a packed model in the round."""
        record = self.round(round_id)
        packed = self.fund.round_dir(round_id) / PACKED_DIR
        if not packed.is_dir():
            raise ServiceError(f"round {round_id!r} has no packed dataset.", 404)
        key_set = self.manifest(packed)[1].key_set_id
        mine = [
            model
            for model, bundle in record.bundles.items()
            if bundle.key_set_id == key_set and self.owner(model) == participant
        ]
        if not mine:
            raise ServiceError(
                f"{participant} has no packed model in round {round_id!r}: the dataset is "
                "only for participants who do.",
                403,
            )
        return packed

    def manifest(self, directory: Path) -> tuple[bytes, Manifest]:
        """A published folder's manifest (raw bytes, parsed), read again when it changes."""
        path = directory / MANIFEST
        try:
            status = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise ServiceError("that bundle has no manifest.", 404) from None
        stamp = (status.st_mtime_ns, status.st_size)
        cached = self._manifests.get(directory)
        if cached is None or cached[0] != stamp:
            raw = read_regular(path, MAX_MANIFEST_BYTES, "a manifest")
            cached = (stamp, raw, Manifest.model_validate(json.loads(raw)))
            self._manifests[directory] = cached
        return cached[1], cached[2]

    def file_of(self, directory: Path, name: str) -> tuple[Path, int, str]:
        """A file of a published folder that may be served: its path, size and SHA-256 (from the
        signed manifest, which lists every file but itself and its signature)."""
        raw, manifest = self.manifest(directory)
        if name == MANIFEST:
            return directory / MANIFEST, len(raw), hashlib.sha256(raw).hexdigest()
        if name == SIGNATURE:
            signature = read_regular(directory / SIGNATURE, MAX_SIGNATURE_BYTES, "a signature")
            return directory / SIGNATURE, len(signature), hashlib.sha256(signature).hexdigest()
        entry = manifest.files.get(name)
        if entry is None:
            raise ServiceError(f"{name!r} is not a file of this bundle (see its manifest).", 404)
        return directory / name, entry.size, entry.sha256

    def index(self, directory: Path, base: str) -> dict[str, Any]:
        raw, manifest = self.manifest(directory)
        files = [
            {"name": name, "size": entry.size, "sha256": entry.sha256}
            for name, entry in sorted(manifest.files.items())
        ]
        return {
            "kind": manifest.kind,
            "round": manifest.round_id,
            "model": manifest.model,
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "files": files,
            "url": base,
        }

    # --- uploads -------------------------------------------------------------------------
    def known_upload(
        self, round_id: str, model: str, participant: str, manifest_sha256: str | None
    ) -> UploadRecord | None:
        """The participant's upload of the submission with this manifest hash for the model and
        round, if it sent it before (and it did not fail)."""
        if manifest_sha256 is None or self.owner(model) != participant:
            return None
        self.round(round_id)
        for earlier in self.store.uploads(round_name=round_id, model=model):
            if earlier.manifest_sha256 == manifest_sha256.lower() and (
                earlier.status != UploadStatus.FAILED
            ):
                return earlier
        return None

    def check_can_submit(self, round_id: str, model: str, participant: str) -> None:
        """Refuse an upload that cannot be taken, before its body is read."""
        record = self.round(round_id)
        if model not in record.bundles:
            raise ServiceError(f"model {model!r} has no bundle in round {round_id!r}.", 404)
        if self.owner(model) != participant:
            raise ServiceError(f"model {model!r} is not {participant}'s.", 403)
        if record.status != RoundStatus.OPEN:
            raise ServiceError(
                f"round {round_id!r} is {record.status}: it takes no submission.", 409
            )
        if record.deadline is not None and datetime.now(UTC) > record.deadline:
            raise ServiceError(
                f"round {round_id!r} stopped taking submissions at "
                f"{record.deadline:%Y-%m-%d %H:%M} UTC.",
                409,
            )
        if record.bundles[model].status in (SubmissionStatus.RECEIVED, SubmissionStatus.REFUSED):
            raise ServiceError(
                f"a submission for {model!r} in round {round_id!r} was received already; "
                "each model submits once per round.",
                409,
            )

    def accept_upload(
        self,
        workdir: Path,
        archive: Path,
        round_id: str,
        model: str,
        participant: str,
        size: int,
        archive_sha256: str,
    ) -> tuple[UploadRecord, bool]:
        """Unpack and check an uploaded archive, then queue it; the upload, and whether it is
        new (the same submission sent again is the upload it already is)."""
        submission = workdir / SUBMISSION_DIR
        submission.mkdir(mode=0o700)
        try:
            unpack_archive(archive, submission, max_bytes=self.limits.max_upload_bytes)
            answer = open_answer(submission)
        except FheToolkitError as exc:  # the archive's, the manifest's
            raise ServiceError(_scrubbed(exc, submission), 400) from None
        if answer.manifest.round_id != round_id or answer.manifest.model != model:
            raise ServiceError(
                f"this submission answers model {answer.manifest.model!r} in round "
                f"{answer.manifest.round_id!r}, not {model!r} in {round_id!r}.",
                400,
            )
        key = self.fund.db.participant_keys()[participant]
        try:
            verify_directory(submission, key, participant)
        except IdentityError as exc:
            raise ServiceError(_scrubbed(exc, submission), 400) from None
        earlier = self.known_upload(round_id, model, participant, answer.sha256)
        if earlier is not None:
            return earlier, False
        upload_id = secrets.token_hex(16)
        folder = self.config.uploads_dir / upload_id
        folder.mkdir(mode=0o700)
        submission.rename(folder / SUBMISSION_DIR)
        try:
            record = self.store.enqueue(
                upload_id, round_id, model, participant,
                manifest_sha256=answer.sha256, archive_sha256=archive_sha256, size=size,
            )  # fmt: skip
        except FheToolkitError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ServiceError(str(exc), 409) from None
        return record, True

    # --- status and results --------------------------------------------------------------
    def open_rounds(self, participant: str) -> list[dict[str, Any]]:
        rounds = self.fund.db.rounds()
        owned = self.owned(participant)
        out = []
        for name in [] if rounds.empty else rounds.index[rounds["status"] == "open"]:
            record = self.fund.round_record(str(name))
            mine = [model for model in record.bundles if model in owned]
            if mine:
                out.append(
                    {
                        **_round_fields(record),
                        "models": [self._model_entry(record, m) for m in mine],
                    }
                )
        return out

    def _model_entry(self, record: RoundRecord, model: str) -> dict[str, Any]:
        bundle = record.bundles[model]
        own = (self.fund.round_dir(record.name) / "bundles" / model).is_dir()
        return {
            "model": model,
            "path": "circuit" if own else "packed",
            "status": str(bundle.status),
            "detail": bundle.detail,
            "bundle_url": f"{API}/rounds/{record.name}/models/{model}/bundle",
        }

    def status(self, participant: str) -> dict[str, Any]:
        """Everything about ``participant``'s own models: per round, its bundle's status, its
        uploads, and once resolved its scores and payout (rounded)."""
        owned = self.owned(participant)
        uploads = self.store.uploads(participant=participant)
        payouts = self.fund.db.payouts()
        scores = self.fund.db.scores()
        if not payouts.empty:
            payouts = payouts[payouts["model"].isin(owned)]
        if not scores.empty:
            scores = scores[scores["model"].isin(owned)]
        rounds = self.fund.db.rounds()
        out = []
        for name in [] if rounds.empty else rounds.index:
            record = self.fund.round_record(str(name))
            mine = [model for model in record.bundles if model in owned]
            if not mine:
                continue
            models = []
            for model in mine:
                entry = self._model_entry(record, model)
                entry["uploads"] = [
                    upload_json(u) for u in uploads if u.round == record.name and u.model == model
                ]
                paid = payouts[(payouts["round"] == record.name) & (payouts["model"] == model)]
                if not paid.empty:
                    row = paid.iloc[0]
                    entry["results"] = {
                        k: _number(row[k])
                        for k in ("stake", "corr", "mmc", "score", "payout", "reputation")
                    }
                per_era = scores[(scores["round"] == record.name) & (scores["model"] == model)]
                if not per_era.empty:
                    entry["per_era"] = [
                        {"era": str(r.era), "metric": str(r.metric), "target": str(r.target),
                         "value": _number(r.value)}
                        for r in per_era.itertuples()
                    ]  # fmt: skip
                models.append(entry)
            out.append({**_round_fields(record), "models": models})
        return {"participant": participant, "models": sorted(owned), "rounds": out}

    def leaderboard(self, sort_by: str) -> list[dict[str, Any]]:
        try:
            board = self.fund.leaderboard(sort_by)
        except LeaderboardError as exc:
            raise ServiceError(str(exc), 400) from None
        rows = []
        for model, row in board.iterrows():
            rows.append({"model": str(model), **{k: _number(v) for k, v in row.items()}})
        return rows

    def report(self) -> bytes:
        """The tournament report, written again at most every ``REPORT_TTL`` seconds."""
        at, page, error = self._report
        if time.monotonic() - at > REPORT_TTL or (page is None and not error):
            with tempfile.TemporaryDirectory() as folder:
                try:
                    path = write_report(self.fund.db, Path(folder) / "report.html")
                    page, error = path.read_bytes(), ""
                except ReportError as exc:
                    page, error = None, str(exc)
            self._report = (time.monotonic(), page, error)
        if page is None:
            raise ServiceError(error, 404)
        return page


def create_app(service: Service, on_started: Callable[[], None] | None = None) -> Starlette:
    """The ASGI application serving ``service`` (started and stopped with the application)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        purge = asyncio.create_task(_purge_nonces(service))
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            purge.cancel()
            await run_in_threadpool(service.stop)

    async def fund_key(request: Request) -> Response:
        return JSONResponse({"public_key": service.fund_key.hex(), "algorithm": "ed25519"})

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "service": "fhe-toolkit fund",
                "version": __version__,
                "server_time": int(time.time()),
                "limits": asdict(service.limits),
                "decrypting": service.config.decrypt,
            }
        )

    async def rounds(request: Request) -> Response:
        participant = await service.authenticate(request)
        listed = await run_in_threadpool(service.open_rounds, participant)
        return JSONResponse({"participant": participant, "rounds": listed})

    async def bundle_index(request: Request) -> Response:
        participant = await service.authenticate(request)
        round_id, model = _path(request, "round"), _path(request, "model")
        directory = await run_in_threadpool(service.bundle_dir, round_id, model, participant)
        base = f"{API}/rounds/{round_id}/models/{model}/bundle"
        return JSONResponse(await run_in_threadpool(service.index, directory, base))

    async def bundle_file(request: Request) -> Response:
        participant = await service.authenticate(request)
        round_id, model = _path(request, "round"), _path(request, "model")
        directory = await run_in_threadpool(service.bundle_dir, round_id, model, participant)
        return await _serve_file(service, request, directory, _path(request, "name"))

    async def packed_index(request: Request) -> Response:
        participant = await service.authenticate(request)
        round_id = _path(request, "round")
        directory = await run_in_threadpool(service.packed_dir, round_id, participant)
        base = f"{API}/rounds/{round_id}/packed"
        return JSONResponse(await run_in_threadpool(service.index, directory, base))

    async def packed_file(request: Request) -> Response:
        participant = await service.authenticate(request)
        directory = await run_in_threadpool(
            service.packed_dir, _path(request, "round"), participant
        )
        return await _serve_file(service, request, directory, _path(request, "name"))

    async def submit(request: Request) -> Response:
        return await _receive_upload(service, request)

    async def upload_status(request: Request) -> Response:
        participant = await service.authenticate(request)
        upload_id = _path(request, "upload")
        try:
            record = await run_in_threadpool(service.store.upload, upload_id)
        except FheToolkitError:
            record = None
        if record is None or record.participant != participant:
            raise ServiceError(f"you have no upload {upload_id!r}.", 404)
        return JSONResponse(upload_json(record))

    async def status(request: Request) -> Response:
        participant = await service.authenticate(request)
        return JSONResponse(await run_in_threadpool(service.status, participant))

    async def leaderboard_json(request: Request) -> Response:
        sort_by = request.query_params.get("sort", "reputation")
        rows = await run_in_threadpool(service.leaderboard, sort_by)
        return JSONResponse({"sort": sort_by, "models": rows})

    async def leaderboard_page(request: Request) -> Response:
        sort_by = request.query_params.get("sort", "reputation")
        if sort_by not in SORT_KEYS:
            sort_by = "reputation"
        rows = await run_in_threadpool(service.leaderboard, sort_by)
        return HTMLResponse(leaderboard_html(rows, sort_by))

    async def report(request: Request) -> Response:
        try:
            page = await run_in_threadpool(service.report)
        except ServiceError as exc:
            return HTMLResponse(_message_page("No report yet", str(exc)), status_code=404)
        return HTMLResponse(page)

    async def home(request: Request) -> Response:
        return RedirectResponse("/leaderboard")

    async def refused(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ServiceError):  # pragma: no cover - registered for it only
            raise exc
        status, headers = exc.status or 400, dict(exc.headers)
        if status == 401:
            headers["WWW-Authenticate"] = "FHE-Ed25519"
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    R = "/v1/rounds/{round}"
    routes = [
        Route("/", home),
        Route(f"{API}/fund-key", fund_key),
        Route(f"{API}/info", info),
        Route(f"{API}/rounds", rounds),
        Route(f"{R}/models/{{model}}/bundle", bundle_index),
        Route(f"{R}/models/{{model}}/bundle/{{name}}", bundle_file),
        Route(f"{R}/packed", packed_index),
        Route(f"{R}/packed/{{name}}", packed_file),
        Route(f"{R}/models/{{model}}/submission", submit, methods=["POST"]),
        Route(f"{API}/uploads/{{upload}}", upload_status),
        Route(f"{API}/status", status),
        Route(f"{API}/leaderboard", leaderboard_json),
        Route("/leaderboard", leaderboard_page),
        Route("/report", report),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ServiceError: refused},
    )


# --- streaming ---------------------------------------------------------------------------------
async def _serve_file(service: Service, request: Request, directory: Path, name: str) -> Response:
    """One file of a published folder, whole or the byte range asked for (``Range: bytes=``,
    honoured unless ``If-Range`` names another version); its ETag is its SHA-256."""
    path, size, sha256 = await run_in_threadpool(service.file_of, directory, name)
    etag = f'"{sha256}"'
    start, end, partial = 0, size - 1, False
    asked = request.headers.get("range")
    if asked and size and request.headers.get("if-range", etag) == etag:
        span = parse_range(asked, size)
        if isinstance(span, str):  # unsatisfiable
            raise ServiceError(
                f"{name} is {size:,} bytes: that range is past its end.",
                416,
                {"Content-Range": f"bytes */{size}"},
            )
        if span is not None:
            (start, end), partial = span, True
    _check_file(path, size)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Length": str(end - start + 1 if size else 0),
        "Cache-Control": "no-store",
    }
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _chunks(path, start, end - start + 1 if size else 0),
        status_code=206 if partial else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


def _check_file(path: Path, size: int) -> None:
    try:
        status = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise ServiceError(f"{path.name} is missing from the bundle.", 404) from None
    if not stat.S_ISREG(status.st_mode) or status.st_size != size:
        log.error("%s is not the file its manifest lists", path)
        raise ServiceError(
            f"{path.name} does not match the bundle's manifest on the fund's side.", 500
        )


def _chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(descriptor, "rb") as handle:
        handle.seek(start)
        while length > 0:
            block = handle.read(min(CHUNK, length))
            if not block:
                return
            length -= len(block)
            yield block


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """The one byte range of a ``Range`` header, ``"unsatisfiable"``, or ``None`` to send the
    whole file (several ranges, or a header not understood, which HTTP lets a server ignore)."""
    found = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first, last = found.groups()
    if first == "":
        suffix = int(last)
        return "unsatisfiable" if suffix == 0 else (max(size - suffix, 0), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size:
        return "unsatisfiable"
    return None if end < start else (start, end)


async def _receive_upload(service: Service, request: Request) -> Response:
    """Stream an upload into a private folder (size-capped, hashed), check it, queue it."""
    limits = service.limits
    participant = await service.authenticate(request, body_sha256=None)
    round_id, model = _path(request, "round"), _path(request, "model")
    declared = request.headers[HEADER_CONTENT_SHA256].lower()
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limits.max_upload_bytes):
        raise ServiceError(
            f"an upload is at most {limits.max_upload_bytes:,} bytes; this one says {length}.", 413
        )
    known = await run_in_threadpool(
        service.known_upload, round_id, model, participant, request.headers.get(HEADER_SUBMISSION)
    )
    if known is not None:  # sent again (its first answer was lost, or by mistake)
        return JSONResponse(
            upload_json(known), headers={"Location": f"{API}/uploads/{known.upload_id}"}
        )
    await run_in_threadpool(service.check_can_submit, round_id, model, participant)
    if (round_id, model) in service.uploading:
        raise ServiceError(f"an upload for {model!r} in round {round_id!r} is under way.", 409)
    if service.active_uploads >= limits.max_concurrent_uploads:
        raise ServiceError(
            "the fund is receiving as many uploads as it takes at once; retry shortly.",
            503,
            {"Retry-After": "2"},
        )
    service.active_uploads += 1
    service.uploading.add((round_id, model))
    workdir = Path(tempfile.mkdtemp(prefix="upload-", dir=service.config.incoming_dir))
    try:
        archive = workdir / "upload.tar"
        digest, size = hashlib.sha256(), 0
        descriptor = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            size = await _copy_body(request, handle, digest, limits.max_upload_bytes)
        if digest.hexdigest() != declared:
            raise ServiceError(
                "the body's SHA-256 is not the signed one: it was altered or cut short on the way.",
                400,
            )
        record, new = await run_in_threadpool(
            service.accept_upload, workdir, archive, round_id, model, participant, size, declared
        )
    except ClientDisconnect:
        log.info("an upload from %s was cut off; nothing kept", participant)
        return Response(status_code=400)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        service.active_uploads -= 1
        service.uploading.discard((round_id, model))
    location = f"{API}/uploads/{record.upload_id}"
    return JSONResponse(
        upload_json(record), status_code=202 if new else 200, headers={"Location": location}
    )


async def _copy_body(request: Request, handle: IO[bytes], digest: Any, limit: int) -> int:
    """Copy the body to ``handle`` as it comes, refusing more than ``limit`` bytes, and an upload
    that sends nothing for ``UPLOAD_IDLE_TIMEOUT`` seconds (it would hold an upload slot)."""
    size = 0
    blocks = request.stream().__aiter__()
    while True:
        try:
            block = await asyncio.wait_for(blocks.__anext__(), UPLOAD_IDLE_TIMEOUT)
        except StopAsyncIteration:
            return size
        except TimeoutError:
            raise ServiceError(
                f"the upload sent nothing for {UPLOAD_IDLE_TIMEOUT:.0f} s; send it again.", 408
            ) from None
        size += len(block)
        if size > limit:
            raise ServiceError(f"an upload is at most {limit:,} bytes; this one is larger.", 413)
        digest.update(block)
        handle.write(block)


async def _purge_nonces(service: Service) -> None:
    while True:
        if service.nonces is not None:
            with contextlib.suppress(Exception):
                await run_in_threadpool(service.nonces.purge)
        await asyncio.sleep(60)


# --- formats -----------------------------------------------------------------------------------
def request_target(request: Request) -> str:
    """The path and query as the client sent them (what the client signed)."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    query = request.scope.get("query_string", b"")
    return raw.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def _path(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    pattern = {"round": ROUND_PATTERN, "model": NAME_PATTERN, "upload": r"^[0-9a-f]{32}$"}.get(
        name, r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
    )
    if not re.fullmatch(pattern, value):
        raise ServiceError(f"no such {name}: {value[:80]!r}.", 404)
    return value


def upload_json(record: UploadRecord) -> dict[str, Any]:
    return {
        "upload": record.upload_id,
        "round": record.round,
        "model": record.model,
        "status": str(record.status),
        "detail": record.detail,
        "pending": record.pending,
        "size": record.size,
        "attempts": record.attempts,
        "queued_at": record.queued_at.isoformat(),
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "status_url": f"{API}/uploads/{record.upload_id}",
    }


def _round_fields(record: RoundRecord) -> dict[str, Any]:
    return {
        "round": record.name,
        "status": str(record.status),
        "opened_at": record.opened_at.isoformat(),
        "deadline": record.deadline.isoformat() if record.deadline else None,
    }


def _number(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if pd.isna(number):
        return None
    if float(number).is_integer() and abs(number) < 2**53 and not isinstance(value, float):
        return int(number)
    return round(number, ROUNDED)


def _scrubbed(error: Exception, directory: Path) -> str:
    """An error's message without the service's private folders in it."""
    return str(error).replace(str(directory), "the submission")


LEADERBOARD_COLUMNS = {
    "participant": "participant", "family": "family", "target": "target", "stake": "stake",
    "rounds": "rounds", "last_corr": "last CORR", "last_mmc": "last MMC",
    "last_payout": "last payout", "mean_corr": "mean CORR", "mean_mmc": "mean MMC",
    "total_payout": "total payout", "reputation": "reputation",
}  # fmt: skip
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; }
h1 { font-size: 1.4rem; } p.note { color: #57606a; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .35rem .7rem; border-bottom: 1px solid #d0d7de; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f6f8fa; } th a { color: inherit; } th.sorted { background: #ddf4ff; }
td.neg { color: #cf222e; } td.pos { color: #1a7f37; }
"""


def leaderboard_html(rows: list[dict[str, Any]], sort_by: str) -> str:
    """The leaderboard as one HTML page (no script, nothing fetched): a column heading sorts."""
    sorted_column = SORT_KEYS[sort_by]
    sort_of = {column: key for key, column in SORT_KEYS.items()}
    heads = ["<th>model</th>"]
    for column, title in LEADERBOARD_COLUMNS.items():
        label = html.escape(title)
        if column in sort_of:
            label = f'<a href="/leaderboard?sort={sort_of[column]}">{label}</a>'
        mark = ' class="sorted"' if column == sorted_column else ""
        heads.append(f"<th{mark}>{label}</th>")
    body = []
    for row in rows:
        cells = [f'<td class="text">{html.escape(row["model"])}</td>']
        for column in LEADERBOARD_COLUMNS:
            value = row.get(column)
            if isinstance(value, float):
                tone = (
                    " neg" if value < 0 else " pos" if value > 0 and "stake" not in column else ""
                )
                digits = 2 if column in ("stake", "last_payout", "total_payout") else 4
                cells.append(f'<td class="num{tone}">{value:,.{digits}f}</td>')
            elif value is None:
                cells.append('<td class="num">–</td>')
            elif isinstance(value, int):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f'<td class="text">{html.escape(str(value))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = (
        f'<table id="leaderboard"><thead><tr>{"".join(heads)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        if rows
        else '<p id="leaderboard">No model is registered yet.</p>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Leaderboard</title><style>{STYLE}</style></head><body>"
        f'<h1>Leaderboard</h1><p class="note">{len(rows)} model(s), sorted by '
        f"{html.escape(sort_by)}; CORR and MMC are means over each model's resolved rounds. "
        '<a href="/report">The full report</a> · <a href="/v1/leaderboard">JSON</a></p>'
        f"{table}</body></html>"
    )


def _message_page(title: str, message: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(message)}</p></body></html>"
    )
