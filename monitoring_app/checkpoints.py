"""Signed checkpoints of the audit trail's head, kept outside the database.

The hash chain shows a row altered, inserted or removed in the middle, but not rows cut from
the newest end (the shorter chain is still a valid chain) nor a table emptied with its
triggers disabled. A checkpoint records the head (id, row_hash, number of rows, time) in an
append-only JSON-lines file the database cannot write, signed with an HMAC key the database
does not hold. `verify_audit --checkpoints FILE` then proves every checkpointed row is still
there, at the same place, with the same hash: nothing was cut before the last checkpoint.
Rows newer than the last checkpoint are covered by the next one (docs/operations.md).
"""

import datetime
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from monitoring_app.models import AuditLog
from monitoring_app.services import GENESIS_HASH

CHECKPOINT_FILE = "audit-checkpoints.jsonl"


class CheckpointError(Exception):
    """The checkpoint file cannot be used: missing, unreadable, or a line fails its signature."""


@dataclass(frozen=True)
class Checkpoint:
    row_id: int  # 0 for an empty trail
    row_hash: str
    count: int
    created_at: str  # ISO 8601, UTC, of the head row ("" for an empty trail)
    taken_at: str

    def payload(self) -> dict:
        return {
            "row_id": self.row_id,
            "row_hash": self.row_hash,
            "count": self.count,
            "created_at": self.created_at,
            "taken_at": self.taken_at,
        }


def _key() -> bytes:
    key = settings.HOMEPOT_AUDIT_CHECKPOINT_KEY
    if key:
        return key.encode()
    # Derived, so a deployment that sets nothing still signs with a secret the database does
    # not hold; a key of its own lets operators rotate SECRET_KEY without re-signing.
    return hmac.new(settings.SECRET_KEY.encode(), b"homepot-audit-checkpoint", hashlib.sha256).digest()


def _signature(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hmac.new(_key(), canonical.encode(), hashlib.sha256).hexdigest()


def checkpoint_path(location: str | Path) -> Path:
    """The checkpoint file named by `location`: the file itself, or the directory holding it."""
    path = Path(location)
    return path / CHECKPOINT_FILE if path.is_dir() else path


def audit_head() -> Checkpoint:
    """The newest audit row and how many rows the chain holds up to it."""
    head = AuditLog.objects.order_by("-id").values("id", "row_hash", "created_at").first()
    # Ids are drawn under the chain lock, which is held until commit: once the head is
    # visible, so is every row before it, and the count is that of the chain ending there.
    count = AuditLog.objects.filter(id__lte=head["id"]).count() if head else 0
    now = timezone.now().astimezone(datetime.UTC).isoformat()
    if head is None:
        return Checkpoint(0, GENESIS_HASH, 0, "", now)
    created = head["created_at"].astimezone(datetime.UTC).isoformat()
    return Checkpoint(head["id"], head["row_hash"], count, created, now)


def checkpoint_write(location: str | Path | None = None) -> tuple[Checkpoint, Path]:
    """Append a signed checkpoint of the audit head to the checkpoint file (created with its
    directory if missing). Safe to repeat: each call appends one line."""
    location = location or settings.HOMEPOT_AUDIT_CHECKPOINT_DIR
    if not location:
        raise CheckpointError("No checkpoint location: set HOMEPOT_AUDIT_CHECKPOINT_DIR or pass one.")
    path = Path(location)
    if not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(path)
    checkpoint = audit_head()
    line = json.dumps({**checkpoint.payload(), "signature": _signature(checkpoint.payload())}, sort_keys=True)
    # O_APPEND: concurrent writers (two beats) append whole lines, never overwrite.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint, path


def checkpoints_read(location: str | Path) -> list[Checkpoint]:
    """Every checkpoint in the file, oldest first. CheckpointError if the file is missing or
    a line is malformed or fails its signature (an edited or forged checkpoint)."""
    path = checkpoint_path(location)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoints from {path}: {exc}") from exc
    checkpoints = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            signature = data.pop("signature")
            checkpoint = Checkpoint(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{path} line {number} is not a checkpoint: {exc}") from exc
        if not hmac.compare_digest(signature, _signature(checkpoint.payload())):
            raise CheckpointError(f"{path} line {number} fails its signature (edited or forged).")
        checkpoints.append(checkpoint)
    return checkpoints
