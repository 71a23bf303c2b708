"""Adapters a silo uses to translate forwarded queries itself, fetched from the coordinator.

Each artifact must verify with the coordinator's adapter key pinned in ``silo.toml`` and map
into a space this silo answers in (fingerprint checked: its own, or while it migrates the other
one), so a coordinator that sends a wrong or forged adapter is refused. Verified artifacts
are kept under ``<data_dir>/adapters/`` and in memory.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from silobridge.adapters import Adapter
from silobridge.adapters.artifact import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    SpaceMismatch,
    load_adapter,
)
from silobridge.adapters.signing import load_verify_key
from silobridge.core.durable import publish_directory, stage_directory
from silobridge.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    SiloBridgeError,
)
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.silo_agent.config import SiloConfig

_ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Translation:
    """A verified adapter and the space id its manifest says it maps into."""

    adapter: Adapter
    source_space: str
    target: SpaceDescriptor

    @property
    def target_space(self) -> str:
        return self.target.space_id


class AdapterFetcher:
    """``await fetcher.get(adapter_id, source_space)`` -> a verified adapter into our space."""

    def __init__(self, config: SiloConfig, accepts: Callable[[SpaceDescriptor], bool]) -> None:
        self.config = config
        # Whether the silo answers in a space (the adapter's target must be one of them).
        self.accepts = accepts
        self.cache_dir = config.data_dir / "adapters"
        self._adapters: dict[str, Translation] = {}
        self._lock = asyncio.Lock()

    def cached(self, adapter_id: str, source_space: str) -> Translation | None:
        """The adapter if it is already verified and loaded for ``source_space``, else None."""
        hit = self._adapters.get(adapter_id)
        if hit is None or hit.source_space != source_space or not self.accepts(hit.target):
            return None  # a migration may have dropped the space it maps into since
        return hit

    async def get(self, adapter_id: str, source_space: str) -> Translation:
        if not _ADAPTER_ID.match(adapter_id):
            raise InvalidArgument(f"adapter id {adapter_id!r} is not a valid adapter id")
        async with self._lock:
            hit = self._adapters.get(adapter_id)
            if hit is not None and not self.accepts(hit.target):
                del self._adapters[adapter_id]
                shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)
                hit = None
            if hit is None:
                hit = await self._load(adapter_id)
                self._adapters[adapter_id] = hit
        if hit.source_space != source_space:
            raise PermissionDenied(
                f"adapter {adapter_id} translates from {hit.source_space}, not from the query's "
                f"space {source_space}"
            )
        return hit

    async def _load(self, adapter_id: str) -> Translation:
        link = self.config.coordinator
        if link is None or link.adapter_key is None:
            raise FailedPrecondition(
                f"silo {self.config.name!r} has no [coordinator] adapter_key, so it cannot "
                "verify adapters and does not serve queries from other spaces"
            )
        verify_key = load_verify_key(link.adapter_key)
        directory = self.cache_dir / adapter_id
        if not (directory / SIGNATURE_FILE).exists():
            await self._download(adapter_id, directory)
        try:
            loaded = await asyncio.to_thread(load_adapter, directory, verify_key=verify_key)
            target = loaded.manifest.target
            if not self.accepts(target):
                raise SpaceMismatch(
                    f"adapter {adapter_id} maps into {target.space_id} (fingerprint "
                    f"{target.fingerprint}), a space silo {self.config.name!r} does not answer in"
                )
        except Exception:
            # A bad artifact is not kept: the next query fetches afresh.
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        manifest = loaded.manifest
        return Translation(loaded.adapter, manifest.source.space_id, manifest.target)

    async def _download(self, adapter_id: str, directory: Path) -> None:
        link = self.config.coordinator
        assert link is not None
        try:
            async with CoordinatorClient(
                link.endpoint, self.config.tls, insecure=self.config.server.insecure
            ) as hub:
                reply = await hub.get_adapter(adapter_id, timeout=FETCH_TIMEOUT_S)
        except SiloBridgeError as error:
            # Our link to our coordinator is not the asker's business: it sees an internal
            # error, and this silo's log the cause.
            raise SiloBridgeError(
                f"fetching adapter {adapter_id} from coordinator {link.endpoint} failed: "
                f"{error.message}"
            ) from error
        files = {
            MANIFEST_FILE: reply.manifest,
            WEIGHTS_FILE: reply.weights,
            SIGNATURE_FILE: reply.signature,
        }
        await asyncio.to_thread(_write_atomically, directory, files)


def _write_atomically(directory: Path, files: Mapping[str, bytes]) -> None:
    # Verified only when loaded; a half-written directory never appears under the final name.
    staging = stage_directory(directory, files)
    # False: another request fetched it first; keep theirs.
    publish_directory(staging, directory)
