"""Audit events: build one, and refuse field names or values that could carry text or vectors.

An event is a flat mapping of scalars (and lists of strings, such as silo names). Names the log
writes itself are reserved, and a name with a word like ``query`` or ``vector`` is refused
outright, so query text, document text and embeddings never reach an audit log by accident.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence

from silobridge.core.errors import InvalidArgument
from silobridge.security.identity import PeerIdentity

# Fields the log itself writes; an event may not set them.
RESERVED_FIELDS = frozenset({"seq", "ts", "prev", "hash", "type", "head", "covers", "sig"})
# Defence in depth: a field whose name has one of these words is refused outright.
FORBIDDEN_WORDS = frozenset(
    {"text", "texts", "query", "queries", "vector", "vectors", "embedding", "embeddings"}
)
_EVENT_FIELDS = frozenset({"who", "org", "rpc", "allowed", "reason", "silos", "results"})


@functools.lru_cache(maxsize=4096)
def _words(name: str) -> frozenset[str]:
    # Split snake_case, kebab-case, dotted and camelCase names alike.
    # Cached: field names come from code, a few dozen of them, each checked on every event.
    return frozenset(re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"audit field name {name!r} is not a non-empty string")
    if name in RESERVED_FIELDS:
        raise InvalidArgument(f"audit field {name!r} is reserved: the log writes it itself")
    if not FORBIDDEN_WORDS.isdisjoint(_words(name)):
        raise InvalidArgument(
            f"audit field {name!r} is refused: audit logs never hold query text, document "
            "text or vectors; log a count, an id or a hash under a name without "
            f"{'/'.join(sorted(FORBIDDEN_WORDS))}"
        )
    return name


def _check_scalar(name: str, value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"audit field {name!r} is {value}; only finite numbers")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"audit field {name!r} is not valid Unicode text") from None
        return value
    raise InvalidArgument(
        f"audit field {name!r} holds a {type(value).__name__}; only strings, numbers, "
        "booleans and null are logged (and lists of strings, such as silo names)"
    )


def checked_event(event: Mapping[str, object]) -> dict[str, object]:
    """A copy of ``event`` fit to log; raises ``InvalidArgument`` naming the first bad field."""
    record: dict[str, object] = {}
    for name, value in event.items():
        _check_name(name)
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise InvalidArgument(
                    f"audit field {name!r} is a list of non-strings; only lists of strings "
                    "(such as silo names) are logged, never numbers that could be a vector"
                )
            record[name] = [_check_scalar(name, item) for item in value]
        else:
            record[name] = _check_scalar(name, value)
    return record


def audit_event(
    *,
    who: PeerIdentity | None,
    rpc: str,
    allowed: bool,
    reason: str = "",
    silos: Sequence[str] = (),
    results: int | None = None,
    **extra: str | int | float | bool | None,
) -> dict[str, object]:
    """One audit event: who (``None``: no readable identity), which RPC, allowed or why not.

    Extra fields must be scalars and must not be named like text, queries or vectors.
    """
    for name, value in extra.items():
        if name in _EVENT_FIELDS:
            raise InvalidArgument(f"audit field {name!r} is set by audit_event itself")
        _check_name(name)
        _check_scalar(name, value)
    if isinstance(silos, str):
        raise InvalidArgument("silos must be a list of silo names, not one string")
    event: dict[str, object] = {
        "who": who.spiffe_id if who is not None else None,
        "org": who.org if who is not None else None,
        "rpc": rpc,
        "allowed": allowed,
        "reason": reason,
        "silos": list(silos),
        "results": results,
        **extra,
    }
    return checked_event(event)
