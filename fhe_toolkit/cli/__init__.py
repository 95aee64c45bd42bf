"""``fhe-toolkit``: a thin command line over the Python API.

Every command's expected errors come out as one clear message (no traceback) and exit status 2;
``fhe-toolkit --verbose COMMAND`` adds what caused it, down to the first cause.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fhe_toolkit import __version__
from fhe_toolkit.errors import FheToolkitError

F = TypeVar("F", bound=Callable[..., Any])
# Piped output (CI logs, files) keeps its lines whole instead of folding them at 80 columns.
console = Console(soft_wrap=not sys.stdout.isatty())
notes = Console(stderr=True, soft_wrap=True)
"""Notes beside a command's output (stderr), so ``fhe-toolkit fund public-key > fund.pub``
writes only the key."""
# torch (under Concrete ML) prints "No CUDA runtime is found" on import when nvcc is installed
# but no GPU is: an empty CUDA_PATH stops its search. Only this CLI process and its workers.
if "CUDA_HOME" not in os.environ:
    os.environ.setdefault("CUDA_PATH", "")


class ToolkitClickError(click.ClickException):
    exit_code = 2


def friendly_errors(func: F) -> F:
    """Turn the toolkit's own errors into a one-line CLI error instead of a traceback; with
    ``--verbose``, the line is followed by the chain of causes."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FheToolkitError as exc:
            raise ToolkitClickError(error_message(exc)) from exc

    return wrapper  # type: ignore[return-value]


def error_message(error: FheToolkitError) -> str:
    """The error's message; with ``--verbose``, followed by the chain of causes."""
    root = click.get_current_context().find_root()
    return _describe(error) if root.params.get("verbose") else str(error)


def _describe(error: BaseException) -> str:
    """The error, then each cause below it with where it was raised. Causes hidden with
    ``raise ... from None`` are shown too: they are what ``--verbose`` is asked for."""
    lines = [str(error)]
    seen = {id(error)}
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        frames = traceback.extract_tb(cause.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        lines.append(f"  caused by {type(cause).__name__}: {cause}{where}")
        cause = cause.__cause__ or cause.__context__
    return "\n".join(lines)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``12.3 rows/s``, or seconds per item when slower than one a
    second, e.g. ``31.2 s/step``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("")
        one = self.unit.removesuffix("s")
        rate = f"{speed:,.1f} {self.unit}/s" if speed >= 1 else f"{1 / speed:,.1f} s/{one}"
        return Text(rate, style="cyan")


def progress_reporter(progress: Progress, label: str) -> Callable[[int, int], None]:
    """An ``on_progress(done, total)`` that adds its bar on the first report, so a command that
    fails its checks shows an error, not an empty bar."""
    task: list[TaskID] = []

    def report(done: int, total: int) -> None:
        if not task:
            task.append(progress.add_task(label, total=total))
        progress.update(task[0], completed=done, total=total)

    return report


def progress_bar(unit: str) -> Progress:
    """A progress display on stderr: done/total, rate, elapsed and ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fhe-toolkit")
@click.option(
    "--verbose", "-v", is_flag=True, help="On an error, also show what caused it, cause by cause."
)
def main(verbose: bool) -> None:
    """Numerai-style tournaments on encrypted data.

    The fund encrypts its live features with FHE; participants run their quantized models on
    the ciphertexts; the fund decrypts the predictions and scores them with the shared scoring
    modules. Start with `fhe-toolkit demo`, which runs a whole tournament of three rounds.
    """


def _register() -> None:
    from fhe_toolkit.cli import data, demo, fund, identity, participant, service, simulate, training

    main.add_command(data.data)
    main.add_command(data.score)
    main.add_command(fund.fund)
    main.add_command(participant.participant)
    main.add_command(demo.demo)
    main.add_command(identity.identity)
    main.add_command(simulate.simulate)
    training.attach(participant.participant, fund.fund)
    service.attach(participant.participant, fund.fund)


_register()
