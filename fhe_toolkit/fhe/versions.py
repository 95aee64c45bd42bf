"""The package versions an artifact was made with, and the check that the fund's runtime fits.

Keys and ciphertexts belong to one compiled circuit: a spec compiled with another Concrete than
the one that makes the keys would give keys that do not fit it.
"""

from __future__ import annotations

import sys
from importlib import metadata

from fhe_toolkit import __version__
from fhe_toolkit.errors import FundError
from fhe_toolkit.protocol.modelspec import PublicSpec


def package_versions() -> dict[str, str]:
    return {
        "concrete-ml": metadata.version("concrete-ml"),
        "concrete-python": metadata.version("concrete-python"),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "fhe-toolkit": __version__,
    }


def check_versions(spec: PublicSpec) -> None:
    """Refuse a spec compiled with another Concrete than the fund runs: keys would not fit."""
    mine = package_versions()
    for package in ("concrete-python", "concrete-ml"):
        if spec.versions.get(package) != mine[package]:
            raise FundError(
                f"{spec.KIND} {spec.name!r} was compiled with {package} "
                f"{spec.versions.get(package)}, but the fund runs {mine[package]}: keys and "
                "ciphertexts would not fit. Re-export it with the fund's version."
            )
