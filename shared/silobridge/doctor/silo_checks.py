"""A silo's own state: its pinned adapter key, its data against its model, index against docstore.

Nothing is written: the docstore is opened read-only and the index is read only through its
manifest, so doctor can run beside a serving silo.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.errors import FailedPrecondition, SiloBridgeError
from silobridge.doctor.report import Check, fail, ok, skip, warn
from silobridge.embedding.embedders import load_embedder
from silobridge.kits.install import check_adapter_key
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.migration import record
from silobridge.silo_agent.store.data import DOCSTORE_NAME
from silobridge.silo_agent.store.generation import SOURCE
from silobridge.silo_agent.store.index import IndexManifest, read_manifest
from silobridge.silo_agent.store.index_home import open_index_home


def adapter_key_check(config: SiloConfig) -> Check:
    name = "adapter key pinned"
    link = config.coordinator
    if link is None:
        return skip(name, "no [coordinator]: this silo fetches no adapters")
    if link.adapter_key is None:
        return fail(
            name,
            "[coordinator] adapter_key is not set: any adapter would be refused",
            "get the coordinator's state/adapter-signing.key.pub and "
            "`silobridge kit install KIT --cert ... --ca ... --adapter-key FILE`",
        )
    try:
        check_adapter_key(link.adapter_key.read_bytes(), link.adapter_key)
    except OSError as err:
        return fail(
            name,
            f"cannot read {link.adapter_key}: {err.strerror}",
            "install the coordinator's adapter key (`silobridge kit install --adapter-key`)",
        )
    except SiloBridgeError as err:
        return fail(name, err.message, "pin the coordinator's adapter-signing.key.pub")
    return ok(name, f"{link.adapter_key} (Ed25519)")


@dataclass(frozen=True)
class Stored:
    """What the docstore says about itself."""

    fingerprint: str | None
    model_id: str | None
    documents: int
    data_version: int
    indexed_version: int | None
    migration: record.MigrationRecord | None
    retired: record.Retired | None


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


class _Meta:
    """The docstore's meta values, read once, for the migration record readers."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.values = dict(conn.execute("SELECT k, v FROM meta").fetchall())

    def get_meta(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else str(value)


def read_stored(path: Path) -> Stored:
    with _read_only(path) as conn:
        meta = _Meta(conn)
        (documents,) = conn.execute("SELECT COUNT(*) FROM documents").fetchone()
    indexed = meta.get_meta(SOURCE.indexed_meta)
    return Stored(
        fingerprint=meta.get_meta("fingerprint"),
        model_id=meta.get_meta("model_id"),
        documents=int(documents),
        data_version=int(meta.get_meta("data_version") or 0),
        indexed_version=None if indexed is None else int(indexed),
        migration=record.load(meta),
        retired=record.retired(meta),
    )


def _model_check(config: SiloConfig, stored: Stored) -> Check:
    name = "model matches data"
    if stored.migration is not None:
        models = (stored.migration.source_model, stored.migration.target_model)
        if config.model in models:
            return ok(name, f"migrating {models[0]!r} → {models[1]!r}; silo.toml names one")
        return fail(
            name,
            f"model = {config.model!r}, but the data directory is migrating {models[0]!r} → "
            f"{models[1]!r}",
            f"set [silo] model to {models[0]!r} or {models[1]!r}",
        )
    spec = config.model
    if stored.retired is not None and config.model == stored.retired.model:
        spec = stored.retired.now
    fingerprint = load_embedder(spec).space.fingerprint
    if stored.fingerprint is not None and stored.fingerprint != fingerprint:
        return fail(
            name,
            f"the documents were embedded with {stored.model_id!r} (fingerprint "
            f"{stored.fingerprint}); the configured {config.model!r} has fingerprint "
            f"{fingerprint}",
            f"set [silo] model to the model the data was built with ({stored.model_id!r}), or "
            "move to the new one with `silobridge silo migrate`",
        )
    if spec != config.model:
        return warn(
            name,
            f"silo.toml names {config.model!r}; the data was migrated to {spec!r}",
            f"set [silo] model = {spec!r}",
        )
    return ok(name, f"{config.model!r}, fingerprint {fingerprint}")


def _no_index(name: str, stored: Stored) -> Check:
    if stored.documents == 0:
        return ok(name, "no documents, no index yet")
    return warn(
        name,
        f"{stored.documents} documents but no index yet",
        "`silobridge silo serve` builds it at start (or `silobridge silo ingest`)",
    )


def _rebuild_hint(config: SiloConfig) -> str:
    milvus = config.index.milvus
    if milvus is None:
        return f"delete {config.data_dir / SOURCE.index_dir}; `silo serve` rebuilds it"
    return (
        f"drop the collection behind the alias {milvus.collection_prefix}__index; `silo serve` "
        "rebuilds it from the docstore"
    )


def _read_index_manifest(config: SiloConfig) -> IndexManifest | None:
    """The source slot's manifest: a FAISS file, or a Milvus collection's property."""
    if config.index.milvus is None:
        return read_manifest(config.data_dir / SOURCE.index_dir)
    home = open_index_home(config.data_dir, config.index, (SOURCE.index_dir,))
    try:
        return home.read_manifest(SOURCE.index_dir)
    finally:
        home.close()


def _index_check(config: SiloConfig, stored: Stored) -> Check:
    name = "index matches docstore"
    try:
        manifest = _read_index_manifest(config)
    except FailedPrecondition as err:
        if "open in another process" in err.message:
            return skip(name, f"{err.message.split(':')[0]}: the serving silo checks it at start")
        return fail(name, err.message, _rebuild_hint(config))
    except SiloBridgeError as err:
        return fail(name, err.message, "check [index] in silo.toml and that the index is up")
    if manifest is None:
        return _no_index(name, stored)
    return _compare(name, config, stored, manifest)


def _compare(name: str, config: SiloConfig, stored: Stored, manifest: IndexManifest) -> Check:
    if stored.fingerprint is not None and manifest.fingerprint != stored.fingerprint:
        return fail(
            name,
            f"the index was built in space {manifest.fingerprint} ({manifest.model_id!r}); the "
            f"docstore holds {stored.fingerprint}",
            _rebuild_hint(config),
        )
    if manifest.count == stored.documents:
        return ok(name, f"{manifest.count} vectors for {stored.documents} documents")
    if stored.indexed_version is not None and stored.indexed_version < stored.data_version:
        return ok(
            name,
            f"{manifest.count} indexed, {stored.documents} documents: the writes since are "
            "served beside the index until its next rebuild",
        )
    return fail(
        name,
        f"{manifest.count} vectors in the index, {stored.documents} documents in the docstore",
        _rebuild_hint(config),
    )


def data_checks(config: SiloConfig, online: bool = True) -> list[Check]:
    path = config.data_dir / DOCSTORE_NAME
    if not path.is_file():
        return [
            warn(
                "documents",
                f"no docstore at {path}: the silo holds no documents yet",
                f"`silobridge silo ingest --config {config.source.name} CORPUS.jsonl`",
            )
        ]
    try:
        stored = read_stored(path)
    except sqlite3.Error as err:
        return [
            fail(
                "documents",
                f"cannot read {path}: {err}",
                "check the file's owner and mode; restore the data directory from a backup",
            )
        ]
    checks = [ok("documents", f"{stored.documents} in {path}")]
    try:
        checks.append(_model_check(config, stored))
    except SiloBridgeError as err:
        checks.append(fail("model matches data", err.message, "fix [silo] model"))
    if config.index.milvus is not None and not online:
        # Opening a Milvus Lite file takes its lock; a server may still be starting.
        checks.append(skip("index matches docstore", "Milvus is not opened with --offline"))
    else:
        checks.append(_index_check(config, stored))
    return checks
