"""Encrypted training across the fund/participant boundary.

One real-FHE job on tiny sizes (3 features, batches of 2 rows, 3 SGD steps; the fund's key
generation alone takes ~45 s): declared, compiled, encrypted, run (interrupted, then resumed by
the CLI), decrypted and turned into a model that is scored in an encrypted round. The fund's
arithmetic (batch draws, quantization, decoding) is also checked bit for bit against Concrete
ML's single-process training without FHE, and the spec's refusals without any encryption.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fhe_toolkit.data import SynthConfig, load_tournament, synthesize
from fhe_toolkit.errors import (
    FundError,
    KeyStoreError,
    ParticipantError,
    SpecError,
)
from fhe_toolkit.fhe.checkpoint import Checkpoint
from fhe_toolkit.fhe.codecs import TrainingCodec, plan_batches
from fhe_toolkit.fund import Fund
from fhe_toolkit.fund.answers import usable
from fhe_toolkit.fund.training import FundTraining
from fhe_toolkit.participant import run_bundle
from fhe_toolkit.participant.outputs import CHECKPOINT
from fhe_toolkit.participant.training import (
    TRAINING_SPEC_FILE,
    TrainingJob,
    compile_training_job,
    run_training_bundle,
)
from fhe_toolkit.protocol.artifacts import (
    BIAS,
    TRAINING_BUNDLE,
    TRAINING_RESULT,
    WEIGHTS,
    open_artifact,
    write_artifact,
)
from fhe_toolkit.protocol.modelspec import read_spec
from fhe_toolkit.protocol.signing import (
    create_identity,
    load_private_key,
    public_key_path,
    sign_directory,
)
from fhe_toolkit.protocol.training_spec import TrainingSpec
from fhe_toolkit.registry import NewTrainingJob, TrainingJobStatus
from tests.cli_runner import cli, ok
from tests.hostile_answers import ANSWER_CASES, Sender, edit_manifest, flip_byte, rehash
from tests.identities import enroll
from tests.interrupting import finish, kill_when, start
from tests.snapshots import refused
from tests.test_protocol import write_training_bundle

CONFIG = SynthConfig(
    train_eras=10, validation_eras=2, live_eras=1, rows_per_era=40, n_features=12, n_groups=3
)
STEPS, BATCH = 3, 2
TOLERANCE_STEPS = 1
"""How far the encrypted run may be from Concrete ML's, in steps of the weights' quantizer: one
bootstrap error (probability 1e-5 each, the toolkit's default) can move a weight by a step. In
every run measured, the two were identical (see the README)."""


def labelled_rows(frame, spec: TrainingSpec) -> tuple[np.ndarray, np.ndarray]:
    rows = frame[frame[spec.target].notna()]
    x = rows[spec.features].to_numpy(np.float64)
    return x, (rows[spec.target].to_numpy() > spec.label_threshold).astype(np.int64)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Data, a compiled job and its spec (no keys, no encryption)."""
    root = tmp_path_factory.mktemp("training")
    paths = synthesize(root / "data", CONFIG)
    metadata = json.loads(paths["features"].read_text())
    metadata["feature_sets"]["tiny"] = metadata["feature_sets"]["small"][:3]
    paths["features"].write_text(json.dumps(metadata))
    ok(cli("participant", "training-job", "--name", "sgd", "--out", "job",
           "--features-json", paths["features"], "--feature-set", "tiny",
           "--iterations", STEPS, "--batch-size", BATCH, cwd=root))  # fmt: skip
    spec = read_spec(root / "job" / TRAINING_SPEC_FILE, TrainingSpec)
    return {"root": root, "paths": paths, "train": load_tournament(paths["train"]), "spec": spec}


@pytest.fixture(scope="module")
def trained(job) -> dict:
    """The whole job in real FHE: the fund opens it for alice, who runs one step and is
    interrupted, resumes for one more and is interrupted again; refusals are tried, the CLI
    resumes and finishes; the fund's receive is killed while decrypting, then run twice at once
    (one finishes it, the other is turned away or handed the result), then once more."""
    root = job["root"]
    records = Fund(root / "fund", root / "keys")
    identities = {who: enroll(records, root, who) for who in ("alice", "bob")}
    ok(cli("fund", "open-training", "t1", "job/training_spec.json",
           "--data", job["paths"]["train"], "--participant", "alice", cwd=root))  # fmt: skip
    bundle = root / "fund" / "training" / "t1" / "bundle"
    fund_key = records.public_key()

    def interrupt_after(steps: int, reports: list[tuple[int, int]]):
        def report(done: int, total: int) -> None:
            reports.append((done, total))
            if done >= steps:
                raise KeyboardInterrupt

        return report

    first: list[tuple[int, int]] = []
    with pytest.raises(KeyboardInterrupt):
        run_training_bundle(bundle, root / "job", root / "result", identity=identities["alice"],
                            fund_key=fund_key, on_progress=interrupt_after(1, first))  # fmt: skip
    checkpoint = Checkpoint(
        root / "result" / CHECKPOINT, owner=open_artifact(bundle, TRAINING_BUNDLE).sha256
    )
    saved_step = checkpoint.latest()[0]
    checkpoint.close()
    second: list[tuple[int, int]] = []
    with pytest.raises(KeyboardInterrupt):
        run_training_bundle(bundle, root / "job", root / "result", identity=identities["alice"],
                            on_progress=interrupt_after(2, second))  # fmt: skip
    resumed = cli("participant", "train-encrypted", bundle, "--job", "job", "--out", "result",
                  "--identity", identities["alice"], "--fund-key", public_key_path(
                      records.identity_path), cwd=root)  # fmt: skip
    ok(resumed)
    training = FundTraining(root / "fund", root / "keys")
    sender = Sender(training, root / "result", identities["bob"])
    refusals = {}
    for number, (label, (make, refusal)) in enumerate(ANSWER_CASES.items()):
        (root / f"bad-{number}").mkdir()
        sent = make(sender, root / f"bad-{number}")
        args = ["fund", "receive-training", "t1", str(sent), "--fund-dir", str(training.root),
                "--keys", str(training.keys.root)]  # fmt: skip
        refusals[label] = refused(training, args, refusal)

    receive = ("fund", "receive-training", "t1", "result")
    killed = start(*receive, cwd=root)
    kill_when(killed, lambda: training.job_record("t1").status == TrainingJobStatus.DECRYPTING)
    cut_off = training.job_record("t1").status, usable(training.training_keys, "t1", "sgd")
    both = sorted((finish(p) for p in [start(*receive, cwd=root) for _ in range(2)]),
                  key=lambda r: r.returncode)  # fmt: skip
    again = cli(*receive, cwd=root)
    weights_path = root / "fund" / "training" / "t1" / "weights.json"
    return {
        "bundle": bundle, "saved_step": saved_step, "reports": (first, second),
        "resumed": resumed, "refusals": refusals, "cut_off": cut_off, "both": both,
        "identities": identities,
        "receive_out": ok(both[0]), "again": again,
        "weights": json.loads(weights_path.read_text()), "weights_path": weights_path,
    }  # fmt: skip


def test_the_funds_draws_and_arithmetic_equal_concrete_ml_single_process_training(job):
    """No FHE: the fund's initial weights, batches and quantization, stepped through Concrete
    ML's own quantized SGD step, give exactly what ``SGDClassifier.fit(fhe="disable")`` gives
    with the same seed on the same rows."""
    spec, train = job["spec"], job["train"]
    x, y = labelled_rows(train, spec)
    settings = TrainingJob(features=spec.features, iterations=STEPS, batch_size=BATCH)
    reference = settings.estimator().fit(x, y, fhe="disable")

    module = settings.estimator()._get_training_quantized_module(
        x_min=np.zeros(3), x_max=np.full(3, 4.0), device="cpu"
    )
    codec = TrainingCodec(spec)
    weights, bias, batches = plan_batches(spec, len(x))
    qw, qb = codec.quantize_parameters(weights, bias)
    for rows in batches:
        qw, qb = module.quantized_forward(*codec.quantize_batch(x[rows], y[rows]), qw, qb)
    coef, intercept = codec.decode(qw, qb)
    np.testing.assert_array_equal(coef, reference._weights_encrypted_fit.ravel())
    assert intercept == reference._bias_encrypted_fit.ravel()[0]


@pytest.mark.fhe
@pytest.mark.parametrize("mode", ["simulate", "disable"])
def test_encrypted_two_role_weights_match_concrete_ml_single_process(job, trained, mode):
    """Concrete ML's own training with the same seed on the same rows, simulated (``simulate``)
    and in exact integer arithmetic (``disable``)."""
    spec = job["spec"]
    x, y = labelled_rows(job["train"], spec)
    settings = TrainingJob(features=spec.features, iterations=STEPS, batch_size=BATCH)
    reference = settings.estimator().fit(x, y, fhe=mode)
    step = spec.output_quantizers[0].scale
    got = np.array([*trained["weights"]["coef"], trained["weights"]["intercept"]])
    want = np.r_[reference._weights_encrypted_fit.ravel(), reference._bias_encrypted_fit.ravel()]
    assert np.max(np.abs(got - want)) <= TOLERANCE_STEPS * step + 1e-12
    assert trained["weights"]["iterations"] == STEPS
    assert "(intercept)" in trained["receive_out"]


@pytest.mark.fhe
def test_an_interrupted_run_resumes_at_the_next_step(job, trained):
    assert trained["saved_step"] == 0, "the first step's weights were not checkpointed"
    first, second = trained["reports"]
    assert first == [(0, STEPS), (1, STEPS)]
    assert second == [(1, STEPS), (2, STEPS)], "the resumed run did not start at step 1"
    assert "encrypted weights written" in trained["resumed"].stdout
    assert not (job["root"] / "result" / CHECKPOINT).exists()


@pytest.mark.fhe
def test_bad_results_are_refused_before_decryption_and_keys_decrypt_once(job, trained):
    refusals = trained["refusals"]  # each checked against a snapshot of the fund as it ran
    assert "does not match training job 't1'" in refusals["a manifest for another round"]
    assert "signature is not alice's" in refusals["a byte flipped, hashes recomputed"]
    assert (
        "signed by 'bob', who does not own training job 't1'"
        in refusals["signed by another participant"]
    )
    assert "is not signed" in refusals["no signature"]
    # Killed while decrypting: nothing stored, keys kept. Of the two receives started at once,
    # one finished it from the kept copy; the other found it being received, or received.
    assert trained["cut_off"] == (TrainingJobStatus.DECRYPTING, True)
    late = trained["both"][1]
    assert late.returncode == 2, late.stdout + late.stderr
    assert re.search("being received by another process|received already", late.stderr)
    again = trained["again"]
    assert again.returncode == 2 and "received already" in again.stderr
    training = FundTraining(job["root"] / "fund", job["root"] / "keys")
    record = training.job_record("t1")
    assert (record.status, record.detail) == (TrainingJobStatus.DECRYPTED, None)
    assert record.iterations == STEPS and record.received_at is not None
    keys = training.training_keys
    with pytest.raises(KeyStoreError, match="retired"):
        keys.keyset_path("t1", "sgd")
    assert not list((job["root"] / "fund" / "training" / "t1" / "bundle").glob("keyset*"))


@pytest.mark.fhe
def test_a_bundle_for_another_job_is_refused(job, trained, tmp_path):
    other = TrainingJob(features=job["spec"].features, iterations=1, batch_size=BATCH, seed=7)
    compile_training_job(other, tmp_path / "other", "other")
    with pytest.raises(ParticipantError, match="encrypted for training spec"):
        run_training_bundle(trained["bundle"], tmp_path / "other", tmp_path / "out",
                            identity=trained["identities"]["alice"])  # fmt: skip


@pytest.mark.fhe
def test_the_trained_model_enters_and_scores_in_an_encrypted_round(job, trained):
    root = job["root"]
    ok(cli("participant", "from-weights", trained["weights_path"], "--job", "job",
           "--calibration", job["paths"]["train"], "--name", "sgd-model", "--out", "model",
           cwd=root))  # fmt: skip
    fund = Fund(root / "fund", root / "keys")
    identity = trained["identities"]["alice"]
    fund.register(root / "model" / "model_spec.json", participant="alice", stake=10)
    live = load_tournament(job["paths"]["live"])
    bundles = fund.open_round("r1", live)
    submission = run_bundle(
        bundles["sgd-model"], root / "model", root / "sub", identity=identity, workers=1
    )
    predictions = fund.receive("r1", submission)
    weights = trained["weights"]
    logits = live[job["spec"].features].to_numpy() @ weights["coef"] + weights["intercept"]
    clear = 1 / (1 + np.exp(-logits))
    assert np.corrcoef(predictions.loc[live.index], clear)[0, 1] > 0.99
    results = fund.score("r1", job["paths"]["live_targets"], live=live, close_now=True)
    assert np.isfinite(results.scores.loc["sgd-model", "corr"])


def test_a_result_is_taken_only_signed_by_its_jobs_participant(job, tmp_path):
    """No FHE: two jobs on record, alice's and bob's. Bob relabels a result for alice's job (its
    ids and hashes copied from her bundle) and signs it; alice's own result has a byte of
    weights.bin flipped and its manifest's hashes recomputed. Both are refused before anything
    is accepted, kept or decrypted."""
    spec = job["spec"]
    keys = {who: enroll(Fund(tmp_path / "fund", tmp_path / "keys"), tmp_path, who)
            for who in ("alice", "bob")}  # fmt: skip
    training = FundTraining(tmp_path / "fund", tmp_path / "keys")
    bindings = {}
    for job_id, who in (("ja", "alice"), ("jb", "bob")):
        bindings[job_id] = {
            "round_id": job_id, "model": spec.name, "key_set_id": uuid.uuid4().hex,
            "spec_sha256": spec.sha256(),
            "bundle_sha256": hashlib.sha256(job_id.encode()).hexdigest(),
            "n_rows": STEPS * BATCH, "n_batches": STEPS, "batch_size": BATCH,
        }  # fmt: skip
        training.db.open_training_job(NewTrainingJob(
            job_id=job_id, name=spec.name, participant=who, n_samples=80, positive_share=0.5,
            iterations=STEPS, **{k: bindings[job_id][k] for k in
                                 ("key_set_id", "spec_sha256", "bundle_sha256")},
        ))  # fmt: skip

    def result(label: str, job_id: str, signer: str) -> Path:
        directory = tmp_path / label
        write_artifact(directory, TRAINING_RESULT, blobs={WEIGHTS: bytes(200), BIAS: bytes(8)},
                       versions={}, **bindings[job_id])  # fmt: skip
        sign_directory(directory, load_private_key(keys[signer]))
        return directory

    with pytest.raises(FundError, match="signed by 'bob', who does not own training job 'ja'"):
        training.receive("ja", result("relabelled", "ja", "bob"))
    altered = result("altered", "ja", "alice")
    flip_byte(altered / WEIGHTS)
    rehash(altered)
    with pytest.raises(FundError, match="signature is not alice's"):
        training.receive("ja", altered)
    for job_id in ("ja", "jb"):
        assert training.job_record(job_id).status == TrainingJobStatus.AWAITING
        assert not (training.job_dir(job_id) / "result").exists()


def test_a_training_bundle_the_fund_did_not_sign_is_refused(tmp_path):
    """No FHE: with --fund-key, a bundle unsigned or signed by anyone but the fund is refused
    before any step runs."""
    bundle, participant, fund = tmp_path / "bundle", tmp_path / "me.pem", tmp_path / "fund.pem"
    write_training_bundle(bundle)
    create_identity(participant)
    create_identity(fund)
    with pytest.raises(ParticipantError, match="is not signed"):
        run_training_bundle(bundle, tmp_path / "job", tmp_path / "out", identity=participant,
                            fund_key=public_key_path(fund))  # fmt: skip
    sign_directory(bundle, load_private_key(participant))
    result = cli("participant", "train-encrypted", bundle, "--job", "job", "--out", "out",
                 "--identity", participant, "--fund-key", public_key_path(fund),
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "signature is not the fund's" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_job_opened_by_an_earlier_version_is_imported_once(job, tmp_path):
    """Jobs used to keep their record in training/<job>/job.json: the first lookup imports it
    into the registry, which keeps it from then on."""
    spec, spec_path = job["spec"], job["root"] / "job" / TRAINING_SPEC_FILE
    training = FundTraining(tmp_path / "fund", tmp_path / "keys")
    legacy = {
        "done": "decrypted: weights ready to return",
        "failed": "refused: non-finite weights",
        "waiting": "awaiting result",
    }
    for job_id, status in legacy.items():
        folder = training.job_dir(job_id)
        folder.mkdir(parents=True)
        shutil.copy(spec_path, folder / "training_spec.json")
        info = {
            "job_id": job_id, "name": spec.name, "opened_at": "2026-01-02T03:04:05Z",
            "status": status, "key_set_id": "0" * 32, "spec_sha256": spec.sha256(),
            "bundle_sha256": "b" * 64, "n_samples": 80, "positive_share": 0.4875,
            "iterations": STEPS,
        }  # fmt: skip
        (folder / "job.json").write_text(json.dumps(info, indent=1))
    records = {job_id: training.job_record(job_id) for job_id in legacy}
    assert {j: (r.status, r.detail) for j, r in records.items()} == {
        "done": (TrainingJobStatus.DECRYPTED, None),
        "failed": (TrainingJobStatus.REFUSED, "non-finite weights"),
        "waiting": (TrainingJobStatus.AWAITING, None),
    }
    done = records["done"]
    assert done.opened_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (done.n_samples, done.iterations, done.participant) == (80, STEPS, None)
    # The registry keeps the job from now on: the file is left as it was, and no longer read.
    (training.job_dir("done") / "job.json").write_text(json.dumps({**info, "status": "x"}))
    assert FundTraining(tmp_path / "fund", tmp_path / "keys").job_record("done") == done
    # Its record binds results as job.json did, before any decryption.
    result = tmp_path / "result"
    write_artifact(
        result, TRAINING_RESULT, blobs={WEIGHTS: b"w", BIAS: b"b"}, round_id="done",
        model=spec.name, key_set_id="0" * 32, spec_sha256=spec.sha256(), bundle_sha256="b" * 64,
        n_rows=STEPS * BATCH, n_batches=STEPS, batch_size=BATCH, versions={},
    )  # fmt: skip
    with pytest.raises(FundError, match="received already"):
        training.receive("done", result)
    with pytest.raises(FundError, match="does not match training job 'waiting'"):
        training.receive("waiting", result)
    # Opened without a participant: no signature can make a result its.
    edit_manifest(result, round_id="waiting")
    with pytest.raises(FundError, match="opened without a participant"):
        training.receive("waiting", result)
    assert training.job_record("waiting").status == TrainingJobStatus.AWAITING
    assert not (training.job_dir("done") / "result").exists()
    with pytest.raises(FundError, match="open already"):
        training.open_job("done", spec_path, job["train"], participant="alice")
    with pytest.raises(FundError, match="never opened"):
        training.job_record("nothing")


def test_the_training_commands_take_the_funds_database(job, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    result = cli("fund", "receive-training", "j0", "result", "--database", url, cwd=tmp_path)
    assert result.returncode == 2 and "training job 'j0' was never opened" in result.stderr
    assert (tmp_path / "elsewhere.db").is_file() and not (tmp_path / "fund" / "fund.db").exists()
    result = cli("fund", "open-training", "j0", job["root"] / "job" / TRAINING_SPEC_FILE,
                 "--data", job["paths"]["train"], "--participant", "nobody", "--database", url,
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "'nobody' is not registered" in result.stderr
    assert not (tmp_path / "keys").exists(), "keys were made for a job that cannot be recorded"


def test_training_specs_are_validated(job, tmp_path):
    raw = json.loads(job["spec"].to_json())
    cases = {
        "both iterations and epochs": {**raw, "epochs": 1.0},
        "an empty parameter range": {**raw, "parameter_range": [1.0, 1.0]},
        "another circuit's shape": {**raw, "batch_size": BATCH + 1},
        "an unknown field": {**raw, "pickle": "gASV"},
    }
    for label, bad in cases.items():
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(SpecError, match="not a valid training spec"):
            read_spec(path, TrainingSpec)
        with pytest.raises(SpecError):
            FundTraining(tmp_path / "fund", tmp_path / "keys").open_job(
                "j", path, job["train"], participant="alice"
            )
    assert not (tmp_path / "keys").exists(), "no key was made for a refused spec"


def test_the_fund_refuses_data_the_job_cannot_train_on(job, tmp_path):
    spec_path = job["root"] / "job" / TRAINING_SPEC_FILE
    training = FundTraining(tmp_path / "fund", tmp_path / "keys")
    one_class = job["train"].assign(target=0.25)
    with pytest.raises(FundError, match="training needs both classes"):
        training.open_job("j", spec_path, one_class, participant="alice")
    with pytest.raises(FundError, match="no column"):
        training.open_job(
            "j", spec_path, job["train"].drop(columns=job["spec"].features[0]), participant="alice"
        )
    assert not (tmp_path / "fund" / "training" / "j").exists()


def test_epochs_become_steps_from_the_funds_row_count(job):
    raw = json.loads(job["spec"].to_json())
    spec = TrainingSpec.model_validate({**raw, "iterations": None, "epochs": 1.5})
    assert spec.iteration_count(100) == 75
    _, _, batches = plan_batches(spec, 100)
    assert len(batches) == 75 and all(len(set(b)) == BATCH for b in batches)
