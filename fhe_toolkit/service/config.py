"""How the fund's service is set up: where the fund is, and its limits.

The service keeps its own files in ``FUND_DIR/service/``::

    service/server.lock        held by the one server serving this fund
    service/worker.lock        held by the one decryption worker
    service/nonces.sqlite      request nonces seen, until they expire (see service.nonces)
    service/incoming/<tmp>/    uploads being received (private, 0700; emptied at start-up)
    service/uploads/<id>/submission/   checked uploads waiting in the queue (until decrypted)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SERVICE_DIR = "service"


@dataclass(frozen=True)
class Limits:
    """What one participant, and everyone together, may ask of the service."""

    max_upload_bytes: int = 2 * 2**30
    """The largest submission archive taken (413 beyond it, checked as it streams in)."""
    requests_per_minute: int = 120
    """Signed requests one participant may make per minute (429 beyond it)."""
    max_concurrent_uploads: int = 4
    """Uploads received at the same time, everyone together (503 beyond it: retry later)."""
    max_clock_skew: int = 300
    """Seconds a request's timestamp may be from the service's clock."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}.")


@dataclass(frozen=True)
class ServiceConfig:
    """The fund served (its directory, key store, database) and how."""

    fund_dir: Path
    key_dir: Path
    database: str | None = None
    """An SQLAlchemy URL; by default the fund's SQLite file ``fund_dir/fund.db``."""
    limits: Limits = field(default_factory=Limits)
    decrypt: bool = True
    """Run the decryption worker; without it, uploads are only checked and queued (a server
    started later with it decrypts them)."""
    decrypt_workers: int | None = None
    """Worker processes for a circuit model's decryption (default: one per core)."""
    max_attempts: int = 3
    """Times the worker takes an upload whose decryption was cut off before giving up."""
    poll_interval: float = 0.5
    """Seconds the worker waits before looking at an empty queue again."""
    shutdown_grace: float = 60.0
    """Seconds a stopping server lets the worker finish the decryption it is on."""

    @property
    def service_dir(self) -> Path:
        return self.fund_dir / SERVICE_DIR

    @property
    def uploads_dir(self) -> Path:
        return self.service_dir / "uploads"

    @property
    def incoming_dir(self) -> Path:
        return self.service_dir / "incoming"

    def to_json(self) -> str:
        """For the worker process (read from its standard input, so that a database URL with
        a password never shows in a process list)."""
        data: dict[str, Any] = asdict(self)
        data["fund_dir"], data["key_dir"] = str(self.fund_dir), str(self.key_dir)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        data = json.loads(text)
        data["fund_dir"], data["key_dir"] = Path(data["fund_dir"]), Path(data["key_dir"])
        data["limits"] = Limits(**data["limits"])
        return cls(**data)
