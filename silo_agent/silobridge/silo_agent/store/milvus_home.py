"""A silo's indexes in Milvus: one collection per build, an alias per slot, one serving alias.

With ``collection_prefix`` P (default: the silo's name):

- ``P__index`` and ``P__index_next`` are aliases, one per slot (the source generation, and the
  target generation of a migration); each names the collection of that slot's latest build;
- ``P__<slot>__<12 hex>`` are the collections: a full rebuild makes a new one, points the
  slot's alias at it and drops the old one; compaction folds rows into the current one;
- ``P`` is the serving alias: the collection of the generation that answers the silo's default
  queries (its primary), moved at a migration's cut-over, rollback and finish.

Each collection carries its manifest (the same JSON as FAISS's ``manifest.json``) as the
collection property ``silobridge.manifest``, written before any alias names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pymilvus import MilvusClient

from silobridge.core.errors import FailedPrecondition, NotFound, SiloBridgeError, Unavailable
from silobridge.silo_agent.store.index import IndexManifest, IndexSettings, space_mismatch_message
from silobridge.silo_agent.store.index_home import ServedIndex
from silobridge.silo_agent.store.milvus_index import (
    IndexKind,
    MilvusIndex,
    count_rows,
    create_collection,
    load,
    new_manifest,
    write_rows,
)
from silobridge.silo_agent.store.milvus_settings import MilvusSettings
from silobridge.silo_agent.store.rows import Changes, KeyArray

log = logging.getLogger(__name__)
MANIFEST_PROPERTY = "silobridge.manifest"
_BUILD = re.compile(r"^[0-9a-f]{12}$")
_CONNECT_TIMEOUT_S = 10.0
# Milvus Lite runs inside this process, one server per file, shared by every home opened on
# it here; the last one closed stops it and releases the file's lock for other processes.
_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}


class MilvusHome:
    """The collections and aliases of one silo's slots in one Milvus database."""

    # Milvus upserts and deletes rows: compaction folds the overlay into the collection.
    folds_in_place = True

    def __init__(self, client: MilvusClient, settings: MilvusSettings, slots: tuple[str, ...]):
        self.client = client
        self.settings = settings
        self.prefix = settings.collection_prefix
        self.slots = slots
        self._served: str | None = None
        self._closed = False

    @classmethod
    def connect(cls, settings: MilvusSettings, slots: tuple[str, ...]) -> MilvusHome:
        """Connect (starting Milvus Lite for a local file); a clear refusal if it cannot."""
        if settings.is_lite:
            _open_lite(settings.uri)
        try:
            client = MilvusClient(
                uri=settings.uri,
                token=_read_token(settings.token_file),
                db_name=settings.db_name,
                timeout=_CONNECT_TIMEOUT_S,
            )
            client.list_collections()  # a server that accepts the connection must answer too
        except SiloBridgeError:
            _close_lite(settings)
            raise
        except Exception as error:  # pymilvus raises several kinds; every one is "cannot reach"
            _close_lite(settings)
            detail = str(getattr(error, "message", "") or error) or type(error).__name__
            raise Unavailable(
                f"cannot reach the Milvus index at {settings.uri} ({detail}); check [index] uri"
                f"{', token_file' if settings.token_file else ''} and db_name in silo.toml and "
                "that the Milvus server is up and reachable from this host"
            ) from None
        return cls(client, settings, slots)

    # --- names ------------------------------------------------------------------------------

    def alias(self, name: str) -> str:
        """The alias of a slot (``index`` -> ``P__index``, ``index-next`` -> ``P__index_next``)."""
        return f"{self.prefix}__{name.replace('-', '_')}"

    @property
    def serving_alias(self) -> str:
        return self.prefix

    def collection_of(self, name: str) -> str | None:
        """The collection ``name``'s alias names, or None before its first build."""
        return self._aliases().get(self.alias(name))

    def _aliases(self) -> dict[str, str]:
        ours = {self.alias(slot) for slot in self.slots} | {self.serving_alias}
        listed = self.client.list_aliases().get("aliases", [])
        return {
            alias: str(self.client.describe_alias(alias)["collection_name"])
            for alias in listed
            if alias in ours
        }

    def _point(self, alias: str, collection: str, aliases: dict[str, str]) -> None:
        if alias not in aliases:
            self.client.create_alias(collection, alias)
        elif aliases[alias] != collection:
            self.client.alter_alias(collection, alias)  # one atomic swap for every reader
        aliases[alias] = collection

    # --- IndexHome --------------------------------------------------------------------------

    def read_manifest(self, name: str) -> IndexManifest | None:
        collection = self.collection_of(name)
        return None if collection is None else self._manifest_of(collection)

    def _manifest_of(self, collection: str) -> IndexManifest:
        properties = self.client.describe_collection(collection).get("properties", {})
        text = properties.get(MANIFEST_PROPERTY)
        try:
            if text is None:
                raise FailedPrecondition("no manifest")
            return IndexManifest.from_json(str(text), Path(f"milvus:{collection}"))
        except FailedPrecondition as error:
            raise FailedPrecondition(
                f"the Milvus collection {collection} has no readable manifest "
                f"({error.message}); drop it and run `silobridge silo ingest` to rebuild the "
                "index from the docstore"
            ) from None

    def load(
        self,
        name: str,
        *,
        expected_fingerprint: str,
        expected_model_id: str,
        settings: IndexSettings,
    ) -> ServedIndex:
        collection = self.collection_of(name)
        if collection is None:
            raise NotFound(
                f"no index in Milvus alias {self.alias(name)}: run `silobridge silo ingest` "
                "to build one"
            )
        manifest = self._manifest_of(collection)
        if manifest.fingerprint != expected_fingerprint:
            raise FailedPrecondition(
                space_mismatch_message(
                    f"the index in Milvus collection {collection}",
                    stored_fingerprint=manifest.fingerprint,
                    stored_model_id=manifest.model_id,
                    configured_fingerprint=expected_fingerprint,
                    configured_model_id=expected_model_id,
                )
            )
        state = self.client.get_load_state(collection).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            self.client.load_collection(collection)  # a restarted Milvus holds it released
        return MilvusIndex(self.client, collection, manifest, settings)

    def save(
        self,
        name: str,
        keys: KeyArray,
        vectors: np.ndarray,
        settings: IndexSettings,
        *,
        fingerprint: str,
        model_id: str,
    ) -> ServedIndex:
        collection = f"{self.alias(name)}__{secrets.token_hex(6)}"
        kind = IndexKind.for_size(vectors.shape[0], settings)
        create_collection(
            self.client, collection, vectors.shape[1], kind, f"SiloBridge {name} of {model_id}"
        )
        write_rows(self.client, collection, keys, vectors)
        self.client.flush(collection)
        load(self.client, collection)
        manifest = new_manifest(
            collection,
            kind,
            fingerprint=fingerprint,
            model_id=model_id,
            dimension=vectors.shape[1],
            count=count_rows(self.client, collection),
        )
        self._write_manifest(collection, manifest)
        aliases = self._aliases()
        self._point(self.alias(name), collection, aliases)
        if self._served == name:
            self._point(self.serving_alias, collection, aliases)
        return MilvusIndex(self.client, collection, manifest, settings)

    def _write_manifest(self, collection: str, manifest: IndexManifest) -> None:
        self.client.alter_collection_properties(
            collection, properties={MANIFEST_PROPERTY: manifest.to_json()}
        )

    def fold(
        self, name: str, index: ServedIndex, changes: Changes, settings: IndexSettings
    ) -> ServedIndex | None:
        if not isinstance(index, MilvusIndex) or index.collection != self.collection_of(name):
            return None  # not this slot's current collection: rebuild
        folded = index.folded(changes, settings)
        if folded is not None:
            self._write_manifest(folded.collection, folded.manifest)
        return folded

    def discard_superseded(self, name: str) -> None:
        self._sweep()

    def drop(self, name: str) -> None:
        aliases = self._aliases()
        collection = aliases.get(self.alias(name))
        if collection is not None and aliases.get(self.serving_alias) == collection:
            served = aliases.get(self.alias(self._served)) if self._served else None
            if served is not None and served != collection:
                self._point(self.serving_alias, served, aliases)
            else:
                self.client.drop_alias(self.serving_alias)
        if self.alias(name) in aliases:
            self.client.drop_alias(self.alias(name))
        self._sweep()

    def promote(self, source: str, target: str) -> None:
        aliases = self._aliases()
        new = aliases.get(self.alias(target))
        if new is not None:
            old = aliases.get(self.alias(source))
            self._point(self.alias(source), new, aliases)
            if aliases.get(self.serving_alias) in (old, None):
                self._point(self.serving_alias, new, aliases)
            self.client.drop_alias(self.alias(target))
        self._sweep()  # the old source's collection, whether or not this run moved the alias

    def serve(self, name: str) -> None:
        self._served = name
        aliases = self._aliases()
        collection = aliases.get(self.alias(name))
        if collection is not None:
            self._point(self.serving_alias, collection, aliases)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.client.close()
        _close_lite(self.settings)

    def _sweep(self) -> None:
        """Drop this silo's collections that no alias names (superseded builds, leftovers)."""
        named = set(self._aliases().values())
        builds = {self.alias(slot) for slot in self.slots}
        for collection in self.client.list_collections():
            base, _, build = str(collection).rpartition("__")
            if base in builds and _BUILD.match(build) and collection not in named:
                for alias in self.client.list_aliases(collection_name=collection).get(
                    "aliases", []
                ):
                    self.client.drop_alias(alias)  # Milvus drops no collection an alias names
                self.client.drop_collection(collection)
                log.info("dropped superseded Milvus collection %s", collection)


def _read_token(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise FailedPrecondition(
            f"cannot read the Milvus token file {path}: {error.strerror}; [index] token_file "
            "in silo.toml names it"
        ) from None


def _open_lite(uri: str) -> None:
    """Count this process's user of a Milvus Lite file; refuse one another process holds."""
    with _LITE_LOCK:
        if _LITE_USERS.get(uri, 0) == 0 and _locked_elsewhere(Path(uri)):
            raise FailedPrecondition(
                f"the Milvus Lite file {uri} is open in another process (a running silo?): "
                "Milvus Lite serves one process. Write to a serving silo with `silobridge silo "
                "ingest --live`, or stop it first; several processes need a Milvus server"
            )
        _LITE_USERS[uri] = _LITE_USERS.get(uri, 0) + 1


def _close_lite(settings: MilvusSettings) -> None:
    if not settings.is_lite:
        return
    with _LITE_LOCK:
        left = _LITE_USERS.get(settings.uri, 0) - 1
        if left > 0:
            _LITE_USERS[settings.uri] = left
            return
        _LITE_USERS.pop(settings.uri, None)
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(settings.uri)


def _locked_elsewhere(path: Path) -> bool:
    lock = path / "LOCK"
    if not lock.exists():
        return False
    with _opened(lock) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)
