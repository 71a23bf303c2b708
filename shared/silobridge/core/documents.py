"""Documents as a silo's admins write them, and what a live write or delete reports back."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field

# Unicode categories that draw nothing: controls, format characters (zero-width space, joiners,
# word joiner, BOM, soft hyphen) and separators. Text made only of these embeds to nothing.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Letters by category that still render as blank space (Hangul fillers, braille blank).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
INVISIBLE_TEXT_MESSAGE = (
    "has no visible characters (only spaces, zero-width or control characters); "
    "send the actual text"
)


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds at least one character that draws something."""
    return any(
        not char.isspace()
        and char not in _BLANK_LETTERS
        and unicodedata.category(char) not in _INVISIBLE_CATEGORIES
        for char in text
    )


@dataclass(frozen=True)
class Document:
    """One document: its id (unique in the silo), its text and string metadata."""

    doc_id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteReceipt:
    """A durable write of one batch: what it did, and how many documents the silo now holds."""

    inserted: int
    updated: int
    unchanged: int
    document_count: int


@dataclass(frozen=True)
class DeleteReceipt:
    """A durable delete: how many were removed, the requested ids not held, the new count."""

    deleted: int
    missing: tuple[str, ...]
    document_count: int
