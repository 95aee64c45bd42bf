"""``fhe-toolkit demo``: a whole encrypted round on synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import click
import pandas as pd
from rich.progress import TaskID

from fhe_toolkit.cli import console, friendly_errors, progress_bar
from fhe_toolkit.cli.display import print_frame
from fhe_toolkit.cli.options import out_dir_option, workers_option
from fhe_toolkit.demo import DEMO_DATA, PARTICIPANTS, run_demo, steps_table
from fhe_toolkit.fund.leaderboard import SUMMARY_COLUMNS


@click.command()
@out_dir_option(
    "Where the demo writes its data, fund, keys and participants (replaced).", default="fhe_demo"
)
@click.option(
    "--live-rows",
    default=DEMO_DATA.rows_per_era,
    show_default=True,
    help="Rows per era (so live rows per round, each encrypted and run in FHE).",
)
@workers_option("FHE")
@friendly_errors
def demo(out_dir: Path, live_rows: int, workers: int | None) -> None:
    """Run a tournament of three rounds in real FHE (encrypt, execute, decrypt), scored and paid.

    \b
    The fund synthesizes Numerai-shaped data (800 features); five participants make signing
    keys, train models (linear, decision tree, XGBoost, and two ridge models, one on all 800
    features) and send their public specs; for each of three live eras the fund encrypts the
    rows once for the three linear models (packed, one round key) and once per tree model
    (fresh keys each), and signs the bundles; each participant runs its model on the
    ciphertexts and signs its submission; the fund checks, decrypts once per model, scores
    CORR / MMC / BMC / FNC / exposure and pays, which changes the stakes. Ends with the
    leaderboard and an HTML report. About 8 minutes on 2 cores at the default size.
    """
    from dataclasses import replace

    config = replace(DEMO_DATA, rows_per_era=live_rows)
    started = time.perf_counter()
    console.print(
        "[bold]fhe-toolkit demo[/bold]: participants "
        + ", ".join(f"{p.name} ({p.family})" for p in PARTICIPANTS)
        + f"; {live_rows} live rows; writing to {out_dir}/"
    )
    with progress_bar("rows") as progress:
        tasks: dict[str, TaskID] = {}

        def on_rows(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done)

        summary = run_demo(
            out_dir, config=config, workers=workers, say=progress.console.print, on_rows=on_rows
        )
    print_frame(steps_table(summary), "Steps (wall-clock seconds)", console, "{:.1f}")
    corr = pd.DataFrame(summary["validation_corr"]).T
    print_frame(
        corr.rename_axis("model"), "Validation CORR: clear vs quantized vs simulated", console
    )
    sizes = pd.DataFrame(summary["sizes"]).T
    print_frame(sizes.rename_axis("models"), "Bundle sizes (bytes)", console, "{:,.0f}")
    for played in summary["rounds"]:
        scores = pd.DataFrame(played["scores"]).T[["corr", "mmc", "fnc", "stake", "payout"]]
        title = f"{played['round']} (era {played['era']}, real FHE): scores and payouts"
        print_frame(scores.rename_axis("model"), title, console)
    board = pd.DataFrame(summary["leaderboard"]).T[SUMMARY_COLUMNS]
    print_frame(board.rename_axis("model"), "Leaderboard (by reputation)", console)
    console.print(
        f"finished in {time.perf_counter() - started:.0f}s; everything is in {out_dir}/: the "
        f"report is {summary['report']} (summary: {out_dir}/demo_summary.json)"
    )
