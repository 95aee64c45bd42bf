"""A participant's compiled circuit, built once into a native library that workers load fast.

Concrete's ``fhe.Server.load`` compiles ``server.zip``'s MLIR on every call, and ``Server.run``
rebuilds its program object on every evaluation. The runner's workers instead load a library
compiled once (when the model is exported, or the first time a model directory is run) and call
its circuit through ``concrete.compiler`` directly, which imports in a tenth of the time
``concrete.fhe`` takes. The library is rebuilt whenever ``server.zip`` changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fhe_toolkit.protocol.files import sha256_file

SERVER_ZIP = "server.zip"
LIBRARY_DIR = "server_library"
SOURCE_DIGEST = "server_zip.sha256"


def ensure_server_library(deployment: Path, server: Any = None) -> Path:
    """The compiled library of ``deployment/server.zip``, built if missing or stale.

    ``server``: the ``fhe.Server`` already compiled in memory for that ``server.zip`` (at export),
    which saves compiling it again.
    """
    library = deployment / LIBRARY_DIR
    digest = sha256_file(deployment / SERVER_ZIP)
    stamp = library / SOURCE_DIGEST
    if stamp.is_file() and stamp.read_text() == digest:
        return library
    if server is None:
        from concrete import fhe

        server = fhe.Server.load(deployment / SERVER_ZIP)
    staging = deployment / f".{LIBRARY_DIR}.building"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(server._library.get_output_dir_path(), staging)
    (staging / SOURCE_DIGEST).write_text(digest)
    shutil.rmtree(library, ignore_errors=True)
    staging.rename(library)
    return library
