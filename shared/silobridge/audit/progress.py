"""How far an audit log has come: its lines and its newest signed checkpoint (for metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from silobridge.audit.chain import ChainLine


@dataclass(frozen=True)
class AuditProgress:
    """How far a log has come, for the server's metrics."""

    lines: int  # lines in the log, checkpoints included
    written: int  # of them, appended since this process opened it
    checkpointed: int  # the line the newest signed checkpoint covers (0: none yet)
    checkpoint_unix: float | None  # when that checkpoint was signed (None: none yet)


def signed_at(line: ChainLine | None) -> float | None:
    """When a checkpoint line was written, from its ``ts`` (None if it has no readable one)."""
    stamp = line.fields.get("ts") if line is not None else None
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
