"""The fund as a service, from the command line.

fund serve              serve the fund's rounds, uploads, statuses and leaderboard over HTTP
participant download    fetch a model's bundle (or the packed dataset), checked and resumable
participant submit      upload a signed submission; the fund decrypts it in the background
participant status      your models: bundle and upload statuses, scores and payouts
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fhe_toolkit.cli import console, friendly_errors, notes
from fhe_toolkit.cli.display import format_option, print_frame
from fhe_toolkit.cli.fund import database_option, fund_dir_option, keys_option, say_tightened

server_option = click.option(
    "--server", required=True, metavar="URL", help="The fund's service, e.g. http://fund:8000."
)
identity_option = click.option(
    "--identity",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your private signing key: the one whose .pub the fund registered. Signs every request.",
)
fund_key_option = click.option(
    "--fund-key",
    help="The fund's public key (.pub file or hex). Without it, the key the server serves is "
    "pinned on first contact in IDENTITY.funds.json, and a different one later is refused.",
)


def byte_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the address is printed).")  # fmt: skip
@fund_dir_option
@keys_option
@database_option
@click.option("--max-upload-bytes", type=click.IntRange(min=1), default=2 * 2**30,
              show_default=True, help="The largest submission archive taken.")  # fmt: skip
@click.option("--requests-per-minute", type=click.IntRange(min=1), default=120,
              show_default=True,
              help="Signed requests one participant may make per minute.")  # fmt: skip
@click.option("--max-concurrent-uploads", type=click.IntRange(min=1), default=4,
              show_default=True, help="Uploads received at once, everyone together.")  # fmt: skip
@click.option("--max-clock-skew", type=click.IntRange(min=1), default=300, show_default=True,
              help="Seconds a request's timestamp may be from this machine's clock.")  # fmt: skip
@click.option("--decrypt/--no-decrypt", default=True, show_default=True,
              help="Run the decryption worker; with --no-decrypt uploads are checked and "
              "queued, and decrypted once a server runs with --decrypt.")  # fmt: skip
@click.option("--workers", "decrypt_workers", type=int,
              help="Worker processes for a circuit model's decryption (default: one per "
              "core).")  # fmt: skip
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)  # fmt: skip
@friendly_errors
def serve(
    host: str,
    port: int,
    fund_dir: Path,
    key_dir: Path,
    database: str | None,
    max_upload_bytes: int,
    requests_per_minute: int,
    max_concurrent_uploads: int,
    max_clock_skew: int,
    decrypt: bool,
    decrypt_workers: int | None,
    log_level: str,
) -> None:
    """Serve the fund over HTTP: bundles, uploads, statuses, leaderboard and report.

    \b
    Participants use `participant download`, `submit` and `status`; every request is signed
    with the key they registered (no passwords). Uploads are checked, queued in the fund's
    database and answered at once; a worker process decrypts them in order (`fund receive`'s
    checks and path). A restart loses nothing: the queue is finished. The leaderboard is at
    /leaderboard, the report at /report. Serve plain HTTP on loopback, or put it behind a TLS
    proxy: requests are signed, not encrypted.
    """
    from fhe_toolkit.fund import Fund
    from fhe_toolkit.service.config import Limits, ServiceConfig
    from fhe_toolkit.service.server import serve as run_server

    fund = Fund(fund_dir, key_dir, database=database, create=False)  # a missing fund, said plainly
    say_tightened(fund.keys)
    fund.keys.check_key()  # a missing or wrong key store key, said before serving
    config = ServiceConfig(
        fund_dir=fund_dir,
        key_dir=key_dir,
        database=database,
        limits=Limits(
            max_upload_bytes=max_upload_bytes,
            requests_per_minute=requests_per_minute,
            max_concurrent_uploads=max_concurrent_uploads,
            max_clock_skew=max_clock_skew,
        ),
        decrypt=decrypt,
        decrypt_workers=decrypt_workers,
    )

    def announce(url: str) -> None:
        click.echo(f"serving the fund in {fund_dir} on {url}", err=False)
        notes.print(f"leaderboard: {url}/leaderboard   report: {url}/report   (Ctrl-C stops)")

    run_server(config, host, port, log_level=log_level, announce=announce)


def _client(server: str, identity: Path, fund_key: str | None) -> Any:
    from fhe_toolkit.participant.client import FundClient

    client = FundClient(server, identity, fund_key=fund_key)
    client.fund_key()
    if client.pinned_now:
        notes.print(
            f"pinned the fund key {client.fund_key().hex()} for {client.server} in {client.pins}; "
            "compare it with the one the fund published",
            style="yellow",
        )
    return client


@click.command("download")
@click.argument("round_id", metavar="ROUND")
@server_option
@click.option("--model", required=True, help="Your model whose bundle to fetch.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the bundle (run the same command again to resume).")  # fmt: skip
@identity_option
@fund_key_option
@friendly_errors
def download(
    round_id: str, server: str, model: str, out_dir: Path, identity: Path, fund_key: str | None
) -> None:
    """Download MODEL's bundle for ROUND (a packed model's: the round's packed dataset).

    The manifest must carry the fund's signature and every file must match it; an interrupted
    download resumes where it stopped. Then: `participant run OUT --model ... --identity ...`.
    """
    with _client(server, identity, fund_key) as client, byte_progress() as progress:
        task = progress.add_task(f"{model} in {round_id}", total=None)
        out = client.download(
            round_id, model, out_dir,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )  # fmt: skip
    console.print(f"bundle of {model} for {round_id} in {out} (signed by the fund, checked)")


@click.command("submit")
@click.argument("submission_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@server_option
@identity_option
@fund_key_option
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Wait until the fund has decrypted it (or refused it).")  # fmt: skip
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits at most.")
@friendly_errors
def submit(
    submission_dir: Path,
    server: str,
    identity: Path,
    fund_key: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Upload the signed submission in DIR (written by `participant run`).

    It is checked here and by the fund, queued, and decrypted in the background: see
    `participant status`, or pass --wait. Sending the same submission again is harmless.
    """
    with _client(server, identity, fund_key) as client:
        with byte_progress() as progress:
            task = progress.add_task(f"uploading {submission_dir.name}", total=None)
            upload = client.submit(
                submission_dir,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        console.print(
            f"upload {upload['upload']}: {upload['model']} in {upload['round']} is "
            f"{upload['status']} (status: {client.server}{upload['status_url']})"
        )
        if wait and upload["pending"]:
            with console.status("waiting for the fund to decrypt it"):
                upload = client.wait(upload["upload"], timeout=timeout)
            detail = f": {upload['detail']}" if upload["detail"] else ""
            console.print(f"{upload['model']} in {upload['round']}: {upload['status']}{detail}")
        if upload["status"] in ("refused", "failed"):
            raise click.exceptions.Exit(1)


@click.command("status")
@server_option
@identity_option
@fund_key_option
@format_option
@friendly_errors
def status(server: str, identity: Path, fund_key: str | None, output_format: str) -> None:
    """Your models in every round: bundle status, uploads, and scores once resolved."""
    with _client(server, identity, fund_key) as client:
        answer = client.status()
    rows = []
    for entry in answer["rounds"]:
        for model in entry["models"]:
            last = model["uploads"][-1] if model["uploads"] else None
            results = model.get("results") or {}
            rows.append(
                {
                    "round": entry["round"],
                    "model": model["model"],
                    "round status": entry["status"],
                    "submission": model["status"],
                    "upload": last["status"] if last else "—",
                    "detail": (last or {}).get("detail") or model["detail"] or "",
                    "corr": results.get("corr"),
                    "mmc": results.get("mmc"),
                    "payout": results.get("payout"),
                }
            )
    if not rows:
        console.print(f"{answer['participant']} has no model in any round yet")
        return
    frame = pd.DataFrame(rows).set_index(["round", "model"])
    print_frame(
        frame, f"{answer['participant']}'s models", console, "{:+.4f}",
        output_format=output_format, optional=("detail", "round status"),
    )  # fmt: skip


def attach(participant: click.Group, fund: click.Group) -> None:
    """Add the service's commands to the ``participant`` and ``fund`` groups."""
    fund.add_command(serve)
    participant.add_command(download)
    participant.add_command(submit)
    participant.add_command(status)
