"""Options that several commands take, declared once so they read the same everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fhe_toolkit.cli import notes
from fhe_toolkit.data.io import FEATURES_JSON
from fhe_toolkit.fhe.engine import parse_scheduler

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def default_option(
    flag: str, defaults: object, help: str | None = None, *, name: str | None = None
) -> Decorator:
    """``flag``, with its default (shown in --help) read from ``defaults``: its field of the
    flag's name (``--rows-per-era``: ``rows_per_era``), or ``name``, the parameter's name."""
    field = name or flag.removeprefix("--").replace("-", "_")
    return click.option(flag, field, default=getattr(defaults, field), show_default=True, help=help)


SYNTHETIC_DATA = (
    ("--embargo-eras", "embargo_eras"),
    ("--rows-per-era", "rows_per_era"),
    ("--features", "n_features"),
    ("--groups", "n_groups"),
    ("--noise", "noise"),
    ("--regime-length", "regime_length"),
)


def synthetic_data_options(defaults: object, **help: str) -> Decorator:
    """The shape of a synthetic tournament (``data synth``, ``simulate``): --embargo-eras,
    --rows-per-era, --features, --groups, --noise and --regime-length, with ``defaults``'
    values; ``help`` by parameter name."""
    unknown = set(help) - {name for _, name in SYNTHETIC_DATA}
    if unknown:
        raise TypeError(f"no synthetic data option is named {sorted(unknown)}")
    options = [
        default_option(flag, defaults, help.get(name), name=name) for flag, name in SYNTHETIC_DATA
    ]

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):  # click lists options in the order they are written
            command = option(command)
        return command

    return apply


def data_option(help: str, *, required: bool = True) -> Decorator:
    """``--data FILE``: Numerai-format rows, passed as ``data_path``."""
    return click.option(
        "--data", "data_path", required=required, type=click.Path(path_type=Path), help=help
    )


def job_option(help: str) -> Decorator:
    """``--job DIR``: a training job directory (``participant training-job``), as ``job_dir``."""
    return click.option(
        "--job", "job_dir", required=True, type=click.Path(path_type=Path),
        help=help,
    )  # fmt: skip


def out_dir_option(help: str, *, required: bool = True, default: str | None = None) -> Decorator:
    """``--out DIR``, passed as ``out_dir``."""
    return click.option(
        "--out", "out_dir", required=required and default is None, default=default,
        show_default=default is not None, type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )  # fmt: skip


def live_option(help: str) -> Decorator:
    """``--live FILE``: Numerai-format live rows, passed as ``live_path``."""
    return click.option(
        "--live", "live_path", required=True, type=click.Path(path_type=Path), help=help
    )


def train_option(help: str) -> Decorator:
    """``--train FILE``: Numerai-format training rows, passed as ``train_path``."""
    return click.option(
        "--train", "train_path", required=True, type=click.Path(path_type=Path), help=help
    )


def validation_option(help: str) -> Decorator:
    """``--validation FILE``, passed as ``validation_path``."""
    return click.option(
        "--validation", "validation_path", type=click.Path(path_type=Path), help=help
    )


def features_json_option(beside: str) -> Decorator:
    """``--features-json FILE``; by default ``features.json`` beside ``beside`` (an argument)."""
    return click.option(
        "--features-json",
        type=click.Path(path_type=Path),
        help=f"Path to features.json (default: {FEATURES_JSON} beside {beside}).",
    )


def workers_option(what: str) -> Decorator:
    """``--workers N``: worker processes for ``what``."""
    return click.option(
        "--workers", type=int, help=f"Worker processes for {what} (default: one per core)."
    )


def scheduler_option(what: str) -> Decorator:
    """``--scheduler tcp://HOST:PORT``: run ``what`` on the workers of a running Dask scheduler
    instead of local worker processes; passed as ``scheduler`` (``None`` when not given)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return parse_scheduler(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return click.option(
        "--scheduler", metavar="tcp://HOST:PORT", callback=check,
        help=f"Run {what} on the workers of this Dask scheduler (see docs/cluster.md) instead "
        "of worker processes on this machine; --workers is then ignored.",
    )  # fmt: skip


def identity_option(signs: str) -> Decorator:
    """``--identity KEY``: the participant's private signing key, which signs ``signs``."""
    return click.option(
        "--identity", required=True, type=click.Path(dir_okay=False, path_type=Path),
        help=f"Your private signing key (see `fhe-toolkit identity new`); signs the {signs}.",
    )  # fmt: skip


fund_key_option = click.option(
    "--fund-key",
    help="The fund's public key (.pub file or hex): refuse a bundle the fund did not sign.",
)
"""``--fund-key``, for the commands that run a bundle: passed as ``fund_key``."""


def note_unchecked(fund_key: str | None) -> None:
    """Say so when a bundle is run without checking the fund's signature."""
    if fund_key is None:
        notes.print("note: without --fund-key, the bundle's signature is not checked")
