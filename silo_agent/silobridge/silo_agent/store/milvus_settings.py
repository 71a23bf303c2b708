"""``[index] backend = "milvus"`` in silo.toml: where the Milvus index lives and what it is called.

One client code for both: a local path ending in ``.db`` is Milvus Lite, embedded in the silo's
process (one machine, tests; a relative path is taken inside the silo's data directory, so it is
backed up with the docstore); ``http://`` or ``https://host:port`` is a Milvus server or cluster.
A token (``user:password`` or an API key) is read from ``token_file`` when the silo connects,
so no secret sits in silo.toml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silobridge.core.config import Section
from silobridge.core.errors import ConfigError

BACKENDS = ("faiss", "milvus")
_SERVER_SCHEMES = ("http://", "https://")
# Milvus names: letters, digits and underscores, a letter or underscore first. The silo adds
# "__<slot>" and "__<slot>__<build>" to the prefix, so a prefix may not hold "__" itself: then
# no silo's names can be another prefix's (docs: README, "Pointing a silo at Milvus").
_PREFIX = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|_(?!_))*$")
_MAX_PREFIX = 160
# The FAISS factory strings whose meaning Milvus has: an HNSW graph of M links over raw vectors.
_HNSW_FACTORY = re.compile(r"^(?:IDMap2?,)?HNSW(\d+)(?:,Flat)?$")


@dataclass(frozen=True)
class MilvusSettings:
    """How a silo reaches its Milvus index and the names it gives its collections there."""

    uri: str  # an absolute ``….db`` path (Milvus Lite) or ``http(s)://host:port``
    collection_prefix: str
    token_file: Path | None = None
    db_name: str = ""

    @property
    def is_lite(self) -> bool:
        return not self.uri.startswith(_SERVER_SCHEMES)


def hnsw_links(factory: str) -> int:
    """M of an ``HNSW<M>[,Flat]`` factory, the one approximate index both backends build."""
    match = _HNSW_FACTORY.match(factory)
    if match is None:
        raise ConfigError(
            f'[index] hnsw_factory = {factory!r}: with backend = "milvus" the approximate '
            'index is an HNSW graph; write it as HNSW<M> or HNSW<M>,Flat (e.g. "HNSW32,Flat")'
        )
    return int(match.group(1))


def default_prefix(silo_name: str) -> str:
    """The silo's name as a Milvus name: dots and dashes become one underscore each run."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", silo_name).strip("_")
    return name if re.match(r"^[A-Za-z]", name) else f"silo_{name}"


def milvus_settings(
    idx: Section, table: Mapping[str, Any], *, silo_name: str, data_dir: Path, hnsw_factory: str
) -> MilvusSettings | None:
    """The Milvus keys of ``[index]`` (``table``, as written); None for the FAISS backend."""
    backend = idx.get("backend", str, "faiss")
    if backend not in BACKENDS:
        raise ConfigError(
            f"{idx.source}: [index] backend = {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    if "token" in table:  # a secret in the file: its own refusal, before "unknown key"
        raise ConfigError(
            f"{idx.source}: [index] token: keep the Milvus token out of silo.toml; write it to a "
            "file only the silo's user can read and name that file with token_file"
        )
    milvus_keys = ("uri", "token_file", "db_name", "collection_prefix")
    if backend == "faiss":
        given = [key for key in milvus_keys if key in table]
        if given:
            raise ConfigError(
                f'{idx.source}: [index] {", ".join(given)}: only with backend = "milvus"'
            )
        return None
    raw_uri = idx.get("uri", str, "")
    if not raw_uri:
        raise ConfigError(
            f'{idx.source}: [index] backend = "milvus" needs uri: a local path ending in .db '
            "(Milvus Lite, inside the data directory when relative) or http(s)://host:port "
            "(a Milvus server)"
        )
    token_file = idx.path("token_file") if "token_file" in table else None
    db_name = idx.get("db_name", str, "")
    prefix = idx.get("collection_prefix", str, default_prefix(silo_name))
    if not _PREFIX.match(prefix) or len(prefix) > _MAX_PREFIX:
        raise ConfigError(
            f"{idx.source}: [index] collection_prefix = {prefix!r} must start with a letter and "
            f"hold only letters, digits and single underscores (at most {_MAX_PREFIX})"
        )
    hnsw_links(hnsw_factory)  # refused now rather than at the first large build
    if raw_uri.startswith(_SERVER_SCHEMES):
        return MilvusSettings(raw_uri, prefix, token_file, db_name)
    if "://" in raw_uri or not raw_uri.endswith(".db"):
        raise ConfigError(
            f"{idx.source}: [index] uri = {raw_uri!r}: a Milvus Lite file is a path ending in "
            ".db; a Milvus server is http://host:port or https://host:port"
        )
    if token_file is not None:
        raise ConfigError(
            f"{idx.source}: [index] token_file: Milvus Lite ({raw_uri}) takes no token; "
            "remove the key, or point uri at a Milvus server"
        )
    path = Path(raw_uri).expanduser()
    local = path if path.is_absolute() else data_dir / path
    return MilvusSettings(str(local), prefix, None, db_name)
