"""``fhe-toolkit identity ...``: Ed25519 signing keys for participants (and the fund)."""

from __future__ import annotations

from pathlib import Path

import click

from fhe_toolkit.cli import console, friendly_errors
from fhe_toolkit.protocol.signing import create_identity, public_key_path


@click.group()
def identity() -> None:
    """Signing keys: participants sign their submissions, the fund its bundles."""


@identity.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def new(path: Path) -> None:
    """Create a private key at PATH (0600) and its public key at PATH.pub.

    Keep PATH to yourself; give PATH.pub to the fund (`fund add-participant`).
    """
    key = create_identity(path)
    console.print(f"private key: {path} (keep it private)")
    console.print(f"public key:  {public_key_path(path)} = {key.hex()}")
