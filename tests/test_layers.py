"""The layering of DESIGN.md section 8, as import-linter contracts (``[tool.importlinter]`` in
pyproject.toml) checked by ``lint-imports``:

- the fund and the participant never import each other;
- ``protocol``, ``scoring`` and ``registry`` import no ``concrete``, not even inside a function;
- ``protocol`` imports neither role, nor ``fhe``, ``registry`` or ``cli`` (and no SQL).

A second test copies the same contracts onto a throwaway package that breaks each of them with
an import inside a function, so a contract that silently checks nothing would fail here.

The last tests keep the error hierarchy in one place: every exception class of the package is
defined in ``fhe_toolkit/errors.py``, under the one root ``FheToolkitError``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fhe_toolkit"


def contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == PACKAGE and config["include_external_packages"] is True
    found: list[dict[str, Any]] = config["contracts"]
    return found


def lint_imports(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = str(script) if script.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is missing: install the test extras (pip install -e '.[test]')"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [command, "--no-cache", "--no-logo"],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def states(output: str) -> dict[str, str]:
    """Contract name → KEPT or BROKEN, from lint-imports' summary lines."""
    return dict(re.findall(r"^(.+?) (KEPT|BROKEN)$", output, flags=re.MULTILINE))


def test_the_layering_contracts_are_declared():
    by_id = {contract["id"]: contract for contract in contracts()}
    assert set(by_id) == {
        "roles-independent",
        "no-concrete-below-fhe",
        "protocol-below-roles",
        "protocol-no-sql",
    }
    assert set(by_id["roles-independent"]["modules"]) == {
        "fhe_toolkit.fund",
        "fhe_toolkit.participant",
    }
    no_concrete = by_id["no-concrete-below-fhe"]
    assert set(no_concrete["source_modules"]) == {
        "fhe_toolkit.protocol",
        "fhe_toolkit.scoring",
        "fhe_toolkit.registry",
    }
    assert no_concrete["forbidden_modules"] == ["concrete"]
    assert set(by_id["protocol-below-roles"]["forbidden_modules"]) >= {
        f"fhe_toolkit.{name}" for name in ("fund", "participant", "fhe", "registry", "cli")
    }
    for contract in by_id.values():
        assert not contract.get("allow_indirect_imports", False), contract["id"]
        assert not contract.get("ignore_imports"), contract["id"]


def test_the_package_keeps_every_layering_contract():
    result = lint_imports(ROOT)
    output = result.stdout + result.stderr
    names = [contract["name"] for contract in contracts()]
    assert states(output) == dict.fromkeys(names, "KEPT"), output
    assert f"Contracts: {len(names)} kept, 0 broken." in output, output
    assert result.returncode == 0, output


PROBE = "layer_probe"
PROBE_MODULES = {
    # Every forbidden import sits inside a function: import-linter must still see it.
    "fund/pay.py": "def pay():\n    from layer_probe.participant import run\n    return run\n",
    "participant/run.py": "",
    "scoring/lazy.py": "def score():\n    import concrete.fhe\n    return concrete.fhe\n",
    "registry/store.py": "def keys():\n    from concrete import fhe\n    return fhe\n",
    "protocol/reach.py": "def go():\n    from layer_probe.fhe import engine\n    return engine\n",
    "protocol/sql.py": "def table():\n    import sqlalchemy\n    return sqlalchemy\n",
    "fhe/engine.py": "from concrete import fhe\n",
    "cli/main.py": "",
}


def test_each_contract_fires_on_a_package_that_breaks_it(tmp_path):
    """The pyproject's contracts, renamed onto a throwaway package whose every violation is an
    import inside a function (and, for protocol → fhe → concrete, an indirect one)."""
    package = tmp_path / PROBE
    for name in ("", "fund", "participant", "scoring", "registry", "protocol", "fhe", "cli"):
        (package / name).mkdir(exist_ok=True)
        (package / name / "__init__.py").write_text("")
    for name, text in PROBE_MODULES.items():
        (package / name).write_text(text)
    lines = ["[tool.importlinter]", f'root_package = "{PROBE}"', "include_external_packages = true"]
    for contract in contracts():
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            renamed = json.loads(json.dumps(value).replace(f'"{PACKAGE}.', f'"{PROBE}.'))
            lines.append(f"{key} = {json.dumps(renamed)}")
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")

    result = lint_imports(tmp_path, pythonpath=tmp_path)
    output = result.stdout + result.stderr
    names = [contract["name"] for contract in contracts()]
    assert states(output) == dict.fromkeys(names, "BROKEN"), output
    assert result.returncode != 0
    for edge in (
        "layer_probe.fund.pay -> layer_probe.participant.run (l.2)",
        "layer_probe.scoring.lazy -> concrete (l.2)",
        "layer_probe.registry.store -> concrete (l.2)",
        "layer_probe.protocol.reach -> layer_probe.fhe.engine (l.2)",
        "layer_probe.protocol.sql -> sqlalchemy (l.2)",
    ):
        assert edge in output, f"{edge!r} not reported:\n{output}"
    # protocol reaches concrete only through fhe: indirect imports count too.
    assert "layer_probe.fhe.engine -> concrete (l.1)" in output, output


ERRORS = f"{PACKAGE}/errors.py"
NOT_RAISED_BY_THE_TOOLKIT = {
    # How the command line prints a toolkit error (a click exception that exits with status 2).
    f"{PACKAGE}/cli/__init__.py": {"ToolkitClickError"},
}


def exception_classes() -> dict[str, set[str]]:
    """File → the classes it defines that derive from an exception: from a base named
    ``...Error``, ``...Exception`` or ``...Exit``, or from a class found so (to a fixpoint)."""
    classes = {
        str(path.relative_to(ROOT)): [
            node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
        ]
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
    }
    known: set[str] = set()
    while True:
        found = {
            name: {
                node.name
                for node in nodes
                if any(
                    base.endswith(("Error", "Exception", "Exit")) or base in known
                    for base in (ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases)
                )
            }
            for name, nodes in classes.items()
        }
        found = {name: names for name, names in found.items() if names}
        names = set().union(*found.values())
        if names == known:
            return found
        known = names


def test_every_error_class_is_defined_in_errors_py():
    from fhe_toolkit import errors

    found = exception_classes()
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and value.__module__ == errors.__name__
    }
    assert found.pop(ERRORS) == defined  # the scan sees every class of errors.py
    assert found == NOT_RAISED_BY_THE_TOOLKIT, (
        "define these errors in fhe_toolkit/errors.py (under FheToolkitError) and import them "
        f"from there: {found}"
    )


def test_the_error_hierarchy_has_one_root():
    from fhe_toolkit import errors

    for value in vars(errors).values():
        if isinstance(value, type) and value.__module__ == errors.__name__:
            assert issubclass(value, errors.FheToolkitError), value
