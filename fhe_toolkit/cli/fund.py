"""``fhe-toolkit fund ...``: participants, models, stakes, rounds, submissions, scores, payouts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any

import click
import pandas as pd

from fhe_toolkit.cli import (
    ToolkitClickError,
    console,
    error_message,
    friendly_errors,
    notes,
    progress_bar,
    progress_reporter,
)
from fhe_toolkit.cli.display import format_option, print_frame
from fhe_toolkit.cli.options import live_option, scheduler_option, workers_option
from fhe_toolkit.data import load_tournament
from fhe_toolkit.errors import FheToolkitError
from fhe_toolkit.fhe.keystore import KeyStore
from fhe_toolkit.fund import Fund, fund_benchmark
from fhe_toolkit.fund.base import MAX_PACKED_PER_PARTICIPANT
from fhe_toolkit.fund.dry_run import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_SECONDS,
    MIN_MEMORY_BYTES,
    DryRunLimits,
)
from fhe_toolkit.fund.leaderboard import SORT_KEYS, SUMMARY_COLUMNS
from fhe_toolkit.protocol.signing import public_key_path
from fhe_toolkit.registry.stakes import DEFAULT_MAX_STAKE, STAKE_CEILING
from fhe_toolkit.scoring import COMBINE_METHODS, DEFAULT_CLUSTER_CAP

fund_dir_option = click.option(
    "--fund-dir", default="fund", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The fund's directory: rounds, bundles, submissions, results (and fund.db).",
)  # fmt: skip
keys_option = click.option(
    "--keys", "key_dir", default="keys", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The key store: secret keys per (model, round), files 0600.",
)  # fmt: skip
database_option = click.option(
    "--database",
    metavar="URL",
    help="SQLAlchemy URL of the fund's records, e.g. postgresql+psycopg://user@host/fund "
    "(default: SQLite, FUND_DIR/fund.db).",
)


def with_fund(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --fund-dir, --keys and --database; pass the command a ``fund`` (made if new)."""
    return _with_fund(command, create=True)


def with_existing_fund(command: Callable[..., Any]) -> Callable[..., Any]:
    """Like :func:`with_fund`, for commands that only read: a missing fund is an error that
    says where it was looked for, and nothing is created."""
    return _with_fund(command, create=False)


def _with_fund(command: Callable[..., Any], *, create: bool) -> Callable[..., Any]:
    @fund_dir_option
    @keys_option
    @database_option
    @friendly_errors
    @wraps(command)
    def wrapper(fund_dir: Path, key_dir: Path, database: str | None, **kwargs: Any) -> Any:
        fund = Fund(fund_dir, key_dir, database=database, create=create)
        say_tightened(fund.keys)
        return command(fund=fund, **kwargs)

    return wrapper


def say_tightened(keys: KeyStore) -> None:
    """Say what opening the key store made private, if anything."""
    if keys.tightened:
        notes.print(
            f"note: {len(keys.tightened)} folder(s) and file(s) of the key store {keys.root} were "
            "open to other users (left so by an older version); they are private now (folders "
            "0700, files 0600)."
        )


@click.group()
def fund() -> None:
    """Fund: participants, models and stakes; encrypted rounds; scores, payouts, leaderboard.

    \b
    1. fhe-toolkit fund add-participant alice --public-key alice.pem.pub
    2. fhe-toolkit fund register SPEC.json --participant alice --stake 100
    3. fhe-toolkit fund open-round R1 --live live.parquet    (signed bundles to hand out)
    4. fhe-toolkit fund receive R1 SUBMISSION_DIR...         (one or several submissions)
    5. fhe-toolkit fund score R1 --live live.parquet --targets live_targets.parquet
    6. fhe-toolkit fund leaderboard; fhe-toolkit fund report --out report.html
    """


@fund.command("public-key")
@with_fund
def public_key(fund: Fund) -> None:
    """Print the fund's public signing key (made on first use); participants check bundles
    with it."""
    key = fund.public_key()
    click.echo(key.hex())
    notes.print(
        f"(also in {public_key_path(fund.identity_path)}: give participants that file, or this "
        "line saved as fund.pub, for --fund-key)",
        style="dim",
    )


@fund.command("add-participant")
@click.argument("name")
@click.option(
    "--public-key",
    "key",
    required=True,
    help="The participant's Ed25519 public key: a .pub file or 64 hex characters.",
)
@with_fund
def add_participant(fund: Fund, name: str, key: str) -> None:
    """Record participant NAME and the public key its submissions are signed with."""
    fund.add_participant(name, key)
    console.print(f"participant [bold]{name}[/bold] recorded")


@fund.command("register")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option("--participant", required=True, help="The participant who owns the model.")
@click.option(
    "--stake",
    type=float,
    required=True,
    help="The model's stake (payouts scale with it): ≥ 0 and at most the fund's cap "
    f"(default {DEFAULT_MAX_STAKE:,.0f}; see `fund config`).",
)
@click.option(
    "--dry-run-memory", type=click.FloatRange(min=MIN_MEMORY_BYTES / 2**30), metavar="GIB",
    show_default=True,
    default=DEFAULT_MEMORY_BYTES / 2**30,
    help="Data memory limit of the dry run's worker process, in GiB.",
)  # fmt: skip
@click.option(
    "--dry-run-seconds", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
    show_default=True,
    default=DEFAULT_SECONDS, help="Time limit of the dry run, in seconds.",
)  # fmt: skip
@with_fund
def register(
    fund: Fund,
    spec_path: Path,
    participant: str,
    stake: float,
    dry_run_memory: float,
    dry_run_seconds: float,
) -> None:
    """Check a participant's model_spec.json, prove it usable, and register the model with a
    stake.

    The spec is plain JSON (crypto specs, quantizer numbers, feature list); nothing in it is
    executed or unpickled. Every field is checked, unknown fields are refused by name, and the
    crypto parameters must be what Concrete produces at 128-bit security.

    Then a dry run: in a separate worker process, under the memory and time limits below, the
    fund makes the model's keys, encrypts every feature value (0..4) as a round would, and
    checks the circuit's input bit width and output decoding; a crash or a limit there stops
    only the worker. A small tree's dry run takes about 15 s on an idle 2-core machine (loading
    Concrete and making the keys; a minute on a busy one). A packed linear spec is instead
    checked against the packed round's parameters.

    A spec that fails is refused with the reason, and nothing is stored. A new spec under a
    registered name becomes that model's next version.
    """
    limits = DryRunLimits(round(dry_run_memory * 2**30), dry_run_seconds)
    spec = fund.register(
        spec_path,
        participant=participant,
        stake=stake,
        limits=limits,
        on_dry_run=lambda report: notes.print(
            f"dry run passed in {report.seconds:.1f} s: {report.summary}", style="dim"
        ),
    )
    console.print(
        f"registered [bold]{spec.name}[/bold] for {participant}: {spec.family}, "
        f"{len(spec.features)} features, target {spec.target}, stake {stake:g}"
    )


# A negative AMOUNT reaches the command (and its message about stakes) instead of being taken
# for an unknown option.
@fund.command("stake", context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.argument("amount", type=float)
@with_existing_fund
def stake(fund: Fund, model: str, amount: float) -> None:
    """Set MODEL's stake to AMOUNT; rounds opened from now on pay on it.

    AMOUNT is ≥ 0 and at most the fund's cap (default 1,000,000,000; see `fund config`)."""
    fund.set_stake(model, amount)
    console.print(f"{model}: stake {amount:g} from the next round on")


@fund.command("config")
@click.option(
    "--max-stake",
    type=float,
    help=f"The cap on one model's stake (default {DEFAULT_MAX_STAKE:,.0f}, at most "
    f"{STAKE_CEILING:,.0f}): larger stakes are refused, and a payout never takes a stake "
    "beyond it.",
)
@click.option(
    "--keystore-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Encrypt the key store at rest (AES-256-GCM) under the key in this file, made (mode "
    "0600) if it does not exist; the store records where it is and every later command uses "
    "it. On a store encrypted already: where its key file is now.",
)
@with_fund
def config(fund: Fund, max_stake: float | None, keystore_key: Path | None) -> None:
    """Show the fund's settings, or change those given; every later command uses them.

    \b
    The cap on stakes is kept with the fund's records. Encrypting the key store also encrypts
    the secrets already in it, and from then on no secret key is written to disk in plaintext:
    keep a copy of the key file apart from the key store (without it, no key in the store can
    be read).
    """
    if max_stake is not None:
        fund.set_max_stake(max_stake)
    if keystore_key is not None:
        made, sealed = fund.keys.encrypt_at_rest(keystore_key)
        if made:
            console.print(
                f"a new key store key was written to {keystore_key}: keep a copy apart from the "
                "key store"
            )
        if sealed:
            console.print(f"encrypted {len(sealed)} secret file(s) that were in plaintext")
    console.print(f"max stake: {fund.max_stake():,.2f}")
    record = fund.keys.check_key()
    if record is None:
        console.print(f"key store: {fund.keys.root}, not encrypted at rest (--keystore-key FILE)")
    else:
        console.print(
            f"key store: {fund.keys.root}, encrypted at rest (AES-256-GCM) under the key in "
            f"{record['key_file']}"
        )


@fund.command("models")
@format_option
@with_existing_fund
def models(fund: Fund, output_format: str) -> None:
    """List registered models: owner, family, target, stake, version."""
    frame = fund.models()
    if frame.empty:
        notes.print("no model registered yet")
        return
    print_frame(frame, "Registered models", console, "{:,.2f}", output_format=output_format)


@fund.command("open-round")
@click.argument("round_id")
@live_option("The live rows to encrypt (Numerai-format parquet).")
@click.option(
    "--model", "models", multiple=True, help="Only these models (default: all registered)."
)
@click.option(
    "--deadline",
    type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="No submission is taken after this time (UTC, e.g. 2026-12-01T18:00).",
)
@click.option(
    "--max-packed-per-participant",
    type=click.IntRange(min=1),
    default=MAX_PACKED_PER_PARTICIPANT,
    show_default=True,
    help="Packed (linear) models one participant may enter in the round; the rest are left out.",
)
@workers_option("the circuit models' key generation and encryption")
@scheduler_option("the circuit models' key generation and encryption")
@with_existing_fund
def open_round(
    fund: Fund,
    round_id: str,
    live_path: Path,
    models: tuple[str, ...],
    deadline: datetime | None,
    max_packed_per_participant: int,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Open ROUND_ID: encrypt the live rows and publish the signed bundles.

    \b
    Linear models (exported packed) share one dataset: the live features encrypted once under
    a fresh round key, at most --max-packed-per-participant models per participant. Every
    other model gets fresh keys and a bundle of its own: one task per model (its keys, then its
    rows encrypted) on worker processes of this machine, or on the workers of --scheduler
    (tcp:// on this host only, as the secret keys come back over it; tls:// elsewhere). A model
    whose keys or encryption fail, or crash their worker, is left out, named, and the others
    are published.
    """
    live = load_tournament(live_path)
    with progress_bar("rows") as progress:
        tasks: dict[str, object] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                label = "the packed dataset" if what == "packed" else f"{what} (keys + rows)"
                tasks[what] = progress.add_task(f"encrypting {label}", total=total)
            progress.update(tasks[what], completed=done)  # type: ignore[arg-type]

        bundles = fund.open_round(
            round_id, live, models=models or None, on_progress=report,
            deadline=deadline.replace(tzinfo=UTC) if deadline else None,
            max_packed_per_participant=max_packed_per_participant,
            workers=workers, scheduler=scheduler,
        )  # fmt: skip
    for model, path in bundles.items():
        console.print(f"  {model:<20} {path}")
    for model, reason in bundles.left_out.items():
        console.print(f"  [yellow]{model:<20} left out: {reason}[/yellow]")
    console.print(
        "hand each model's bundle directory to its participant, with the fund's public key "
        f"({public_key_path(fund.identity_path)})"
    )


@fund.command("receive")
@click.argument("round_id")
@click.argument(
    "submission_dirs", metavar="SUBMISSION_DIR...", nargs=-1, required=True,
    type=click.Path(path_type=Path),
)  # fmt: skip
@workers_option("decryption")
@scheduler_option("the decryption of circuit models' outputs")
@with_existing_fund
def receive(
    fund: Fund,
    round_id: str,
    submission_dirs: tuple[Path, ...],
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Check each submission, decrypt it once (then retire its keys) and keep the predictions.

    Refused before decryption: a tampered or truncated file, another round, model or bundle, a
    signature that is not the model owner's, a model already received, a closed round or one
    past its deadline. The submission is kept as sent. A receive that was cut off (killed,
    machine down) is finished or rolled back by running the command again.

    Give several SUBMISSION_DIRs to receive them in one go: the start-up (the worker processes,
    the libraries) is paid once, and each is received or refused on its own; the exit status is
    2 if any was refused.
    """
    refused = 0
    for submission_dir in submission_dirs:
        try:
            with progress_bar("rows") as progress:
                predictions = fund.receive(
                    round_id, submission_dir, workers=workers, scheduler=scheduler,
                    on_progress=progress_reporter(progress, "decrypting"),
                )  # fmt: skip
        except FheToolkitError as exc:
            if len(submission_dirs) == 1:
                raise
            refused += 1
            notes.print(f"[red]refused {submission_dir}:[/red] {error_message(exc)}")
            continue
        console.print(
            f"received {len(predictions):,} predictions of {predictions.name} for {round_id}"
        )
    if refused:
        raise ToolkitClickError(f"{refused} of {len(submission_dirs)} submissions refused")


@fund.command("close-round")
@click.argument("round_id")
@with_existing_fund
def close_round(fund: Fund, round_id: str) -> None:
    """Stop taking submissions for ROUND_ID; score it once its targets are known."""
    fund.close_round(round_id)
    console.print(f"round {round_id} closed")


@fund.command("status")
@click.argument("round_id", required=False)
@format_option
@with_existing_fund
def status(fund: Fund, round_id: str | None, output_format: str) -> None:
    """Show every round, or each model's state in ROUND_ID (models in name order)."""
    if round_id is None:
        rounds = fund.db.rounds()
        if rounds.empty:
            notes.print("no round opened yet")
        else:
            print_frame(rounds, "Rounds", console, output_format=output_format)
        return
    record = fund.round_record(round_id)
    frame = pd.DataFrame.from_dict(
        {
            model: {
                "status": bundle.status.value,
                "detail": bundle.detail or "",
                "stake": bundle.stake,
                "key set": bundle.key_set_id[:12],
            }
            for model, bundle in sorted(record.bundles.items())
        },
        orient="index",
    ).rename_axis("model")
    title = f"Round {round_id}: {record.status}, {record.n_rows:,} live rows"
    print_frame(frame, title, console, "{:,.2f}", output_format=output_format)


@fund.command("score")
@click.argument("round_id")
@live_option("The round's live rows (features, for exposure and FNC).")
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
@click.option(
    "--close-now",
    is_flag=True,
    help="Close a round that is still open (before its deadline) and score it.",
)
@click.option(
    "--meta-model",
    type=click.Choice(COMBINE_METHODS),
    default="stake_weighted",
    show_default=True,
    help="How the meta model combines the models (MMC is measured against it); cluster_capped "
    "lets one forecast (a cluster of near-identical submissions) weigh at most "
    f"{DEFAULT_CLUSTER_CAP:.0%} of all stakes. Compare them with `fhe-toolkit simulate`.",
)
@format_option
@with_existing_fund
def score(
    fund: Fund,
    round_id: str,
    live_path: Path,
    targets_path: Path,
    benchmark_train: Path | None,
    close_now: bool,
    meta_model: str,
    output_format: str,
) -> None:
    """Resolve ROUND_ID: CORR, MMC, BMC, FNC, exposure per model; payouts change stakes.

    All of it is recorded in one transaction (run it again if it was cut off). Writes
    rounds/ROUND_ID/results/per_era.csv and scores.csv (rounded aggregates only; the same
    columns every time). Targets are checked before anything is written. A round still open
    before its deadline is refused unless --close-now. A model whose spec declares a
    neutralization is scored, combined and paid on its decrypted predictions neutralized so,
    era by era on the live features (column 'neutralized', and a note).
    """
    live = load_tournament(live_path)
    benchmark = fund_benchmark(load_tournament(benchmark_train), live) if benchmark_train else None
    results = fund.score(
        round_id, targets_path, live=live, benchmark=benchmark, close_now=close_now,
        meta_model=meta_model,
    )  # fmt: skip
    print_frame(
        results.scores, f"Round {round_id}: scores and payouts", console,
        output_format=output_format,
    )  # fmt: skip
    for note in results.notes:
        notes.print(f"note: {note}")
    notes.print(f"results in {results.directory}")


@fund.command("leaderboard")
@click.option(
    "--sort",
    "sort_by",
    type=click.Choice(sorted(SORT_KEYS)),
    default="reputation",
    show_default=True,
)
@format_option
@with_existing_fund
def leaderboard(fund: Fund, sort_by: str, output_format: str) -> None:
    """The tournament's models over every resolved round, best first.

    Every column: owner, family, target, stake, rounds scored, the latest CORR, MMC and payout,
    mean CORR and MMC, total payout, reputation. A narrow terminal drops the columns after
    the summary ones first; --format csv|json always has them all.
    """
    board = fund.leaderboard(sort_by)
    if board.empty:
        raise ToolkitClickError("no model is registered yet.")
    optional = [c for c in reversed(board.columns) if c not in SUMMARY_COLUMNS]
    print_frame(
        board, f"Leaderboard (by {sort_by})", console,
        output_format=output_format, optional=optional,
    )  # fmt: skip


@fund.command("report")
@click.option(
    "--out",
    "out_path",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@with_existing_fund
def report(fund: Fund, out_path: Path) -> None:
    """Write the tournament report: one self-contained HTML file that renders offline."""
    from fhe_toolkit.fund.report import write_report

    write_report(fund.db, out_path)
    console.print(f"report written to {out_path}")
