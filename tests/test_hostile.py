"""Hostile and mistaken input, as participants and operators send or type it, through the CLI.

Every case must be refused with exit status 2 and one clear message (what is wrong, and what to
do), no traceback, and must leave the fund exactly as it was: every file and folder under the
fund and the key store, and every row of the database (:mod:`tests.snapshots`).

The cases that need an opened round (receive, score, a second open-round) run on a real packed
round: 60 live rows of 12 features, two linear models; they are marked ``fhe``. The others need
no encryption.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from fhe_toolkit.data import SynthConfig, load_features_json, load_tournament, synthesize
from fhe_toolkit.fund import Fund
from fhe_toolkit.participant import export_model, run_bundle, train_model
from fhe_toolkit.participant.training import TRAINING_SPEC_FILE, TrainingJob, compile_training_job
from tests.hostile_answers import ANSWER_CASES, Sender, fifo, sparse
from tests.identities import enroll
from tests.snapshots import refused

CONFIG = SynthConfig(
    train_eras=6, validation_eras=1, live_eras=1, rows_per_era=60, n_features=12, n_groups=3
)
MODELS = {"a-lin": ("alice", "linear"), "b-ridge": ("bob", "ridge")}


@dataclass
class World:
    root: Path
    fund: Fund
    paths: dict[str, Path]
    identities: dict[str, Path]
    submissions: dict[str, Path] = field(default_factory=dict)

    @property
    def fund_dir(self) -> Path:
        return self.fund.root

    @property
    def keys(self) -> Path:
        return self.fund.keys.root

    def fund_command(self, *args: object) -> list[str]:
        return ["fund", *map(str, args), "--fund-dir", str(self.fund_dir), "--keys", str(self.keys)]

    def spec(self, model: str = "a-lin") -> dict:
        return json.loads((self.root / model / "model_spec.json").read_text())


def build_world(root: Path) -> World:
    paths = synthesize(root / "data", CONFIG)
    train = load_tournament(paths["train"])
    features = load_features_json(paths["features"]).features("all")
    fund = Fund(root / "fund", root / "keys")
    identities = {who: enroll(fund, root, who) for who in ("alice", "bob")}
    for name, (owner, family) in MODELS.items():
        export_model(train_model(train, family=family, features=features), root / name, name)
        fund.register(root / name / "model_spec.json", participant=owner, stake=10.0)
    return World(root, fund, paths, identities)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A fund with two participants and two registered linear models; no round yet."""
    return build_world(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def round_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The same, with packed round r1 (both models run; bob's received) and round r2 open."""
    world = build_world(tmp_path_factory.mktemp("hostile-round"))
    fund = world.fund
    fund.open_round("r1", world.paths["live"])
    for name, (owner, _) in MODELS.items():
        world.submissions[name] = run_bundle(
            fund.round_dir("r1") / "packed", world.root / name, world.root / f"sent-{name}",
            identity=world.identities[owner], fund_key=fund.public_key(), workers=1,
        )  # fmt: skip
    fund.receive("r1", world.submissions["b-ridge"])
    fund.open_round("r2", world.paths["live"], models=["a-lin"])
    return world


# --- inputs ------------------------------------------------------------------------------------


def edited_json(raw: dict, path: Path, **changes: object) -> Path:
    """``raw`` with ``changes`` (a value of ``...`` deletes the field), written to ``path``."""
    for key, value in changes.items():
        if value is ...:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))
    return path


def edited_parquet(source: Path, path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    edit(pd.read_parquet(source)).to_parquet(path)
    return path


def spec_file(world: World, tmp: Path, **changes: object) -> Path:
    """Model a-lin's spec with ``changes``."""
    return edited_json(world.spec(), tmp / "model_spec.json", **changes)


def live_file(world: World, tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    return edited_parquet(world.paths["live"], tmp / "live.parquet", edit)


def first_feature(frame: pd.DataFrame) -> str:
    return next(c for c in frame.columns if c.startswith("feature_"))


def register(
    world: World, spec: Path, *, participant: str = "alice", stake: str = "5"
) -> list[str]:
    return world.fund_command("register", spec, "--participant", participant, "--stake", stake)


# --- register, stake, participants: no round needed ---------------------------------------------

SPEC_FIELD_CASES = {
    "unknown format": ({"format": "fhe-toolkit/pickle"}, r"format"),
    "unknown family": ({"family": "quantum"}, r"family"),
    "no name": ({"name": ...}, r"name"),
    "name with a space": ({"name": "Carol X"}, r"name"),
    "name climbing out of folders": ({"name": "../../keys"}, r"name"),
    "64-bit weights": ({"weight_bits": 64}, r"weight_bits"),
    "0-bit weights": ({"weight_bits": 0}, r"weight_bits"),
    "weight bits as text": ({"weight_bits": "8"}, r"weight_bits"),
    "scale 1e-300": ({"scale": 1e-300}, r"scale"),
    "scale 1e308": ({"scale": 1e308}, r"scale"),
    "negative scale": ({"scale": -1.0}, r"scale"),
    "intercept 1e308": ({"intercept": 1e308}, r"intercept"),
    "no features": ({"features": []}, r"feature"),
    "a feature twice": ({"features": ["feature_intelligence_0000"] * 2}, r"feature"),
    "features that are numbers": ({"features": [1, 2, 3]}, r"feature"),
    "a feature climbing out of folders": ({"features": ["../../etc/passwd"]}, r"feature"),
    "unknown target": ({"target": "target_bogus; DROP TABLE"}, r"target"),
    "a free-form blob": ({"payload": {"anything": ["the", "participant", "likes"]}}, r"payload"),
    "versions holding an object": ({"versions": {"python": {"x": 1}}}, r"version"),
}


@pytest.mark.parametrize("changes, refusal", SPEC_FIELD_CASES.values(), ids=SPEC_FIELD_CASES)
def test_register_refuses_a_spec_with_a_bad_field(world, tmp_path, changes, refusal):
    refused(world.fund, register(world, spec_file(world, tmp_path, **changes)), refusal)


def test_register_refuses_a_spec_that_is_not_a_json_object(world, tmp_path):
    path = tmp_path / "spec.json"
    for content, refusal in [
        (b"{not json", r"JSON"),
        (b"[]", r"JSON array, not an object"),
        (b"null", r"JSON null, not an object"),
        (os.urandom(256), r"JSON|UTF-8|text"),
        (b'{"a": ' * 100_000, r"JSON|deep|nested"),
        (b'{"name": NaN}', r"JSON|NaN|name|format"),
    ]:
        path.write_bytes(content)
        refused(world.fund, register(world, path), refusal)


SPEC_PATH_CASES: dict[str, tuple[Callable[[World, Path], Path], str]] = {
    "a FIFO": (lambda w, t: fifo(t / "spec.json"), r"not a regular file"),
    "a folder": (lambda w, t: t, r"not a regular file|folder|directory"),
    "a symbolic link": (
        lambda w, t: (
            (t / "link.json").symlink_to(w.root / "a-lin" / "model_spec.json") or t / "link.json"
        ),
        r"symbolic link",
    ),
    "missing": (lambda w, t: t / "missing.json", r"does not exist|no such|not found"),
    "a 2 GB file": (lambda w, t: sparse(t / "spec.json"), r"larger than|too large|bytes"),
}


@pytest.mark.parametrize("make, refusal", SPEC_PATH_CASES.values(), ids=SPEC_PATH_CASES)
def test_register_reads_only_a_regular_spec_file_of_sane_size(world, tmp_path, make, refusal):
    refused(world.fund, register(world, make(world, tmp_path)), refusal)


def test_register_refuses_an_unknown_owner_or_another_owners_model(world, tmp_path):
    spec = spec_file(world, tmp_path)
    refused(world.fund, register(world, spec, participant="mallory"), r"mallory")
    refused(
        world.fund,
        register(world, spec, participant="bob"),
        r"belongs to another participant.*another name",
    )


BAD_STAKES = {"negative": "-5", "NaN": "nan", "infinite": "inf", "1.8e308": "1.8e308"}


@pytest.mark.parametrize("amount", BAD_STAKES.values(), ids=BAD_STAKES)
def test_a_stake_must_be_finite_non_negative_and_capped(world, tmp_path, amount):
    refused(
        world.fund, register(world, spec_file(world, tmp_path), stake=amount), r"a stake must be"
    )
    refused(world.fund, world.fund_command("stake", "a-lin", amount), r"a stake must be")


def test_stake_on_an_unknown_model(world):
    refused(world.fund, world.fund_command("stake", "nobody", "5"), r"nobody")


PUBLIC_KEY_CASES: dict[str, tuple[Callable[[World, Path], str], str]] = {
    "not hex": (lambda w, t: "zz" * 32, r"neither 64 hex characters nor an existing file"),
    "31 bytes": (lambda w, t: "ab" * 31, r"neither 64 hex characters nor an existing file"),
    "a FIFO": (lambda w, t: str(fifo(t / "key.pub")), r"not a regular file"),
    "a link": (
        lambda w, t: (
            (t / "k.pub").symlink_to(w.identities["alice"].with_suffix(".pem.pub"))
            or str(t / "k.pub")
        ),
        r"symbolic link",
    ),
    "a 2 GB file": (lambda w, t: str(sparse(t / "key.pub")), r"larger than|too large|public key"),
    "a private key": (lambda w, t: str(w.identities["bob"]), r"public key|private"),
}


@pytest.mark.parametrize("make, refusal", PUBLIC_KEY_CASES.values(), ids=PUBLIC_KEY_CASES)
def test_add_participant_refuses_what_is_not_a_public_key(world, tmp_path, make, refusal):
    refused(
        world.fund,
        world.fund_command("add-participant", "carol", "--public-key", make(world, tmp_path)),
        refusal,
    )


def test_add_participant_refuses_a_bad_name_or_a_second_key_for_a_known_one(world):
    bob_key = world.identities["bob"].with_suffix(".pem.pub")
    refused(
        world.fund,
        world.fund_command("add-participant", "Mallory X", "--public-key", bob_key),
        r"name",
    )
    refused(
        world.fund,
        world.fund_command("add-participant", "alice", "--public-key", bob_key),
        r"alice",
    )


LIVE_CASES: dict[str, tuple[Callable[[World, Path], Path], str]] = {
    "missing": (lambda w, t: t / "missing.parquet", r"does not exist|no such|not found"),
    "a FIFO": (lambda w, t: fifo(t / "live.parquet"), r"not a regular file"),
    "a CSV named .parquet": (
        lambda w, t: (t / "live.parquet").write_text("id,era\na,1\n") and t / "live.parquet",
        r"parquet",
    ),
    "empty": (lambda w, t: live_file(w, t, lambda f: f.iloc[:0]), r"has no rows"),
    "duplicate ids": (
        lambda w, t: live_file(w, t, lambda f: pd.concat([f, f.iloc[:3]])),
        r"duplicate",
    ),
    "values outside 0..4": (
        lambda w, t: live_file(w, t, lambda f: f.assign(**{first_feature(f): 7})),
        r"outside 0..4",
    ),
    "a 2 GB file": (lambda w, t: sparse(t / "live.parquet"), r"larger than|too large|parquet"),
}


@pytest.mark.parametrize("make, refusal", LIVE_CASES.values(), ids=LIVE_CASES)
def test_open_round_refuses_bad_live_data_before_writing_anything(world, tmp_path, make, refusal):
    refused(
        world.fund, world.fund_command("open-round", "r9", "--live", make(world, tmp_path)), refusal
    )


def test_open_round_refuses_a_bad_round_name_deadline_or_model(world):
    live = world.paths["live"]
    refused(world.fund, world.fund_command("open-round", "../r9", "--live", live), r"round")
    refused(
        world.fund,
        world.fund_command("open-round", "r9", "--live", live, "--deadline", "2001-01-01"),
        r"deadline",
    )
    refused(
        world.fund,
        world.fund_command("open-round", "r9", "--live", live, "--model", "nobody"),
        r"nobody",
    )


def test_read_only_commands_refuse_an_unknown_round_or_a_missing_fund(world, tmp_path):
    refused(world.fund, world.fund_command("status", "r404"), r"r404")
    refused(world.fund, world.fund_command("close-round", "r404"), r"r404")
    elsewhere = tmp_path / "not-a-fund"
    refused(world.fund, ["fund", "leaderboard", "--fund-dir", str(elsewhere)], r"no fund here")
    assert not elsewhere.exists()


def test_report_refuses_an_output_path_it_cannot_write(world, tmp_path):
    refused(world.fund, world.fund_command("report", "--out", tmp_path), r"is a directory")


DATA_CASES = {
    "no rows": (lambda f: f.iloc[:0], r"has no rows"),
    "no era column": (lambda f: f.drop(columns="era"), r"era"),
    "values outside 0..4": (lambda f: f.assign(**{first_feature(f): 9}), r"outside 0..4"),
}


@pytest.mark.parametrize("edit, refusal", DATA_CASES.values(), ids=DATA_CASES)
def test_data_validate_refuses_bad_live_data(world, tmp_path, edit, refusal):
    refused(world.fund, ["data", "validate", str(live_file(world, tmp_path, edit))], refusal)


def test_identity_new_never_overwrites_a_key(world, tmp_path):
    refused(world.fund, ["identity", "new", str(world.identities["alice"])], r"exists")


# --- training: the fund's side before any key is made -----------------------------------------


@pytest.fixture(scope="module")
def training_spec(world: World) -> Path:
    """A compiled training job's public spec (no keys, no encryption)."""
    job = TrainingJob(features=world.spec()["features"][:3], iterations=2, batch_size=2)
    compile_training_job(job, world.root / "job", "sgd")
    return world.root / "job" / TRAINING_SPEC_FILE


def training_spec_file(spec: Path, tmp: Path, **changes: object) -> Path:
    return edited_json(json.loads(spec.read_text()), tmp / "training_spec.json", **changes)


def train_file(world: World, tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    return edited_parquet(world.paths["train"], tmp / "rows.parquet", edit)


TRAINING_SPEC_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "a FIFO": (lambda s, t: fifo(t / "spec.json"), r"not a regular file"),
    "a folder": (lambda s, t: t, r"not a regular file|is a directory|folder"),
    "a 2 GB file": (lambda s, t: sparse(t / "spec.json"), r"larger than|too large|bytes"),
    "missing": (lambda s, t: t / "nothing.json", r"nothing\.json"),
    "not JSON": (lambda s, t: _written(t / "spec.json", b"{not json"), r"JSON"),
    "a JSON list": (lambda s, t: _written(t / "spec.json", b"[1, 2]"), r"object"),
    "a batch of 0 rows": (lambda s, t: training_spec_file(s, t, batch_size=0), r"batch_size"),
    "10**9 steps": (lambda s, t: training_spec_file(s, t, iterations=10**9), r"iterations"),
    "a seed of -1": (lambda s, t: training_spec_file(s, t, seed=-1), r"seed"),
    "an infinite threshold": (
        lambda s, t: training_spec_file(s, t, label_threshold=float("inf")),
        r"label_threshold",
    ),
    "an unknown field": (lambda s, t: training_spec_file(s, t, payload={"x": 1}), r"payload"),
    "a model spec": (
        lambda s, t: s.parent.parent / "a-lin" / "model_spec.json",
        r"not a valid training spec",
    ),
}


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, refusal", TRAINING_SPEC_CASES.values(), ids=TRAINING_SPEC_CASES)
def test_open_training_refuses_a_bad_spec_before_making_keys(
    world, training_spec, tmp_path, make, refusal
):
    spec = make(training_spec, tmp_path)
    args = ["open-training", "t9", spec, "--data", world.paths["train"], "--participant", "alice"]
    refused(world.fund, world.fund_command(*args), refusal)


TRAINING_DATA_CASES: dict[str, tuple[Callable[[World, Path], Path], str]] = {
    "a FIFO": (lambda w, t: fifo(t / "rows.parquet"), r"not a regular file"),
    "a CSV named .parquet": (
        lambda w, t: _written(t / "rows.parquet", b"id,era\nx,1\n"),
        r"parquet",
    ),
    "missing": (lambda w, t: t / "nothing.parquet", r"nothing\.parquet"),
    "no rows": (lambda w, t: train_file(w, t, lambda f: f.iloc[:0]), r"no rows"),
    "without the target": (
        lambda w, t: train_file(w, t, lambda f: f.drop(columns="target")),
        r"target",
    ),
    "every target NaN": (
        lambda w, t: train_file(w, t, lambda f: f.assign(target=float("nan"))),
        r"target",
    ),
}


@pytest.mark.parametrize("make, refusal", TRAINING_DATA_CASES.values(), ids=TRAINING_DATA_CASES)
def test_open_training_refuses_bad_rows_before_making_keys(
    world, training_spec, tmp_path, make, refusal
):
    rows = make(world, tmp_path)
    args = ["open-training", "t9", training_spec, "--data", rows, "--participant", "alice"]
    refused(world.fund, world.fund_command(*args), refusal)


def test_open_training_refuses_an_unknown_participant_or_a_bad_job_id(world, training_spec):
    rows = world.paths["train"]
    refused(
        world.fund,
        world.fund_command(
            "open-training", "t9", training_spec, "--data", rows, "--participant", "mallory"
        ),
        r"mallory.*not registered",
    )
    refused(
        world.fund,
        world.fund_command(
            "open-training", "../t9", training_spec, "--data", rows, "--participant", "alice"
        ),
        r"job id",
    )


def test_receive_training_refuses_a_job_never_opened(world, tmp_path):
    refused(world.fund, world.fund_command("receive-training", "t404", tmp_path), r"t404")


# --- receive: what a participant sends (tests/hostile_answers.py) ------------------------------


@pytest.mark.fhe
@pytest.mark.parametrize("make, refusal", ANSWER_CASES.values(), ids=ANSWER_CASES)
def test_receive_refuses_a_tampered_or_strange_submission(round_world, tmp_path, make, refusal):
    world = round_world
    sender = Sender(world.fund, world.submissions["a-lin"], world.identities["bob"])
    refused(world.fund, world.fund_command("receive", "r1", make(sender, tmp_path)), refusal)


@pytest.mark.fhe
def test_receive_refuses_a_resend_another_round_or_an_unknown_one(round_world, tmp_path):
    world = round_world
    refused(
        world.fund,
        world.fund_command(
            "receive",
            "r1",
            Sender(world.fund, world.submissions["b-ridge"], world.identities["alice"]).copy(
                tmp_path
            ),
        ),
        r"received already",
    )
    refused(
        world.fund,
        world.fund_command(
            "receive",
            "r2",
            Sender(world.fund, world.submissions["a-lin"], world.identities["bob"]).copy(tmp_path),
        ),
        r"answers round 'r1'",
    )
    refused(world.fund, world.fund_command("receive", "r404", world.submissions["a-lin"]), r"r404")


# --- score: the operator's targets -------------------------------------------------------------


def targets_file(world: World, tmp: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    return edited_parquet(world.paths["live_targets"], tmp / "targets.parquet", edit)


TARGET_CASES: dict[str, tuple[Callable[[World, Path], Path], str]] = {
    "missing": (lambda w, t: t / "none.parquet", r"does not exist|no such|not found"),
    "a FIFO": (lambda w, t: fifo(t / "targets.parquet"), r"not a regular file"),
    "a CSV named .parquet": (
        lambda w, t: (
            (t / "targets.parquet").write_text("id,target\na,0.5\n") and t / "targets.parquet"
        ),
        r"parquet",
    ),
    "a 2 GB file": (lambda w, t: sparse(t / "targets.parquet"), r"larger than|too large|parquet"),
    "no target column": (
        lambda w, t: targets_file(w, t, lambda f: f.drop(columns="target")),
        r"no column \['target'\]",
    ),
    "all NaN": (
        lambda w, t: targets_file(w, t, lambda f: f.assign(target=float("nan"))),
        r"unresolved \(NaN\)",
    ),
    "outside the buckets": (
        lambda w, t: targets_file(w, t, lambda f: f.assign(target=f["target"] * 100 - 50)),
        r"outside the buckets",
    ),
    "duplicate ids": (
        lambda w, t: targets_file(w, t, lambda f: pd.concat([f, f.iloc[:2]])),
        r"more than once",
    ),
    "another round's ids": (
        lambda w, t: targets_file(w, t, lambda f: f.set_axis([f"x{i}" for i in range(len(f))])),
        r"have no row",
    ),
}


@pytest.mark.fhe
@pytest.mark.parametrize("make, refusal", TARGET_CASES.values(), ids=TARGET_CASES)
def test_score_refuses_bad_targets_before_writing_anything(round_world, tmp_path, make, refusal):
    world = round_world
    args = world.fund_command(
        "score",
        "r1",
        "--live",
        world.paths["live"],
        "--targets",
        make(world, tmp_path),
        "--close-now",
    )
    refused(world.fund, args, refusal)


@pytest.mark.fhe
def test_score_refuses_an_open_round_unless_told_to_close_it(round_world):
    world = round_world
    args = world.fund_command(
        "score", "r1", "--live", world.paths["live"], "--targets", world.paths["live_targets"]
    )
    refused(world.fund, args, r"--close-now")


@pytest.mark.fhe
def test_open_round_refuses_a_round_that_exists(round_world):
    refused(
        round_world.fund,
        round_world.fund_command("open-round", "r1", "--live", round_world.paths["live"]),
        r"r1",
    )
