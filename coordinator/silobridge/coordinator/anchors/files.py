"""User anchor files: the texts of a ``.txt``, ``.jsonl`` or gzipped file, checked line by line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from silobridge.coordinator.anchors.validation import check_text
from silobridge.core.errors import ConfigError, InvalidArgument

ANCHOR_FILE_KINDS = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


def _file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from enumerate(handle, 1)
    except FileNotFoundError:
        raise ConfigError(f"anchor file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"anchor file {path} is a directory") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise InvalidArgument(f"anchor file {path} is not a valid gzip file: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read anchor file {path}: {error}") from None


def read_anchor_file(path: Path) -> list[str]:
    """Texts from ``.txt`` (one per line), ``.jsonl`` (a JSON string or {"text": …} per line),
    or a ``.gz`` of either. Blank lines are skipped; a bad line is an error naming ``file:line``.
    """
    name = path.name.lower()
    kind = next((k for k in ANCHOR_FILE_KINDS if name.endswith(k)), None)
    if kind is None:
        kinds = ", ".join(ANCHOR_FILE_KINDS)
        raise InvalidArgument(f"anchor file {path} has an unknown type; expected one of {kinds}")
    jsonl = kind.startswith(".jsonl")
    texts: list[str] = []
    for number, raw in _file_lines(path):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{where}: not valid UTF-8") from None
        if not line.strip():
            continue
        if jsonl:
            try:
                value: Any = json.loads(line)
            except ValueError as error:
                raise InvalidArgument(f"{where}: not valid JSON ({error})") from None
            if isinstance(value, dict):
                value = value.get("text")
            if not isinstance(value, str):
                raise InvalidArgument(
                    f'{where}: expected a JSON string or an object with a "text" string'
                )
            text = value.strip()
        else:
            text = line.strip()
        check_text(text, f"{where}: the text")
        texts.append(text)
    if not texts:
        raise InvalidArgument(f"anchor file {path} holds no texts")
    return texts
