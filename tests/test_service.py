"""The fund as a service, over real HTTP: `fhe-toolkit fund serve` in a subprocess on 127.0.0.1
(a free port; killed, with its worker, at the end of every test), participants through the CLI
and the Python client, on a tiny packed round (two linear models, 100 live rows, 8 features).

- a whole round: download, run, submit, background decryption, status, score, leaderboard, report,
  and the leaderboard page drawn by headless Chromium;
- refusals: unsigned, signed by another participant, replayed, stale, unknown key, oversized,
  archives with a link or '..', another participant's bundle, too many requests;
- the server SIGKILLed mid-download (the download resumes) and mid-upload (nothing lost, the
  upload is sent again), and a queued decryption that outlives the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from fhe_toolkit.data import SynthConfig
from fhe_toolkit.participant import run_bundle, train_model
from fhe_toolkit.participant.client import FundClient
from fhe_toolkit.protocol.artifacts import PACKED_ROUND, open_artifact
from fhe_toolkit.protocol.signing import load_private_key, verify_directory
from fhe_toolkit.registry.store import ServiceStore
from fhe_toolkit.service.wire import (
    EMPTY_SHA256,
    HEADER_KEY,
    pack_directory,
    sign_request,
)
from tests.browser import CHROMIUM_FLAGS
from tests.cli_runner import cli, ok
from tests.funds import register, small_fund

pytestmark = pytest.mark.fhe

CONFIG = SynthConfig(
    train_eras=4, validation_eras=1, live_eras=1, rows_per_era=100, n_features=8, n_groups=2
)
MODELS = {"a-lin": ("alice", slice(0, 6)), "b-lin": ("bob", slice(2, 8))}
TIMEOUT = 60.0
"""Seconds any one wait of these tests lasts at most (a server starting, a decryption)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A fund with alice (a-lin), bob (b-lin) and carol (no model), and rounds r1..r3 open."""
    made = small_fund(tmp_path_factory.mktemp("service"), CONFIG, ("alice", "bob", "carol"))
    root, fund = made.root, made.fund
    for name, (owner, columns) in MODELS.items():
        model = train_model(made.train, family="linear", features=made.features[columns])
        register(fund, model, root / name, owner)
    for round_id in ("r1", "r2", "r3"):
        fund.open_round(round_id, made.live)
    return SimpleNamespace(
        root=root, fund=fund, live=made.live, paths=made.paths, identities=made.identities,
        fund_key=fund.public_key(), service=root / "fund" / "service",
    )  # fmt: skip


class Server:
    """`fhe-toolkit fund serve` in its own process group, its output in a log file."""

    def __init__(self, world: SimpleNamespace, *options: str, port: int = 0) -> None:
        self.log = world.root / f"server-{time.monotonic_ns()}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fhe_toolkit.cli", "fund", "serve", "--port", str(port),
                 "--fund-dir", str(world.root / "fund"), "--keys", str(world.root / "keys"),
                 "--requests-per-minute", "1000", *options],
                cwd=world.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while (found := re.search(r"on (http://127\.0\.0\.1:(\d+))", self.output())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start:\n{self.output()}")
            time.sleep(0.1)
        self.url, self.port = found.group(1), int(found.group(2))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash would."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def stop(self) -> None:
        """Kill the server and everything it started (its decryption worker)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(TIMEOUT)
        worker_gone = time.monotonic() + TIMEOUT
        while time.monotonic() < worker_gone:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture
def serve(world: SimpleNamespace) -> Iterator:
    """Start servers (one at a time: a fund has one server); all are killed at the end."""
    started: list[Server] = []

    def start(*options: str, port: int = 0) -> Server:
        server = Server(world, *options, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client(world: SimpleNamespace, server: Server, who: str) -> FundClient:
    return FundClient(
        server.url, world.identities[who], fund_key=world.fund_key, backoff=0.2, timeout=TIMEOUT
    )


def signed(
    world: SimpleNamespace,
    method: str,
    url: str,
    who: str,
    *,
    content: bytes = b"",
    body_sha256: str | None = None,
    claim: str | None = None,
    **sign: object,
) -> httpx.Response:
    """A request signed by ``who`` (naming ``claim``'s key instead, if given)."""
    request = httpx.Request(method, url, content=content)
    headers = sign_request(
        load_private_key(world.identities[who]), method, request.url.raw_path.decode(),
        body_sha256 or (sha256_bytes(content) if content else EMPTY_SHA256), world.fund_key,
        **sign,  # type: ignore[arg-type]
    )  # fmt: skip
    if claim is not None:
        headers[HEADER_KEY] = Path(f"{world.identities[claim]}.pub").read_text().strip()
    request.headers.update(headers)
    with httpx.Client(timeout=TIMEOUT) as http:
        return http.send(request)


def sign(world: SimpleNamespace, who: str, request: httpx.Request, body_sha256: str) -> None:
    """Sign a prepared request as ``who``, in place."""
    target = request.url.raw_path.decode()
    key = load_private_key(world.identities[who])
    request.headers.update(sign_request(key, request.method, target, body_sha256, world.fund_key))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer(world: SimpleNamespace, bundle: Path, model: str, out: Path) -> Path:
    owner = MODELS[model][0]
    return run_bundle(
        bundle, world.root / model, out, identity=world.identities[owner],
        fund_key=world.fund_key, workers=1,
    )  # fmt: skip


# --- a whole round -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def round_one(world: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Round r1 played through HTTP (alice with the CLI, bob with the Python client), then
    scored by the fund. The server is stopped again."""
    work = tmp_path_factory.mktemp("round-one")
    server = Server(world)
    try:
        alice = str(world.identities["alice"])
        downloaded = ok(cli(
            "participant", "download", "r1", "--server", server.url, "--model", "a-lin",
            "--out", work / "a-bundle", "--identity", alice, cwd=work,
        ))  # fmt: skip
        answer(world, work / "a-bundle", "a-lin", work / "a-sub")
        submitted = ok(cli(
            "participant", "submit", work / "a-sub", "--server", server.url, "--identity", alice,
            "--wait", "--timeout", str(TIMEOUT), cwd=work,
        ))  # fmt: skip
        with client(world, server, "bob") as bob:
            rounds = bob.rounds()
            bob.download("r1", "b-lin", work / "b-bundle")
            answer(world, work / "b-bundle", "b-lin", work / "b-sub")
            queued = bob.submit(work / "b-sub")
            received = bob.wait(queued["upload"], timeout=TIMEOUT, interval=0.2)
            again = bob.submit(work / "b-sub")
        status_before = json.loads(ok(cli(
            "participant", "status", "--server", server.url, "--identity", alice,
            "--format", "json", cwd=work,
        )))  # fmt: skip
        alice_uploads = ServiceStore(world.fund.db).uploads(participant="alice")
        peek = signed(world, "GET", f"{server.url}/v1/uploads/{alice_uploads[0].upload_id}", "bob")
    finally:
        server.stop()
    world.fund.score("r1", world.paths["live_targets"], live=world.live, close_now=True)
    return {
        "work": work, "downloaded": downloaded, "submitted": submitted, "rounds": rounds,
        "queued": queued, "received": received, "again": again, "status": status_before,
        "peek": peek,
    }  # fmt: skip


def test_a_whole_round_through_http(world, round_one, serve):
    work = round_one["work"]
    assert "signed by the fund, checked" in round_one["downloaded"]
    # The fund's key, served on first contact, was pinned beside alice's identity.
    pins = json.loads(Path(f"{world.identities['alice']}.funds.json").read_text())
    assert set(pins.values()) == {world.fund_key.hex()}
    bundle = open_artifact(work / "a-bundle", PACKED_ROUND)
    verify_directory(bundle.directory, world.fund_key, "the fund")
    assert "a-lin in r1: received" in round_one["submitted"]
    # Bob: his rounds, an upload answered at once (202, queued) and decrypted in the background.
    assert [(r["round"], [m["model"] for m in r["models"]]) for r in round_one["rounds"]] == [
        ("r1", ["b-lin"]), ("r2", ["b-lin"]), ("r3", ["b-lin"]),
    ]  # fmt: skip
    assert round_one["queued"]["status"] == "queued"
    assert round_one["received"]["status"] == "received" and not round_one["received"]["pending"]
    assert round_one["again"]["upload"] == round_one["queued"]["upload"]  # sent twice: one upload
    assert world.fund.round_record("r1").bundles["b-lin"].status == "received"
    # Each sees its own: alice's status names only a-lin; bob cannot read alice's upload.
    assert [(row["round"], row["model"]) for row in round_one["status"]] == [
        ("r1", "a-lin"), ("r2", "a-lin"), ("r3", "a-lin"),
    ]  # fmt: skip
    assert round_one["status"][0]["submission"] == "received"
    assert round_one["peek"].status_code == 404
    assert not any((world.service / "uploads").iterdir())  # decrypted: the fund keeps its copy

    server = serve()
    with client(world, server, "alice") as alice:
        mine = alice.status()
    r1 = next(r for r in mine["rounds"] if r["round"] == "r1")
    results = r1["models"][0]["results"]
    assert r1["status"] == "resolved" and results["corr"] is not None
    assert {row["era"] for row in r1["models"][0]["per_era"]}  # rounded per-era scores
    board = httpx.get(f"{server.url}/v1/leaderboard?sort=corr", timeout=TIMEOUT).json()
    assert {row["model"]: row["rounds"] for row in board["models"]} == {"a-lin": 1, "b-lin": 1}
    report = httpx.get(f"{server.url}/report", timeout=TIMEOUT)
    assert report.status_code == 200 and "Leaderboard" in report.text


def test_the_leaderboard_page_in_headless_chromium(world, round_one, serve, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian's chromium package; .ci/run installs it)")
    server = serve()
    page = f"{server.url}/leaderboard?sort=mmc"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run(
        [*command, "--dump-dom", page], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    board = httpx.get(f"{server.url}/v1/leaderboard?sort=mmc", timeout=TIMEOUT).json()
    shown = re.findall(r'<tr><td class="text">([^<]+)</td>', result.stdout)
    assert shown == [row["model"] for row in board["models"]] and len(shown) == 2
    assert '<th class="sorted"><a href="/leaderboard?sort=mmc">mean MMC</a></th>' in result.stdout
    shot = tmp_path / "leaderboard.png"
    subprocess.run(
        [*command, f"--screenshot={shot}", "--window-size=1200,400", page],
        capture_output=True, timeout=180, check=False,
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 1000


# --- refusals ----------------------------------------------------------------------------------
def tar_of(*members: tuple[str, bytes, bytes]) -> bytes:
    """An archive of (name, type, data) members, data being the link target for links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                tar.addfile(info)
    return out.getvalue()


def test_requests_that_are_refused(world, serve):
    server = serve("--max-upload-bytes", "2000000")
    url = server.url
    status = f"{url}/v1/status"
    unsigned = httpx.get(status, timeout=TIMEOUT)
    assert unsigned.status_code == 401 and "not signed" in unsigned.json()["error"]
    assert unsigned.headers["www-authenticate"] == "FHE-Ed25519"
    forged = signed(world, "GET", status, "bob", claim="alice")  # bob's signature, alice's name
    assert forged.status_code == 401 and "does not verify with alice's key" in forged.text
    stale = signed(world, "GET", status, "alice", timestamp=int(time.time()) - 3600)
    assert stale.status_code == 401 and "behind the fund's clock" in stale.text
    ahead = signed(world, "GET", status, "alice", timestamp=int(time.time()) + 3600)
    assert ahead.status_code == 401 and "ahead of" in ahead.text
    wrong_body = signed(world, "GET", status, "alice", body_sha256="0" * 64)
    assert wrong_body.status_code == 401 and "body hash" in wrong_body.text
    # A request captured on the way and sent again.
    request = httpx.Request("GET", status)
    sign(world, "alice", request, EMPTY_SHA256)
    with httpx.Client(timeout=TIMEOUT) as http:
        assert http.send(request).status_code == 200
        replay = http.send(request)
    assert replay.status_code == 401 and "sent before" in replay.text
    # The same request to another path: the path is signed.
    moved = httpx.Request("GET", f"{url}/v1/rounds", headers=dict(request.headers))
    with httpx.Client(timeout=TIMEOUT) as http:
        assert http.send(moved).status_code == 401
    # Another participant's bundle; the packed dataset only for those with a packed model.
    theirs = signed(world, "GET", f"{url}/v1/rounds/r3/models/a-lin/bundle/manifest.json", "bob")
    assert theirs.status_code == 403 and "not bob's" in theirs.text
    shared = signed(world, "GET", f"{url}/v1/rounds/r3/packed/manifest.json", "bob")
    assert shared.status_code == 200 and json.loads(shared.content)["kind"] == "packed-round"
    outsider = signed(world, "GET", f"{url}/v1/rounds/r3/packed/manifest.json", "carol")
    assert outsider.status_code == 403 and "no packed model" in outsider.text
    unknown = signed(world, "GET", f"{url}/v1/rounds/r3/packed/secret_key.bin", "bob")
    assert unknown.status_code == 404  # only what the signed manifest lists is served
    # Uploads: into another's model; oversized (declared, and streamed without a length).
    submit = f"{url}/v1/rounds/r3/models/a-lin/submission"
    assert signed(world, "POST", submit, "bob", content=b"x").status_code == 403
    big = os.urandom(2_500_000)
    oversized = signed(world, "POST", submit, "alice", content=big)
    assert oversized.status_code == 413 and "at most 2,000,000 bytes" in oversized.text

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 100_000):
            yield big[start : start + 100_000]

    streamed = httpx.Request("POST", submit, content=chunks())
    assert "content-length" not in streamed.headers
    sign(world, "alice", streamed, sha256_bytes(big))
    with httpx.Client(timeout=TIMEOUT) as http:
        cut = http.send(streamed)
    assert cut.status_code == 413 and "this one is larger" in cut.text
    # Archives with a link, or a path out of the folder: refused, nothing kept anywhere.
    link = tar_of(("manifest.json", tarfile.REGTYPE, b"{}"),
                  ("predictions.parquet", tarfile.SYMTYPE, b"/etc/passwd"))  # fmt: skip
    climb = tar_of(("manifest.json", tarfile.REGTYPE, b"{}"),
                   ("../../escaped.txt", tarfile.REGTYPE, b"boo"))  # fmt: skip
    for archive, why in ((link, "a symbolic link"), (climb, "a path with '..'")):
        refused = signed(world, "POST", submit, "alice", content=archive)
        assert refused.status_code == 400 and why in refused.json()["error"], refused.text
    not_tar = signed(world, "POST", submit, "alice", content=os.urandom(4000))
    assert not_tar.status_code == 400 and "not an uncompressed tar" in not_tar.text
    assert list((world.service / "incoming").iterdir()) == []
    assert not list(world.root.rglob("escaped.txt"))
    assert ServiceStore(world.fund.db).uploads(round_name="r3") == []
    assert world.fund.round_record("r3").bundles["a-lin"].status == "awaiting"


def test_byte_ranges_of_a_bundle_file(world, serve):
    server = serve()
    url = f"{server.url}/v1/rounds/r3/models/b-lin/bundle/packed_params.json"
    whole = (world.fund.round_dir("r3") / "packed" / "packed_params.json").read_bytes()
    full = signed(world, "GET", url, "bob")
    assert full.status_code == 200 and full.content == whole
    etag = full.headers["etag"]
    assert etag == f'"{sha256_bytes(whole)}"' and full.headers["accept-ranges"] == "bytes"
    with httpx.Client(timeout=TIMEOUT) as http:

        def get(**headers: str) -> httpx.Response:
            request = httpx.Request("GET", url, headers=headers)
            sign(world, "bob", request, EMPTY_SHA256)
            return http.send(request)

        part = get(Range="bytes=10-", **{"If-Range": etag})
        assert part.status_code == 206 and part.content == whole[10:]
        assert part.headers["content-range"] == f"bytes 10-{len(whole) - 1}/{len(whole)}"
        changed = get(Range="bytes=10-", **{"If-Range": '"' + "0" * 64 + '"'})
        assert changed.status_code == 200 and changed.content == whole  # another version: all
        past = get(Range=f"bytes={len(whole)}-")
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(whole)}"


def test_too_many_requests_are_told_to_wait(world, serve):
    server = serve("--requests-per-minute", "3")
    answers = [signed(world, "GET", f"{server.url}/v1/status", "carol") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    other = signed(world, "GET", f"{server.url}/v1/status", "bob")  # per participant
    assert other.status_code == 200


# --- crashes -----------------------------------------------------------------------------------
def test_the_server_killed_mid_download_and_mid_upload_loses_nothing(world, serve, tmp_path):
    """SIGKILL during a download: the client retries, and resumes from what it has once a server
    answers again. SIGKILL during an upload: nothing is recorded, the partial upload is cleared
    at start-up, and the same upload goes through afterwards."""
    servers = [serve("--max-concurrent-uploads", "1")]
    progress: list[tuple[int, int]] = []

    def crash_once(done: int, total: int) -> None:
        progress.append((done, total))
        if len(servers) == 1 and done > 40 * 2**20:
            servers[0].kill()
            servers.append(serve("--max-concurrent-uploads", "1", port=servers[0].port))

    with client(world, servers[0], "alice") as alice:
        alice.download("r2", "a-lin", tmp_path / "bundle", on_progress=crash_once)
    assert len(servers) == 2, "the download ended before the server was killed"
    resumed = re.findall(r'"GET [^"]*/bundle/(\S+) HTTP/1.1" 206', servers[1].output())
    assert resumed, servers[1].output()  # the new server was asked for the rest only
    assert max(done for done, _ in progress) == progress[-1][1]
    open_artifact(tmp_path / "bundle", PACKED_ROUND)
    submission = answer(world, tmp_path / "bundle", "a-lin", tmp_path / "sub")

    # An upload cut off by a crash: the body stops half-way, the server is killed.
    archive = io.BytesIO()
    pack_directory(submission, archive)
    body = archive.getvalue()
    halfway, release = threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        half = len(body) // 2
        yield body[:half]
        halfway.set()
        release.wait(TIMEOUT)
        yield body[half:]

    server = servers[1]
    outcome: list[object] = []
    path = "/v1/rounds/r2/models/a-lin/submission"
    request = httpx.Request("POST", server.url + path, content=slow(),
                            headers={"Content-Length": str(len(body))})  # fmt: skip
    sign(world, "alice", request, sha256_bytes(body))

    def send() -> None:
        try:
            with httpx.Client(timeout=TIMEOUT) as http:
                outcome.append(http.send(request))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    assert halfway.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while not list((world.service / "incoming").glob("upload-*/upload.tar")):
        assert time.monotonic() < deadline, "the upload never reached the server"
        time.sleep(0.05)
    # One upload at a time (--max-concurrent-uploads 1): another is told to come back later.
    busy = signed(world, "POST", f"{server.url}/v1/rounds/r3/models/b-lin/submission", "bob",
                  content=b"x")  # fmt: skip
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    server.kill()
    release.set()
    thread.join(TIMEOUT)
    assert outcome and not isinstance(outcome[0], httpx.Response), outcome
    store = ServiceStore(world.fund.db)
    assert store.uploads(round_name="r2", model="a-lin") == []
    assert world.fund.round_record("r2").bundles["a-lin"].status == "awaiting"

    again = serve()
    assert list((world.service / "incoming").iterdir()) == []  # the half upload is gone
    with client(world, again, "alice") as alice:
        queued = alice.submit(submission)
        assert queued["status"] == "queued"
        assert alice.wait(queued["upload"], timeout=TIMEOUT, interval=0.2)["status"] == "received"
    assert world.fund.round_record("r2").bundles["a-lin"].status == "received"


def test_a_queued_decryption_survives_a_restart(world, serve, tmp_path):
    first = serve("--no-decrypt")
    with client(world, first, "bob") as bob:
        bob.download("r2", "b-lin", tmp_path / "bundle")
        submission = answer(world, tmp_path / "bundle", "b-lin", tmp_path / "sub")
        queued = bob.submit(submission)
        time.sleep(1.0)
        assert bob.upload(queued["upload"])["status"] == "queued"  # no worker: it waits
    first.kill()
    assert world.fund.round_record("r2").bundles["b-lin"].status == "awaiting"

    second = serve()
    with client(world, second, "bob") as bob:
        done = bob.wait(queued["upload"], timeout=TIMEOUT, interval=0.2)
        assert done["status"] == "received" and done["attempts"] == 1
        assert bob.submit(submission)["upload"] == queued["upload"]  # sent again: the same
    assert world.fund.round_record("r2").bundles["b-lin"].status == "received"
    assert not [u for u in ServiceStore(world.fund.db).uploads() if u.pending]


def test_a_second_server_for_the_same_fund_is_refused(world, serve):
    serve()
    result = cli("fund", "serve", "--port", "0", "--fund-dir", world.root / "fund",
                 "--keys", world.root / "keys", cwd=world.root)  # fmt: skip
    assert result.returncode == 2 and "another server is serving the fund" in result.stderr
