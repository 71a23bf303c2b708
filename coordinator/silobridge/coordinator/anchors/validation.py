"""What a valid anchor set is: its name, its versions, its texts, and the hash that pins them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from silobridge.core.errors import InvalidArgument, ResourceExhausted

# The hash that pins an anchor set's texts lives beside AnchorChunk: silos check it too.
from silobridge.core.listings import anchor_texts_sha256

__all__ = ["anchor_texts_sha256"]

ANCHOR_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
MAX_ANCHOR_TEXTS = 200_000
MAX_ANCHOR_TEXT_CHARS = 2_000

# re.ASCII: without it \d and friends would admit non-ASCII digits into directory names.
NAME_RE = re.compile(ANCHOR_NAME_PATTERN, re.ASCII)
VERSION_RE = re.compile(r"v[0-9]{1,9}", re.ASCII)


def validate_anchor_set_name(name: str) -> str:
    """Return ``name`` if it is a valid anchor-set name; InvalidArgument otherwise."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"anchor set name {name!r} is invalid: use 1 to 63 characters of a-z, 0-9, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def validate_anchor_set_version(version: str) -> str:
    """Return ``version`` if it looks like ``v1``, ``v2``, …; InvalidArgument otherwise."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise InvalidArgument(
            f"anchor set version {version!r} is invalid: expected v1, v2, … (or empty for newest)"
        )
    return version


def version_number(version: str) -> int:
    """The number of a valid version name: ``"v12"`` is 12 (versions sort by it, not as text)."""
    return int(version[1:])


def check_text(text: str, where: str) -> None:
    """InvalidArgument naming ``where`` unless ``text`` (already stripped) may be an anchor."""
    if not text:
        raise InvalidArgument(f"{where} is blank; every anchor text must have content")
    if len(text) > MAX_ANCHOR_TEXT_CHARS:
        raise InvalidArgument(
            f"{where} has {len(text)} characters; at most {MAX_ANCHOR_TEXT_CHARS} are allowed"
        )


def canonical_texts(texts: Sequence[str]) -> list[str]:
    """Strip, validate and de-duplicate (first occurrence wins, order kept)."""
    if isinstance(texts, str):
        raise InvalidArgument("anchor texts must be a list of strings, not one string")
    if len(texts) == 0:
        raise InvalidArgument("no anchor texts given; an anchor set needs at least one text")
    unique: dict[str, None] = {}
    for index, raw in enumerate(texts):
        if not isinstance(raw, str):
            raise InvalidArgument(f"anchor text at index {index} is not a string")
        text = raw.strip()
        check_text(text, f"anchor text at index {index}")
        unique.setdefault(text, None)
    if len(unique) > MAX_ANCHOR_TEXTS:
        raise ResourceExhausted(
            f"{len(unique)} distinct anchor texts given; an anchor set holds at most "
            f"{MAX_ANCHOR_TEXTS}"
        )
    return list(unique)
