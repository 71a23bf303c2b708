"""What servers tell callers about themselves: a silo's description, registered silos, adapters."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor


@dataclass(frozen=True)
class SiloDescription:
    """A silo's answer to Describe: who it is, its space, its size and what it discloses."""

    name: str
    space: SpaceDescriptor
    document_count: int
    max_k: int
    # None from a silo too old to say.
    policy: DisclosurePolicy | None = None
    # Other spaces it answers in without a coordinator's adapter (while migrating).
    also_serves: tuple[SpaceDescriptor, ...] = ()


@dataclass(frozen=True)
class SiloListing:
    """A registered silo as the coordinator's ListSilos shows it, probed just now."""

    silo: str
    endpoint: str
    org: str
    space: SpaceDescriptor | None
    healthy: bool
    document_count: int
    message: str
    registered_unix: int
    # What the silo's own policy discloses, as its Describe said (None: it did not answer).
    policy: DisclosurePolicy | None = None
    # Other spaces it answers in without a coordinator's adapter (while migrating), as the
    # coordinator knows them.
    also_serves: tuple[SpaceDescriptor, ...] = ()
    # Why the coordinator routes no query to it (disabled by an admin, or its certificate is
    # on the coordinator's denylist); empty when it does.
    denied_reason: str = ""


class SiloAction(enum.StrEnum):
    """What a consortium admin does to a registered silo (``silobridge coordinator silo``)."""

    DISABLE = "disable"
    ENABLE = "enable"
    REMOVE = "remove"


@dataclass(frozen=True)
class SiloState:
    """A silo after an admin's action: ``state`` is enabled, disabled or removed."""

    silo: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class AdapterListing:
    """A stored adapter; ``version`` is the version of the anchor set it was trained on."""

    adapter_id: str
    kind: str
    source: SpaceDescriptor
    target: SpaceDescriptor
    anchor_set: str
    version: str
    anchor_set_sha256: str
    metrics: Mapping[str, float]
    created_unix: int
    stale: bool = False
    stale_reason: str = ""


@dataclass(frozen=True)
class TrainProgress:
    """One step of a training run; the last one carries the stored adapter."""

    stage: str
    message: str
    adapter: AdapterListing | None = None


@dataclass(frozen=True)
class AnchorChunk:
    """Part of an anchor set's texts as the coordinator streams it (``offset`` of ``total``)."""

    name: str
    version: str
    sha256: str
    texts: tuple[str, ...]
    offset: int
    total: int


def anchor_texts_sha256(texts: Sequence[str]) -> str:
    """Hex SHA-256 over each text as its UTF-8 byte length (8 bytes, big-endian) then its bytes.

    The length prefix makes the hash unambiguous: ["ab", "c"] and ["a", "bc"] differ. It names an
    anchor set version's texts: the coordinator's catalogue records it, silos check it.
    """
    digest = hashlib.sha256()
    for index, text in enumerate(texts):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"anchor text at index {index} is not valid Unicode") from None
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class AnchorSetRef:
    """An anchor set version as EmbedAnchors names it: the silo fetches and checks the texts."""

    name: str
    version: str
    sha256: str
    count: int


@dataclass(frozen=True)
class PreferenceRequest:
    """PreferAnchors: a public pool named as EmbedAnchors names an anchor set, and how many of
    its positions the silo is asked for (1 to the pool's size)."""

    name: str
    version: str
    sha256: str
    count: int


@dataclass(frozen=True)
class AnchorVectors:
    """Part of a silo's vectors of one anchor set version: rows ``offset`` onwards."""

    anchor_set: str
    version: str
    space: SpaceDescriptor
    offset: int
    vectors: FloatMatrix


@dataclass(frozen=True)
class AdapterFiles:
    """A signed adapter artifact's files, byte for byte (``GetAdapter``)."""

    manifest: bytes
    weights: bytes
    signature: bytes
