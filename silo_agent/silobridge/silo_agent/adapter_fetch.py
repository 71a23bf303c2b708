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
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.adapters import Adapter
from silobridge.adapters.artifact import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    SpaceMismatch,
    load_adapter,
)
from silobridge.adapters.hubness import REFERENCE_TENSOR
from silobridge.adapters.refinement import GUARD_TARGETS_TENSOR, GUARD_TRANSLATED_TENSOR
from silobridge.adapters.signing import load_verify_key
from silobridge.core.durable import publish_directory, stage_directory
from silobridge.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SiloBridgeError,
    Unavailable,
)
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.registration import link_client

# Matched with fullmatch: "$" alone would let a trailing newline through.
_ADAPTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FETCH_TIMEOUT_S = 10.0
# Ids the coordinator said it does not have are not asked for again for this long, and at most
# this many are remembered (oldest forgotten first).
MISSING_TTL_S = 30.0
MAX_MISSING = 1024


@dataclass(frozen=True)
class Translation:
    """A verified adapter and the space id its manifest says it maps into."""

    adapter: Adapter
    source_space: str
    target: SpaceDescriptor
    adapter_id: str = ""
    # The receiving silo's hubness reference the coordinator signed into the artifact, if any.
    hubness_reference: npt.NDArray[np.generic] | None = None
    # Public anchors as the adapter maps them and as this silo's model embeds them (row i of
    # each is anchor i): the refinement's label-free guard checks a correction against them.
    guard_translated: npt.NDArray[np.generic] | None = None
    guard_targets: npt.NDArray[np.generic] | None = None

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
        # One load per id at a time (single flight); different ids load side by side.
        self._loading: dict[str, asyncio.Task[Translation]] = {}
        # Ids the coordinator does not have -> when that answer expires (monotonic seconds).
        self._missing: OrderedDict[str, float] = OrderedDict()
        self._clock = time.monotonic

    def cached(self, adapter_id: str, source_space: str) -> Translation | None:
        """The adapter if it is already verified and loaded for ``source_space``, else None."""
        hit = self._adapters.get(adapter_id)
        if hit is None or hit.source_space != source_space or not self.accepts(hit.target):
            return None  # a migration may have dropped the space it maps into since
        return hit

    async def get(self, adapter_id: str, source_space: str) -> Translation:
        """Call only for an admitted query a coordinator forwarded (``handlers`` checks)."""
        if not _ADAPTER_ID.fullmatch(adapter_id):
            raise InvalidArgument(f"adapter id {adapter_id!r} is not a valid adapter id")
        hit = self._adapters.get(adapter_id)
        if hit is not None and not self.accepts(hit.target):
            del self._adapters[adapter_id]
            shutil.rmtree(self.cache_dir / adapter_id, ignore_errors=True)
            hit = None
        if hit is None:
            self._check_not_missing(adapter_id)
            loading = self._loading.get(adapter_id)
            if loading is None:
                loading = asyncio.get_running_loop().create_task(
                    self._load_and_keep(adapter_id), name=f"adapter-fetch-{adapter_id}"
                )
                self._loading[adapter_id] = loading
                loading.add_done_callback(lambda _task: self._loading.pop(adapter_id, None))
            # Shielded: one asker giving up does not cancel the load the others wait for.
            hit = await asyncio.shield(loading)
        if hit.source_space != source_space:
            raise PermissionDenied(
                f"adapter {adapter_id} translates from {hit.source_space}, not from the query's "
                f"space {source_space}"
            )
        return hit

    def _check_not_missing(self, adapter_id: str) -> None:
        expires = self._missing.get(adapter_id)
        if expires is None:
            return
        if expires <= self._clock():
            del self._missing[adapter_id]
            return
        raise _not_found(adapter_id)

    def _remember_missing(self, adapter_id: str) -> None:
        self._missing[adapter_id] = self._clock() + MISSING_TTL_S
        self._missing.move_to_end(adapter_id)
        while len(self._missing) > MAX_MISSING:
            self._missing.popitem(last=False)

    async def _load_and_keep(self, adapter_id: str) -> Translation:
        try:
            hit = await self._load(adapter_id)
        except NotFound:
            self._remember_missing(adapter_id)
            raise
        self._adapters[adapter_id] = hit
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
        return Translation(
            loaded.adapter,
            manifest.source.space_id,
            manifest.target,
            adapter_id=adapter_id,
            hubness_reference=loaded.receiving.get(REFERENCE_TENSOR),
            guard_translated=loaded.receiving.get(GUARD_TRANSLATED_TENSOR),
            guard_targets=loaded.receiving.get(GUARD_TARGETS_TENSOR),
        )

    async def _download(self, adapter_id: str, directory: Path) -> None:
        link = self.config.coordinator
        assert link is not None
        try:
            async with link_client(self.config, link) as hub:
                reply = await hub.get_adapter(adapter_id, timeout=FETCH_TIMEOUT_S)
        except NotFound:
            # The asker (the coordinator that named the id) can act on this: no traceback.
            raise _not_found(adapter_id) from None
        except (Unavailable, DeadlineExceeded) as error:
            raise Unavailable(
                f"silo {self.config.name!r} cannot fetch adapter {adapter_id} from its "
                "coordinator right now; retry later"
            ) from error
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


def _not_found(adapter_id: str) -> NotFound:
    return NotFound(
        f"adapter {adapter_id} is not at this silo's coordinator (retrained or removed?); "
        "list the current adapters and query again"
    )


def _write_atomically(directory: Path, files: Mapping[str, bytes]) -> None:
    # Verified only when loaded; a half-written directory never appears under the final name.
    staging = stage_directory(directory, files)
    # False: another request fetched it first; keep theirs.
    publish_directory(staging, directory)
