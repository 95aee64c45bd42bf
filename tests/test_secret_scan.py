"""The scan for secret keys outside the key stores (tests/secret_scan.py, run by conftest.py
after every session) finds what is planted, and only that; and a session that leaks fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fhe_toolkit.fhe.keystore import KeyStore
from fhe_toolkit.fhe.packed import PACKED_KEYS
from fhe_toolkit.fund import Fund
from fhe_toolkit.protocol.signing import new_identity
from tests.secret_scan import WINDOW, Secrets, find_leaks, secrets_on_disk

PLANT = "FHE_TOOLKIT_TEST_PLANT_A_LEAK"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside the session's basetemp, removed after the test: the leaks planted
    there must not fail this session's own scan."""
    folder = Path(tempfile.mkdtemp(prefix="fhe-toolkit-leak-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def binary_key(seed: int, coefficients: int = 4096) -> bytes:
    """Bytes laid out like a secret key: random 0/1 coefficients, 8 bytes each."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, coefficients).astype("<u8").tobytes()


def a_fund_with_keys(root: Path) -> tuple[Fund, bytes, bytes]:
    """A fund whose key store holds a signing key and a round key; returns them (PEM, key)."""
    fund = Fund(root / "fund", root / "keys")
    fund.public_key()
    round_key = binary_key(1)
    fund.keys.store("r1", PACKED_KEYS, round_key, {})
    return fund, fund.identity_path.read_bytes(), round_key


def test_planted_secrets_are_found_wherever_they_are_and_nothing_else(outside):
    fund, pem, round_key = a_fund_with_keys(outside)
    secrets = secrets_on_disk([outside])
    assert len(secrets.signing) == 1 and len(secrets.windows) == 1
    assert find_leaks(secrets, [outside]) == []  # each in its own file
    middle = (len(round_key) - WINDOW) // 2
    planted = {
        "submissions/m/notes.txt": b"x" * 4099 + pem + b"y" * 10,  # a copy of the PEM text
        "submissions/m/key.der": os.urandom(7) + bytes.fromhex("302e020100300506032b657004220420")
        + fund.signing_key().private_bytes_raw(),  # the same key in DER
        "rounds/r1/dump.bin": os.urandom(12_345) + round_key[middle - 300 : middle + WINDOW + 5]
        + os.urandom(50),  # the round key's middle, at an odd offset
        "copy/fund_signing_key.pem": pem,  # a copy of the identity file (no .pub beside it)
    }  # fmt: skip
    near_misses = {
        "near/one-byte-off.bin": round_key[:middle + 700] + bytes([round_key[middle + 700] ^ 1])
        + round_key[middle + 701 :],
        "near/a-key-no-test-made.pem": new_identity()[0],
    }  # fmt: skip
    for name, data in {**planted, **near_misses}.items():
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_bytes(data)
    leaks = find_leaks(secrets, [outside])
    assert sorted(line.split(": ")[0] for line in leaks) == sorted(
        str(outside / name) for name in planted
    )
    assert any("the signing key" in line and "notes.txt" in line for line in leaks)
    assert any("the packed round key" in line and "dump.bin" in line for line in leaks)


def test_a_copy_across_a_block_boundary_is_found(outside, monkeypatch):
    """Files are hashed in blocks: a copy that straddles two of them is found all the same."""
    from tests import secret_scan

    monkeypatch.setattr(secret_scan, "BLOCK", secret_scan.STRIDE * 4)
    key = binary_key(2)
    secrets = Secrets()
    secrets.add_window(key, "a key", outside / "keys" / "keyset.bin")
    middle = (len(key) - WINDOW) // 2
    starts = range(secret_scan.BLOCK - WINDOW - 2, secret_scan.BLOCK + 3)
    for start in starts:
        path = outside / f"at-{start}.bin"
        path.write_bytes(os.urandom(start) + key[middle : middle + WINDOW] + os.urandom(99))
    assert len(find_leaks(secrets, [outside])) == len(starts)


def test_only_the_data_of_a_sparse_file_is_read_and_a_copy_there_is_found(outside):
    """A 2 GB file that is mostly hole (the hostile-input tests leave several) is scanned in the
    time of its data: a copy after the hole, and one just before a hole, are both found."""
    key = binary_key(3)
    secrets = Secrets()
    secrets.add_window(key, "a key", outside / "keys" / "keyset.bin")
    middle = (len(key) - WINDOW) // 2
    copy = key[middle : middle + WINDOW]
    after, before = outside / "after-a-hole.bin", outside / "before-a-hole.bin"
    with after.open("wb") as handle:
        handle.seek(2 * 1024**3 - 10_000)
        handle.write(os.urandom(77) + copy + os.urandom(5))
    with before.open("wb") as handle:
        handle.write(os.urandom(4096 - 3) + copy)
        handle.truncate(2 * 1024**3)
    assert sorted(find_leaks(secrets, [outside])) == [
        f"{after}: a key",
        f"{before}: a key",
    ]


def test_secrets_in_an_encrypted_store_are_watched_as_they_are_written(tmp_path):
    """Sealed on disk, so the disk scan cannot read them; the tests' process saw them made."""
    from tests.secret_scan import SEEN

    store = KeyStore(tmp_path / "keys")
    store.encrypt_at_rest(tmp_path / "ks.key")
    round_key = binary_key(3)
    store.store("r1", PACKED_KEYS, round_key, {})
    middle = (len(round_key) - WINDOW) // 2
    assert round_key[middle : middle + WINDOW] in SEEN.windows
    assert secrets_on_disk([tmp_path]).windows == {}


def test_a_session_that_leaks_a_secret_fails_naming_the_file(outside):
    """A whole pytest session (in a subprocess) whose one test copies the fund's signing key
    into a submission folder: every test passes, and the session fails."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::test_planted_leak", "-q",
         "-p", "no:cacheprovider", f"--basetemp={outside / 'inner'}"],
        capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, PLANT: "1"}, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    assert "secret-key bytes found outside the key stores" in result.stdout
    assert "submissions/m/stolen.pem: the fund's signing key" in result.stdout


def test_planted_leak(tmp_path):
    """Run only by the test above: leaves the fund's signing key in a submission folder."""
    if os.environ.get(PLANT) != "1":
        pytest.skip("plants a leak on purpose; run by test_a_session_that_leaks_...")
    fund = Fund(tmp_path / "fund", tmp_path / "keys")
    fund.public_key()
    stolen = fund.round_dir("r1") / "submissions" / "m" / "stolen.pem"
    stolen.parent.mkdir(parents=True)
    stolen.write_bytes(fund.identity_path.read_bytes())
