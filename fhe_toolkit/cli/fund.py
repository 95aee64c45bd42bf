"""``fhe-toolkit fund ...``: register models, open rounds, take submissions, score and pay."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from fhe_toolkit.cli import console, friendly_errors, progress_bar
from fhe_toolkit.data import load_tournament
from fhe_toolkit.fund import Fund, fund_benchmark
from fhe_toolkit.tables import print_frame

fund_dir_option = click.option(
    "--fund-dir", default="fund", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The fund's records: registry, rounds, bundles, submissions, results.",
)  # fmt: skip
keys_option = click.option(
    "--keys", "key_dir", default="keys", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The key store: secret keys per (model, round), files 0600.",
)  # fmt: skip


@click.group()
def fund() -> None:
    """Fund: register models, open encrypted rounds, take submissions, score and pay.

    \b
    1. fhe-toolkit fund register SPEC.json --stake 100        (per participant model)
    2. fhe-toolkit fund open-round R1 --live live.parquet      (bundles to hand out)
    3. fhe-toolkit fund receive R1 SUBMISSION_DIR              (per submission)
    4. fhe-toolkit fund score R1 --live live.parquet --targets live_targets.parquet
    """


@fund.command("register")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--stake", type=float, required=True, help="The model's stake (payouts scale with it)."
)
@fund_dir_option
@friendly_errors
def register(spec_path: Path, stake: float, fund_dir: Path) -> None:
    """Validate a participant's model_spec.json and register the model with a stake.

    The spec is plain JSON (crypto specs, quantizer numbers, feature list); nothing in it is
    executed or unpickled. A spec that does not validate is refused with the reason.
    """
    spec = Fund(fund_dir).register(spec_path, stake)
    console.print(
        f"registered [bold]{spec.name}[/bold]: {spec.family}, {len(spec.features)} features, "
        f"target {spec.target}, stake {stake:g}"
    )


@fund.command("models")
@fund_dir_option
@friendly_errors
def models(fund_dir: Path) -> None:
    """List registered models and their stakes."""
    registry = Fund(fund_dir).registry()
    if not registry:
        console.print("no model registered yet")
        return
    frame = pd.DataFrame(registry).T[["family", "target", "stake", "registered_at"]]
    print_frame(frame.rename_axis("model"), "Registered models", console)


@fund.command("open-round")
@click.argument("round_id")
@click.option(
    "--live",
    "live_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The live rows to encrypt (Numerai-format parquet).",
)
@click.option(
    "--model", "models", multiple=True, help="Only these models (default: all registered)."
)
@fund_dir_option
@keys_option
@friendly_errors
def open_round(
    round_id: str, live_path: Path, models: tuple[str, ...], fund_dir: Path, key_dir: Path
) -> None:
    """Open ROUND_ID: fresh keys per model, every live row encrypted, one bundle per model."""
    live = load_tournament(live_path)
    with progress_bar("rows") as progress:
        tasks: dict[str, object] = {}

        def report(model: str, done: int, total: int) -> None:
            if model not in tasks:
                tasks[model] = progress.add_task(f"encrypting for {model}", total=total)
            progress.update(tasks[model], completed=done)  # type: ignore[arg-type]

        bundles = Fund(fund_dir, key_dir).open_round(
            round_id, live, models=models or None, on_progress=report
        )
    for model, path in bundles.items():
        console.print(f"  {model:<20} {path}")
    console.print("hand each model's bundle directory to its participant")


@fund.command("receive")
@click.argument("round_id")
@click.argument("submission_dir", type=click.Path(path_type=Path))
@click.option(
    "--workers", type=int, help="Worker processes for decryption (default: one per core)."
)
@fund_dir_option
@keys_option
@friendly_errors
def receive(
    round_id: str, submission_dir: Path, workers: int | None, fund_dir: Path, key_dir: Path
) -> None:
    """Check a submission, decrypt it once (then retire its keys) and keep the predictions.

    Refused before decryption: a tampered or truncated file, another round, model or bundle, a
    model already received, missing or repeated batches. The submission is kept as sent.
    """
    with progress_bar("rows") as progress:
        task = progress.add_task("decrypting", total=None)
        predictions = Fund(fund_dir, key_dir).receive(
            round_id, submission_dir, workers=workers,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(f"received {len(predictions):,} predictions of {predictions.name} for {round_id}")


@fund.command("status")
@click.argument("round_id")
@fund_dir_option
@friendly_errors
def status(round_id: str, fund_dir: Path) -> None:
    """Show each model's state in a round."""
    info = Fund(fund_dir).round_info(round_id)
    frame = pd.DataFrame(
        {
            m: {"status": e["status"], "key set": e["key_set_id"][:12]}
            for m, e in info["models"].items()
        }
    ).T
    print_frame(
        frame.rename_axis("model"), f"Round {round_id} ({info['n_rows']:,} live rows)", console
    )


@fund.command("score")
@click.argument("round_id")
@click.option(
    "--live",
    "live_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The round's live rows (features, for exposure and FNC).",
)
@click.option(
    "--targets",
    "targets_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The live rows' resolved targets (parquet indexed by id).",
)
@click.option("--benchmark-train", type=click.Path(path_type=Path),
              help="Training parquet for the fund's benchmark model (ridge on all features), "
                   "for BMC. Without it, BMC is not scored.")  # fmt: skip
@fund_dir_option
@friendly_errors
def score(
    round_id: str, live_path: Path, targets_path: Path, benchmark_train: Path | None, fund_dir: Path
) -> None:
    """Score the round's received models: CORR, MMC, BMC, FNC, exposure; then payouts.

    Writes rounds/ROUND_ID/results/per_era.csv and scores.csv (rounded aggregates only).
    """
    live = load_tournament(live_path)
    benchmark = fund_benchmark(load_tournament(benchmark_train), live) if benchmark_train else None
    results = Fund(fund_dir).score(round_id, targets_path, live=live, benchmark=benchmark)
    print_frame(
        results.scores.rename_axis("model"), f"Round {round_id}: scores and payouts", console
    )
    console.print(f"results in {results.directory}")
