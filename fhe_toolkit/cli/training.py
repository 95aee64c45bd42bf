"""Encrypted training from the command line: the participant's and the fund's commands.

participant training-job    declare and compile an encrypted-SGD job
fund open-training          encrypt the fund's batches for it (fresh keys)
participant train-encrypted run the SGD steps on the ciphertexts
fund receive-training       decrypt the weights once, retire the keys
participant from-weights    turn the weights into a model for the rounds
"""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from fhe_toolkit.cli import (
    ToolkitClickError,
    console,
    friendly_errors,
    progress_bar,
    progress_reporter,
)
from fhe_toolkit.cli.display import print_frame
from fhe_toolkit.cli.fund import database_option, fund_dir_option, keys_option, say_tightened
from fhe_toolkit.cli.options import (
    data_option,
    fund_key_option,
    identity_option,
    job_option,
    note_unchecked,
    out_dir_option,
    validation_option,
)
from fhe_toolkit.data import load_features_json, load_tournament
from fhe_toolkit.fund.training import WEIGHTS_FILE, FundTraining
from fhe_toolkit.participant.model import SPEC_FILE, compile_model, diagnose, export_model
from fhe_toolkit.participant.training import (
    TRAINING_SPEC_FILE,
    TrainingJob,
    compile_training_job,
    load_training_job,
    load_weights,
    model_from_weights,
    run_training_bundle,
)


@click.command("training-job")
@click.option("--name", required=True, help="The job's name, as the fund will know it.")
@out_dir_option("New directory for the job (public spec, private deployment).")
@click.option(
    "--features-json",
    required=True,
    type=click.Path(path_type=Path),
    help="The tournament's features.json (feature sets).",
)
@click.option("--feature-set", default="small", show_default=True)
@click.option("--target", default="target", show_default=True)
@click.option(
    "--label-threshold",
    default=0.5,
    show_default=True,
    help="The label is 1 where the target is above this.",
)
@click.option("--iterations", type=int, help="SGD steps, one batch each (default 10).")
@click.option(
    "--epochs",
    type=float,
    help="Instead of --iterations: passes over the fund's rows, in expectation.",
)
@click.option("--batch-size", default=8, show_default=True, help="Rows per SGD step.")
@click.option(
    "--parameter-range",
    nargs=2,
    type=float,
    default=(-1.0, 1.0),
    show_default=True,
    help="Where the weights start (uniformly) and stay: the circuit is sized for it.",
)
@click.option("--seed", default=0, show_default=True, help="Fixes the start and the batches.")
@click.option(
    "--p-error",
    default=1e-5,
    show_default=True,
    help="Error probability of each bootstrap in the SGD step; lower is exacter and slower.",
)
@friendly_errors
def training_job(
    name: str,
    out_dir: Path,
    features_json: Path,
    feature_set: str,
    target: str,
    label_threshold: float,
    iterations: int | None,
    epochs: float | None,
    batch_size: int,
    parameter_range: tuple[float, float],
    seed: int,
    p_error: float,
) -> None:
    """Declare an encrypted training job and compile its SGD step.

    Writes OUT/training_spec.json (public: send it to the fund) and OUT/deployment/. The fund
    encrypts batches of its own rows for the job; you run the steps on the ciphertexts with
    `participant train-encrypted` and never see a feature value or a label.
    """
    if iterations is not None and epochs is not None:
        raise ToolkitClickError("give --iterations or --epochs, not both.")
    features = load_features_json(features_json).features(feature_set)
    job = TrainingJob(
        features=features, target=target, label_threshold=label_threshold,
        iterations=iterations if epochs is None else None, epochs=epochs,
        batch_size=batch_size, parameter_range=parameter_range, seed=seed, p_error=p_error,
    )  # fmt: skip
    with console.status(f"compiling the SGD step ({batch_size} rows × {len(features)} features)"):
        spec = compile_training_job(job, out_dir, name)
    steps = f"{spec.iterations} steps" if spec.iterations else f"{spec.epochs:g} epochs"
    console.print(
        f"compiled training job [bold]{spec.name}[/bold]: {len(features)} features, {steps} of "
        f"{batch_size} rows, label = {target} > {label_threshold:g}"
    )
    console.print(f"next: send {out_dir / TRAINING_SPEC_FILE} to the fund")


@click.command("train-encrypted")
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@job_option("The job directory written by `participant training-job`.")
@out_dir_option("Result directory (also holds the checkpoint of an interrupted run).")
@identity_option("result")
@fund_key_option
@friendly_errors
def train_encrypted(
    bundle_dir: Path, job_dir: Path, out_dir: Path, identity: Path, fund_key: str | None
) -> None:
    """Run every SGD step of a training bundle on its encrypted batches; sign the result.

    The weights stay encrypted from the first step to the last and are checkpointed after
    each: interrupted? Run the same command again to resume. Send OUT to the fund, which takes
    it only signed by the participant the job is for.
    """
    note_unchecked(fund_key)
    with progress_bar("steps") as progress:
        task = progress.add_task("encrypted SGD", total=None)
        result = run_training_bundle(
            bundle_dir, job_dir, out_dir, identity=identity, fund_key=fund_key,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(f"signed encrypted weights written to {result}; send this directory to the fund")


@click.command("from-weights")
@click.argument("weights_path", metavar="WEIGHTS", type=click.Path(path_type=Path))
@job_option("The training job directory the weights came from.")
@click.option(
    "--calibration",
    required=True,
    type=click.Path(path_type=Path),
    help="Rows to calibrate the input quantizers on (the released training parquet).",
)
@click.option("--name", required=True, help="Model name for the rounds.")
@out_dir_option("New model directory (as `participant train` writes).")
@validation_option("Validation parquet: score the model in clear, quantized and simulated FHE.")
@friendly_errors
def from_weights(
    weights_path: Path,
    job_dir: Path,
    calibration: Path,
    name: str,
    out_dir: Path,
    validation_path: Path | None,
) -> None:
    """Turn the weights the fund returned into a model for the encrypted rounds.

    A logistic model (family `logistic`, P(label = 1)) with exactly those weights, compiled and
    exported like `participant train` does: register OUT/model_spec.json with the fund.
    """
    if (out_dir / SPEC_FILE).exists():
        raise ToolkitClickError(f"{out_dir} holds an exported model already; choose a new --out.")
    spec, _ = load_training_job(job_dir)
    data = load_tournament(calibration, features=spec.features, targets=[spec.target])
    model = model_from_weights(load_weights(weights_path), spec, data)
    with console.status("compiling for FHE"):
        compile_model(model, data)
    exported = export_model(model, out_dir, name)
    console.print(f"exported [bold]{exported.name}[/bold] (logistic, from job {spec.name})")
    if validation_path is not None:
        validation = load_tournament(validation_path, features=spec.features, targets=[spec.target])
        report = diagnose(model, validation)
        table = report["mean"].unstack("metric")
        print_frame(table, "Validation, mean per era: clear vs quantized vs simulated FHE", console)
    console.print(f"next: send {out_dir / SPEC_FILE} to the fund to register it")


@click.command("open-training")
@click.argument("job_id")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@data_option("The fund's rows to train on (Numerai-format parquet with the job's target).")
@click.option(
    "--participant",
    required=True,
    help="The registered participant the job is for: the fund takes only a result it signed.",
)
@fund_dir_option
@keys_option
@database_option
@friendly_errors
def open_training(
    job_id: str,
    spec_path: Path,
    data_path: Path,
    participant: str,
    fund_dir: Path,
    key_dir: Path,
    database: str | None,
) -> None:
    """Open training job JOB_ID for a participant's training_spec.json.

    Fresh keys for the job; the starting weights and every step's batch of features and labels
    encrypted; the bundle signed by the fund. Hand the bundle directory to the participant,
    with the fund's public key.
    """
    training = FundTraining(fund_dir, key_dir, database=database)
    say_tightened(training.keys)
    data = load_tournament(data_path)
    with progress_bar("steps") as progress:
        # Key generation comes first and reports nothing for a minute or two: say so.
        label = "generating the job's keys (1–2 minutes), then encrypting its batches"
        bundle = training.open_job(
            job_id, spec_path, data, participant=participant,
            on_progress=progress_reporter(progress, label),
        )  # fmt: skip
    console.print(f"training bundle: {bundle}; hand it to the participant")


@click.command("receive-training")
@click.argument("job_id")
@click.argument("result_dir", type=click.Path(path_type=Path))
@fund_dir_option
@keys_option
@database_option
@friendly_errors
def receive_training(
    job_id: str, result_dir: Path, fund_dir: Path, key_dir: Path, database: str | None
) -> None:
    """Check a training result, decrypt the weights once (then retire the keys), write them.

    Refused before decryption: a tampered or truncated file, another job or bundle, a signature
    that is not the job's participant's, a result received already. A receive that was cut off
    (killed, machine down) is finished or rolled back by running the command again.
    """
    training = FundTraining(fund_dir, key_dir, database=database)
    say_tightened(training.keys)
    weights = training.receive(job_id, result_dir)
    table = pd.DataFrame(
        {"weight": [*weights.coef, weights.intercept]},
        index=pd.Index([*weights.features, "(intercept)"], name="feature"),
    )
    print_frame(table, f"Training job {job_id}: decrypted weights", console)
    path = training.job_dir(job_id) / WEIGHTS_FILE
    console.print(f"weights written to {path}; return this file to the participant")


def attach(participant: click.Group, fund: click.Group) -> None:
    for command in (training_job, train_encrypted, from_weights):
        participant.add_command(command)
    for command in (open_training, receive_training):
        fund.add_command(command)
