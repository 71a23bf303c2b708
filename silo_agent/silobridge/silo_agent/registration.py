"""The silo's calls to its coordinator: self-registration on `silo serve`, and pushing anchors.

Both go through the typed ``CoordinatorClient`` over mTLS with the silo's own certificate, so the
coordinator learns the silo's identity from TLS alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from silobridge.core.endpoints import endpoint_host
from silobridge.core.errors import (
    ConfigError,
    FailedPrecondition,
    ResourceExhausted,
    SiloBridgeError,
)
from silobridge.core.listings import anchor_texts_sha256
from silobridge.core.spaces import FloatMatrix
from silobridge.embedding.embedders import Embedder
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.rpc.transport import MAX_MESSAGE_BYTES
from silobridge.security.identity import Role, expected_peer
from silobridge.silo_agent.config import CoordinatorLink, SiloConfig

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_SECONDS = 10.0
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# The coordinator has answered and said no: retrying cannot change its mind (status names).
NON_RETRYABLE = frozenset({"PERMISSION_DENIED", "INVALID_ARGUMENT", "FAILED_PRECONDITION"})
SUBMIT_CHUNK_VECTORS = 1_000
# Hosts a server may listen on that no peer can call back; advertise a reachable one instead.
_WILDCARD_HOSTS = {"0.0.0.0", "[::]", "::", ""}  # noqa: S104 (detected, never bound)

ProgressFn = Callable[[int, int], None]  # (texts embedded so far, total)


@dataclass(frozen=True)
class Registration:
    """The coordinator's answer to RegisterSilo."""

    coordinator: str
    silo: str
    space_id: str
    advertised: str


@dataclass(frozen=True)
class AnchorPush:
    """What push_anchor_embeddings sent, and how many vectors the coordinator stored."""

    anchor_set: str
    version: str
    count: int
    space_id: str
    stored: int


def _link(config: SiloConfig) -> CoordinatorLink:
    if config.coordinator is None:
        raise ConfigError(
            f"{config.source}: no [coordinator] section; add one with "
            'endpoint = "host:port" of the coordinator'
        )
    return config.coordinator


def advertise_address(config: SiloConfig, bound_port: int) -> str:
    """The endpoint the coordinator should call: ``advertise``, else the listen host and port."""
    link = _link(config)
    if link.advertise:
        return link.advertise
    host = endpoint_host(config.server.listen)
    if host in _WILDCARD_HOSTS:
        log.warning(
            "silo listens on %s, which the coordinator cannot call back; set [coordinator] "
            'advertise = "host:port" in %s',
            host or "all interfaces",
            config.source,
        )
    return f"{host}:{bound_port}"


def _client(config: SiloConfig, link: CoordinatorLink) -> CoordinatorClient:
    return link_client(config, link)


def link_client(config: SiloConfig, link: CoordinatorLink) -> CoordinatorClient:
    """A client of ``link``'s coordinator that refuses any server but the named coordinator.

    Expected: ``spiffe://<the silo's consortium>/coordinator/<[coordinator] name>``, so another
    consortium member at the endpoint never receives the silo's anchors or adapter requests.
    """
    expect = (
        None if config.tls is None else expected_peer(config.tls.cert, Role.COORDINATOR, link.name)
    )
    return CoordinatorClient(
        link.endpoint, config.tls, insecure=config.server.insecure, expect=expect
    )


def coordinator_client(config: SiloConfig) -> CoordinatorClient:
    """A client of the silo's coordinator (``[coordinator]``), over mTLS with its certificate."""
    return _client(config, _link(config))


async def register_with_coordinator(
    config: SiloConfig,
    advertise: str,
    *,
    initial_backoff: float = INITIAL_BACKOFF_SECONDS,
    max_backoff: float = MAX_BACKOFF_SECONDS,
    timeout: float = REGISTER_TIMEOUT_SECONDS,
) -> Registration | None:
    """Call RegisterSilo until it succeeds; None after a refusal that retrying cannot fix.

    Transient failures (coordinator down, deadline, internal error) are retried with exponential
    backoff from ``initial_backoff`` doubling up to ``max_backoff``.
    """
    link = _link(config)
    try:
        hub = _client(config, link)
    except ConfigError as error:
        log.error("cannot register with coordinator %s: %s", link.endpoint, error.message)
        return None
    delay = initial_backoff
    async with hub:
        while True:
            try:
                silo, space = await hub.register_silo(advertise, timeout=timeout)
            except SiloBridgeError as error:
                if error.status_name not in NON_RETRYABLE:
                    log.warning(
                        "registering with coordinator %s failed (%s: %s); retrying in %.1f s",
                        link.endpoint,
                        error.status_name or error.code.name,
                        error.message,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff)
                    continue
                log.error(
                    "coordinator %s refused to register silo %r at %s: %s: %s",
                    link.endpoint,
                    config.name,
                    advertise,
                    error.status_name or error.code.name,
                    error.message,
                )
                return None
            registration = Registration(
                coordinator=link.endpoint,
                silo=silo or config.name,
                space_id=space.space_id,
                advertised=advertise,
            )
            log.info(
                "registered with coordinator %s as %s (space %s)",
                link.endpoint,
                registration.silo,
                registration.space_id,
            )
            # Scripts wait for this line on stdout.
            print(
                f"silo {registration.silo} registered with coordinator {link.endpoint}", flush=True
            )
            return registration


def start_registration(
    config: SiloConfig, bound_port: int
) -> asyncio.Task[Registration | None] | None:
    """Register in the background if ``[coordinator]`` is configured; None otherwise."""
    if config.coordinator is None:
        return None
    advertise = advertise_address(config, bound_port)
    endpoint = config.coordinator.endpoint

    async def run() -> Registration | None:
        try:
            return await register_with_coordinator(config, advertise)
        except Exception:  # a background task: log, never let the failure go unretrieved
            log.exception("registration with coordinator %s failed", endpoint)
            return None

    return asyncio.get_running_loop().create_task(run(), name="silo-registration")


async def stop_registration(task: asyncio.Task[Registration | None] | None) -> None:
    """Cancel a registration still retrying and wait for it to finish."""
    if task is None:
        return
    task.cancel()
    # wait(), not await: a cancellation of *this* task must still propagate.
    await asyncio.wait({task})


async def _fetch_anchor_set(
    hub: CoordinatorClient, name: str, version: str, timeout: float
) -> tuple[str, str, list[str]]:
    """(name, version, texts) of an anchor set streamed by the coordinator, checked for gaps."""
    texts: list[str] = []
    got_name, got_version, total = name, version, -1
    async for chunk in hub.anchor_set(name, version, timeout=timeout):
        if total < 0:
            got_name, got_version, total = chunk.name or name, chunk.version, chunk.total
        if chunk.offset != len(texts) or (chunk.version and chunk.version != got_version):
            raise FailedPrecondition(
                f"coordinator sent anchor set {name!r} out of order (chunk at offset "
                f"{chunk.offset} after {len(texts)} texts); push again"
            )
        texts.extend(chunk.texts)
    if not got_version:
        raise FailedPrecondition(f"coordinator sent anchor set {name!r} without a version")
    if not texts:
        raise FailedPrecondition(f"anchor set {got_name!r} {got_version} has no texts")
    if total != len(texts):
        raise FailedPrecondition(
            f"coordinator announced {total} texts for anchor set {got_name!r} {got_version} but "
            f"sent {len(texts)}; push again"
        )
    return got_name, got_version, texts


async def push_anchor_embeddings(
    config: SiloConfig,
    embedder: Embedder,
    anchor_set: str,
    version: str = "",
    *,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    timeout: float | None = None,
    fetch_timeout: float = 120.0,
) -> AnchorPush:
    """Fetch an anchor set from the coordinator, embed it here, and submit the vectors.

    Vectors stream back in chunks (at most 1,000 each) while later ones are still being embedded.
    Coordinator refusals surface as the matching ``SiloBridgeError``.
    """
    link = _link(config)
    space = embedder.space
    # Keep each message well under the transport's bound, whatever the model's dimension.
    per_chunk = max(1, min(SUBMIT_CHUNK_VECTORS, MAX_MESSAGE_BYTES // 2 // (4 * space.dimension)))
    async with _client(config, link) as hub:
        name, got_version, texts = await _fetch_anchor_set(hub, anchor_set, version, fetch_timeout)
        total = len(texts)
        if progress is not None:
            progress(0, total)

        async def chunks() -> AsyncIterator[tuple[int, FloatMatrix]]:
            for offset in range(0, total, per_chunk):
                part = texts[offset : offset + per_chunk]
                rows = []
                for start in range(0, len(part), batch_size):
                    batch = part[start : start + batch_size]
                    # Off the event loop, so the stream's keepalives go on while the model runs.
                    rows.append(
                        await asyncio.to_thread(embedder.embed, batch, batch_size=batch_size)
                    )
                    if progress is not None:
                        progress(offset + start + len(batch), total)
                yield offset, np.concatenate(rows)

        stored = await hub.submit_anchor_embeddings(
            name, got_version, space, chunks(), timeout=timeout
        )
    return AnchorPush(
        anchor_set=name,
        version=got_version,
        count=total,
        space_id=space.space_id,
        stored=stored,
    )


def vectors_per_message(dimension: int) -> int:
    """How many vectors of ``dimension`` one message carries: well under the transport's bound
    whatever the model (at most ``SUBMIT_CHUNK_VECTORS``)."""
    return max(1, min(SUBMIT_CHUNK_VECTORS, MAX_MESSAGE_BYTES // 2 // (4 * dimension)))


async def fetch_checked_anchor_set(
    config: SiloConfig,
    name: str,
    version: str,
    sha256: str,
    *,
    max_texts: int,
    timeout: float = 120.0,
) -> list[str]:
    """The texts of anchor set ``name`` ``version`` from this silo's own coordinator, refused
    unless they hash to ``sha256`` (and, before they are read, if the set has more than
    ``max_texts`` texts): what ``EmbedAnchors`` embeds, never texts a caller sent."""
    if config.coordinator is None:
        raise FailedPrecondition(
            f"silo {config.name!r} has no [coordinator] section, so it cannot fetch anchor set "
            f"{name!r} to embed it; add one with the coordinator's endpoint"
        )
    texts: list[str] = []
    async with coordinator_client(config) as hub:
        async for chunk in hub.anchor_set(name, version, timeout=timeout):
            if chunk.version != version or chunk.name != name:
                raise FailedPrecondition(
                    f"the coordinator sent {chunk.name!r} {chunk.version} when asked for "
                    f"anchor set {name!r} {version}"
                )
            if chunk.sha256 != sha256:
                raise FailedPrecondition(
                    f"anchor set {name!r} {version} at the coordinator has sha256 "
                    f"{chunk.sha256[:12]}…, not the {sha256[:12]}… asked for; nothing embedded"
                )
            if chunk.total > max_texts:
                raise ResourceExhausted(
                    f"anchor set {name!r} {version} has {chunk.total} texts; this silo embeds "
                    f"at most {max_texts} ([limits] max_anchor_texts)"
                )
            if chunk.offset != len(texts) or len(texts) + len(chunk.texts) > chunk.total:
                raise FailedPrecondition(
                    f"coordinator sent anchor set {name!r} out of order (chunk at offset "
                    f"{chunk.offset} after {len(texts)} texts)"
                )
            texts.extend(chunk.texts)
    if not texts or anchor_texts_sha256(texts) != sha256:
        raise FailedPrecondition(
            f"the texts of anchor set {name!r} {version} fetched from the coordinator do not "
            f"hash to the sha256 {sha256[:12]}… asked for; nothing embedded"
        )
    return texts
