"""The fund service's pieces without a server or FHE: signed requests, the submission archive
and its checks, byte ranges, the rate limit, and the queue and nonce records (on SQLite and
PostgreSQL). The whole service, over real HTTP, is tests/test_service.py."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fhe_toolkit.errors import ArchiveError, RegistryError, ServiceError
from fhe_toolkit.registry import Registry
from fhe_toolkit.registry.records import UploadStatus
from fhe_toolkit.registry.store import ServiceStore
from fhe_toolkit.service.app import RateLimiter, parse_range
from fhe_toolkit.service.config import Limits, ServiceConfig
from fhe_toolkit.service.nonces import NonceStore
from fhe_toolkit.service.wire import (
    EMPTY_SHA256,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_ARCHIVE_MEMBERS,
    SignedFields,
    pack_directory,
    sign_request,
    unpack_archive,
)
from tests.tournament_records import new_bundle, registry_with_models

FUND = Ed25519PrivateKey.generate()
FUND_KEY = FUND.public_key().public_bytes_raw()


# --- signed requests -------------------------------------------------------------------------
def test_a_signed_request_verifies_only_as_it_was_signed():
    alice = Ed25519PrivateKey.generate()
    headers = sign_request(alice, "GET", "/v1/status?x=1", EMPTY_SHA256, FUND_KEY)
    fields = SignedFields(headers)
    assert fields.verify("GET", "/v1/status?x=1", FUND_KEY)
    assert not fields.verify("POST", "/v1/status?x=1", FUND_KEY)  # another method
    assert not fields.verify("GET", "/v1/status?x=2", FUND_KEY)  # another path or query
    other_fund = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not fields.verify("GET", "/v1/status?x=1", other_fund)  # meant for another fund
    # Another body, timestamp, or a signature by someone else's key under alice's name.
    body = dict(headers, **{"X-FHE-Content-SHA256": "0" * 64})
    assert not SignedFields(body).verify("GET", "/v1/status?x=1", FUND_KEY)
    later = dict(headers, **{HEADER_TIMESTAMP: str(int(headers[HEADER_TIMESTAMP]) + 1)})
    assert not SignedFields(later).verify("GET", "/v1/status?x=1", FUND_KEY)
    bob = sign_request(
        Ed25519PrivateKey.generate(), "GET", "/v1/status?x=1", EMPTY_SHA256, FUND_KEY
    )
    forged = dict(headers, **{HEADER_SIGNATURE: bob[HEADER_SIGNATURE]})
    assert not SignedFields(forged).verify("GET", "/v1/status?x=1", FUND_KEY)


def test_unsigned_or_malformed_headers_are_refused_as_401():
    with pytest.raises(ServiceError, match="not signed") as caught:
        SignedFields({})
    assert caught.value.status == 401
    headers = sign_request(Ed25519PrivateKey.generate(), "GET", "/", EMPTY_SHA256, FUND_KEY)
    for name, value in ((HEADER_TIMESTAMP, "-5"), (HEADER_SIGNATURE, "zz"), ("X-FHE-Nonce", "1")):
        with pytest.raises(ServiceError, match=f"malformed signature headers: {name}"):
            SignedFields(dict(headers, **{name: value}))


# --- the submission archive ------------------------------------------------------------------
def submission(folder: Path) -> Path:
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "manifest.sig").write_bytes(b"s" * 64)
    (folder / "predictions.parquet").write_bytes(os.urandom(5000))
    (folder / ".checkpoint.sqlite").write_bytes(b"private")  # the participant's own: not sent
    return folder


def test_pack_and_unpack_keep_the_files_and_nothing_else(tmp_path):
    source = submission(tmp_path / "sub")
    first, second = io.BytesIO(), io.BytesIO()
    assert pack_directory(source, first) == ["manifest.json", "manifest.sig", "predictions.parquet"]
    pack_directory(source, second)
    assert first.getvalue() == second.getvalue()  # the same folder, the same bytes
    (tmp_path / "upload.tar").write_bytes(first.getvalue())
    (tmp_path / "out").mkdir()
    names = unpack_archive(tmp_path / "upload.tar", tmp_path / "out", max_bytes=10**6)
    assert sorted(names) == sorted(p.name for p in (tmp_path / "out").iterdir())
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
        assert (tmp_path / "out" / name).stat().st_mode & 0o077 == 0


def test_a_folder_holding_a_link_is_not_packed(tmp_path):
    source = submission(tmp_path / "sub")
    (source / "secret").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match="not a regular file"):
        pack_directory(source, io.BytesIO())


def archive_with(
    tmp_path: Path, *members: tarfile.TarInfo, manifest: bool = True, name: str = "evil"
) -> Path:
    path = tmp_path / f"{name}.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        if manifest:
            info = tarfile.TarInfo("manifest.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        for member in members:
            data = b"x" * member.size if member.isreg() else None
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def member(
    name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 3, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


EVIL = {
    "a symbolic link": member("predictions.parquet", tarfile.SYMTYPE, link="/etc/passwd"),
    "a hard link": member("predictions.parquet", tarfile.LNKTYPE, link="manifest.json"),
    "'..'": member("../../outside.txt"),
    "an absolute path": member("/srv/outside.txt"),
    "in a subdirectory": member("deep/file.txt"),
    "a directory": member("folder", tarfile.DIRTYPE),
    "a FIFO": member("pipe", tarfile.FIFOTYPE),
    "a device": member("disk", tarfile.BLKTYPE),
    "not a plain file name": member(".hidden"),
}


@pytest.mark.parametrize("why", list(EVIL))
def test_an_archive_member_that_is_not_a_plain_file_is_refused_before_anything_is_written(
    tmp_path, why
):
    archive = archive_with(tmp_path, EVIL[why])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveError, match=why):
        unpack_archive(archive, out, max_bytes=10**6)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "outside.txt").exists()


def test_archives_that_are_too_big_repeated_or_not_tar_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cases = {
        "twice": archive_with(tmp_path, member("manifest.json"), name="a"),
        "more than 1,000 bytes": archive_with(tmp_path, member("big.bin", size=2000), name="b"),
        f"more than {MAX_ARCHIVE_MEMBERS} files": archive_with(
            tmp_path, *(member(f"f{i}") for i in range(MAX_ARCHIVE_MEMBERS)), name="c"
        ),
        "holds no manifest.json": archive_with(tmp_path, member("a.bin"), manifest=False, name="d"),
    }
    for message, archive in cases.items():
        with pytest.raises(ArchiveError, match=message):
            unpack_archive(archive, out, max_bytes=1000)
        assert list(out.iterdir()) == []
    compressed = tmp_path / "sub.tar.gz"
    compressed.write_bytes(gzip.compress(archive_with(tmp_path, member("a.bin")).read_bytes()))
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(3000))
    for path in (compressed, garbage):
        with pytest.raises(ArchiveError, match="not an uncompressed tar"):
            unpack_archive(path, out, max_bytes=10**6)


# --- ranges, rates, limits -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=100-", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=9-3", None),
    ],
)
def test_byte_ranges(header, expected):
    assert parse_range(header, 100) == expected


def test_the_rate_limit_is_per_participant_over_a_sliding_minute():
    limiter = RateLimiter(per_minute=3)
    for second in range(3):
        limiter.check("alice", now=100.0 + second)
    limiter.check("bob", now=102.5)
    with pytest.raises(ServiceError, match="more than 3 requests") as caught:
        limiter.check("alice", now=130.0)
    assert caught.value.status == 429 and caught.value.headers == {"Retry-After": "30"}
    limiter.check("alice", now=160.0)  # the first request is a minute old


def test_limits_and_the_workers_configuration():
    with pytest.raises(ValueError, match="max_upload_bytes must be at least 1"):
        Limits(max_upload_bytes=0)
    config = ServiceConfig(Path("f"), Path("k"), "sqlite:///x.db", Limits(requests_per_minute=7))
    assert ServiceConfig.from_json(config.to_json()) == config


# --- records: the queue and the nonces -------------------------------------------------------
@pytest.fixture
def store(database_url: str) -> ServiceStore:
    registry = registry_with_models(database_url)
    registry.create_round("r1", 1, None, [new_bundle("m-a"), new_bundle("m-b")])
    return ServiceStore(registry)


def enqueue(store: ServiceStore, upload_id: str, model: str, owner: str) -> None:
    store.enqueue(
        upload_id, "r1", model, owner,
        manifest_sha256=upload_id.ljust(64, "0"), archive_sha256="a" * 64, size=10,
    )  # fmt: skip


def test_the_queue_takes_uploads_in_order_and_one_per_model(store):
    enqueue(store, "1" * 32, "m-a", "alice")
    enqueue(store, "2" * 32, "m-b", "bob")
    with pytest.raises(RegistryError, match="is queued already"):
        enqueue(store, "3" * 32, "m-a", "alice")
    first = store.claim_next(max_attempts=3)
    assert first is not None and first.upload_id == "1" * 32 and first.attempts == 1
    assert first.status == UploadStatus.DECRYPTING and first.pending
    store.finish(first.upload_id, UploadStatus.RECEIVED)
    second = store.claim_next(max_attempts=3)
    assert second is not None and second.model == "m-b"
    store.finish(second.upload_id, UploadStatus.REFUSED, "not a linear model")
    assert store.claim_next(max_attempts=3) is None
    assert [(u.model, u.status, u.detail) for u in store.uploads()] == [
        ("m-a", UploadStatus.RECEIVED, None),
        ("m-b", UploadStatus.REFUSED, "not a linear model"),
    ]
    assert [u.upload_id for u in store.uploads(participant="bob")] == ["2" * 32]
    assert store.upload("1" * 32).finished_at is not None


def test_an_upload_whose_worker_died_is_taken_again_then_given_up(store):
    enqueue(store, "1" * 32, "m-a", "alice")
    enqueue(store, "2" * 32, "m-b", "bob")
    for attempt in (1, 2):
        taken = store.claim_next(max_attempts=2)  # the worker dies with it each time
        assert taken is not None and taken.upload_id == "1" * 32 and taken.attempts == attempt
    taken = store.claim_next(max_attempts=2)  # given up: the next one is taken
    assert taken is not None and taken.upload_id == "2" * 32
    given_up = store.upload("1" * 32)
    assert given_up.status == UploadStatus.FAILED and "cut off 2 time(s)" in str(given_up.detail)


def test_a_nonce_is_used_once_and_forgotten_when_it_expires(tmp_path):
    nonces = NonceStore(tmp_path / "nonces.sqlite")
    assert nonces.use("alice", "ab" * 16, 1000.0)
    assert not nonces.use("alice", "ab" * 16, 1000.0)  # a replay
    assert nonces.use("bob", "ab" * 16, 1000.0)  # each participant's own
    nonces.close()
    again = NonceStore(tmp_path / "nonces.sqlite")  # kept across a restart
    assert not again.use("alice", "ab" * 16, 1000.0)
    assert again.purge(now=1000.5) == 2
    assert again.use("alice", "ab" * 16, 2000.0)


def test_the_service_tables_upgrade_an_existing_registry(tmp_path):
    url = f"sqlite:///{tmp_path / 'fund.db'}"
    registry = Registry(url)  # at head: the service's tables are there
    assert ServiceStore(registry).uploads() == []
