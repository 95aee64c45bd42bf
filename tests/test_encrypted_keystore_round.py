"""A round with the key store encrypted at rest, in real FHE (tiny: 40 live rows, 12 features;
one linear model compiled as a circuit, one run packed): it opens, both submissions are received
and decrypted exactly, and no file anywhere holds a secret key in plaintext. And the secret scan
run after every session (tests/secret_scan.py) reads Concrete key sets left in a plaintext store
and finds a copied one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fhe.keystore import KEYSET
from fhe_toolkit.fhe.packed import PACKED_KEYS
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import compile_model, export_model, run_bundle, train_model
from fhe_toolkit.protocol.artifacts import EVALUATION_KEYS
from tests.identities import enroll
from tests.secret_scan import SEEN, Secrets, find_leaks, secrets_on_disk

pytestmark = pytest.mark.fhe

CONFIG = SynthConfig(
    train_eras=8, validation_eras=1, live_eras=1, rows_per_era=40, n_features=12, n_groups=3
)
MODELS = {"circuit": False, "packed": True}
"""Model name: whether it runs packed (on the round's shared key) or as its own circuit."""


@pytest.fixture(scope="module")
def opened(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("encrypted")
    paths = synthesize(root / "data", CONFIG)
    train, live = load_tournament(paths["train"]), load_tournament(paths["live"])
    features = load_features_json(paths["features"]).features("small")
    fund = Fund(root / "fund", root / "keys")
    made, _ = fund.keys.encrypt_at_rest(root / "keystore.key")
    assert made
    models, identities = {}, {}
    for name, packed in MODELS.items():
        model = train_model(train, family="linear", features=features, packed=packed)
        if not packed:
            compile_model(model, train)
        export_model(model, root / name, name)
        identities[name] = enroll(fund, root, name)
        fund.register(root / name / "model_spec.json", participant=name, stake=10.0)
        models[name] = model
    bundles = fund.open_round("r1", live)
    return {
        "root": root, "fund": fund, "live": live, "models": models, "bundles": bundles,
        "identities": identities,
    }  # fmt: skip


def test_an_encrypted_store_opens_decrypts_and_never_holds_a_plaintext_key(opened, tmp_path):
    fund, root = opened["fund"], opened["root"]
    # This round's secrets as the key store made them (before sealing): the circuit's key set,
    # the packed round key, the fund's signing key.
    secrets = Secrets(
        windows={k: what for k, what in SEEN.windows.items() if str(root) in what},
        signing={k: what for k, what in SEEN.signing.items() if str(root) in what},
    )
    made = [*secrets.windows.values(), *secrets.signing.values()]
    assert any("'circuit'" in w for w in made) and any(PACKED_KEYS in w for w in made)
    assert any("signing key" in w for w in made)
    # What the search looks for is in the key set itself (decrypted here, in memory): a
    # plaintext copy anywhere would be found.
    plaintext = fund.keys.secret("r1", "circuit")
    assert any(window in plaintext for window in secrets.windows)
    for name in MODELS:
        submission = run_bundle(
            opened["bundles"][name], root / name, tmp_path / name,
            identity=opened["identities"][name], fund_key=fund.public_key(), workers=1,
        )  # fmt: skip
        predictions = fund.receive("r1", submission, workers=1)
        expected = opened["models"][name].predict(opened["live"], "quantized")
        pd.testing.assert_series_equal(
            predictions.sort_index(), expected.sort_index(), check_names=False, rtol=0, atol=0
        )
    # Every file of the key store, the fund, the bundles and the submissions, the key store's
    # own secret files too (no origins given): sealed, they hold no plaintext key.
    assert find_leaks(secrets, [root, tmp_path]) == []
    assert fund.keys.is_retired("r1", "circuit") and fund.keys.is_retired("r1", PACKED_KEYS)


def test_the_scan_reads_key_sets_left_in_a_plaintext_store_and_finds_a_copy(opened, tmp_path):
    """A plaintext store made as a command would make it: its key set is read back from disk
    (in a subprocess), a copy of it is found, the published evaluation keys are not."""
    plain = Fund(tmp_path / "fund", tmp_path / "keys")
    made = plain.keys.create("r9", "circuit", opened["fund"].spec("circuit"))
    found = secrets_on_disk([tmp_path])
    assert len(found.windows) >= 1 and all("r9" in w for w in found.windows.values())
    copy = tmp_path / "submissions" / "stolen.bin"
    copy.parent.mkdir()
    shutil.copyfile(made.directory / KEYSET, copy)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / EVALUATION_KEYS).write_bytes(made.evaluation_keys)
    leaks = find_leaks(found, [tmp_path])
    assert leaks and {Path(line.split(": ")[0]) for line in leaks} == {copy}
    copy.unlink()
