"""Protobuf <-> domain for what servers say about what they hold: descriptions, silo and adapter
listings, disclosure policies, training progress, anchor chunks and vectors, adapter files."""

from __future__ import annotations

from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.listings import (
    AdapterFiles,
    AdapterListing,
    AnchorChunk,
    AnchorVectors,
    SiloAction,
    SiloDescription,
    SiloListing,
    SiloState,
    TrainProgress,
)
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc.convert.queries import (
    matrix_from_protos,
    space_from_proto,
    space_to_proto,
    vector_to_proto,
)
from silobridge.v1 import common_pb2, coordinator_pb2, silo_pb2


def _space_or_none(message: common_pb2.SpaceDescriptor) -> SpaceDescriptor | None:
    return space_from_proto(message) if message.space_id else None


# --- descriptions and listings --------------------------------------------------------------


def disclosure_to_proto(policy: DisclosurePolicy) -> common_pb2.DisclosurePolicy:
    return common_pb2.DisclosurePolicy(
        disclose_fields=list(policy.disclose_fields),
        accept_query_text=policy.accept_query_text,
        accept_spaces=list(policy.accept_spaces),
        max_k=policy.max_k,
        anchor_preferences=policy.anchor_preferences,
        traffic_pool=policy.traffic_pool,
        traffic_lifetime_s=policy.traffic_lifetime_s,
        traffic_max_share=policy.traffic_max_share,
        refine=policy.refine,
        local_models=list(policy.local_models),
    )


def disclosure_from_proto(message: common_pb2.DisclosurePolicy) -> DisclosurePolicy:
    return DisclosurePolicy(
        disclose_fields=tuple(message.disclose_fields),
        accept_query_text=message.accept_query_text,
        accept_spaces=tuple(message.accept_spaces),
        max_k=message.max_k,
        anchor_preferences=message.anchor_preferences,
        traffic_pool=message.traffic_pool,
        traffic_lifetime_s=message.traffic_lifetime_s,
        traffic_max_share=message.traffic_max_share,
        refine=message.refine,
        local_models=tuple(message.local_models),
    )


def description_to_proto(description: SiloDescription) -> silo_pb2.DescribeResponse:
    policy = description.policy
    return silo_pb2.DescribeResponse(
        silo=description.name,
        space=space_to_proto(description.space),
        document_count=description.document_count,
        max_k=description.max_k,
        policy=disclosure_to_proto(policy) if policy is not None else None,
        also_serves=[space_to_proto(space) for space in description.also_serves],
    )


def description_from_proto(message: silo_pb2.DescribeResponse) -> SiloDescription:
    return SiloDescription(
        name=message.silo,
        space=space_from_proto(message.space),
        document_count=message.document_count,
        max_k=message.max_k,
        policy=disclosure_from_proto(message.policy) if message.HasField("policy") else None,
        also_serves=tuple(space_from_proto(space) for space in message.also_serves),
    )


def silo_listing_to_proto(listing: SiloListing) -> coordinator_pb2.SiloInfo:
    return coordinator_pb2.SiloInfo(
        silo=listing.silo,
        endpoint=listing.endpoint,
        space=space_to_proto(listing.space) if listing.space is not None else None,
        healthy=listing.healthy,
        document_count=listing.document_count,
        org=listing.org,
        registered_unix=listing.registered_unix,
        message=listing.message,
        policy=disclosure_to_proto(listing.policy) if listing.policy is not None else None,
        also_serves=[space_to_proto(space) for space in listing.also_serves],
        denied_reason=listing.denied_reason,
    )


def silo_listing_from_proto(message: coordinator_pb2.SiloInfo) -> SiloListing:
    return SiloListing(
        silo=message.silo,
        endpoint=message.endpoint,
        org=message.org,
        space=_space_or_none(message.space),
        healthy=message.healthy,
        document_count=message.document_count,
        message=message.message,
        registered_unix=message.registered_unix,
        policy=disclosure_from_proto(message.policy) if message.HasField("policy") else None,
        also_serves=tuple(space_from_proto(space) for space in message.also_serves),
        denied_reason=message.denied_reason,
    )


def adapter_listing_to_proto(listing: AdapterListing) -> coordinator_pb2.AdapterInfo:
    return coordinator_pb2.AdapterInfo(
        adapter_id=listing.adapter_id,
        kind=listing.kind,
        source=space_to_proto(listing.source),
        target=space_to_proto(listing.target),
        anchor_set_sha256=listing.anchor_set_sha256,
        metrics=dict(listing.metrics),
        created_unix=listing.created_unix,
        anchor_set=listing.anchor_set,
        anchor_set_version=listing.version,
        stale=listing.stale,
        stale_reason=listing.stale_reason,
    )


def adapter_listing_from_proto(message: coordinator_pb2.AdapterInfo) -> AdapterListing:
    return AdapterListing(
        adapter_id=message.adapter_id,
        kind=message.kind,
        source=space_from_proto(message.source),
        target=space_from_proto(message.target),
        anchor_set=message.anchor_set,
        version=message.anchor_set_version,
        anchor_set_sha256=message.anchor_set_sha256,
        metrics=dict(message.metrics),
        created_unix=message.created_unix,
        stale=message.stale,
        stale_reason=message.stale_reason,
    )


def progress_to_proto(progress: TrainProgress) -> coordinator_pb2.TrainAdapterResponse:
    message = coordinator_pb2.TrainAdapterResponse(stage=progress.stage, message=progress.message)
    if progress.adapter is not None:
        message.adapter.CopyFrom(adapter_listing_to_proto(progress.adapter))
    return message


def progress_from_proto(message: coordinator_pb2.TrainAdapterResponse) -> TrainProgress:
    adapter = adapter_listing_from_proto(message.adapter) if message.HasField("adapter") else None
    return TrainProgress(stage=message.stage, message=message.message, adapter=adapter)


def anchor_chunk_to_proto(chunk: AnchorChunk) -> coordinator_pb2.GetAnchorSetResponse:
    return coordinator_pb2.GetAnchorSetResponse(
        name=chunk.name,
        version=chunk.version,
        sha256=chunk.sha256,
        texts=list(chunk.texts),
        offset=chunk.offset,
        total=chunk.total,
    )


def anchor_chunk_from_proto(message: coordinator_pb2.GetAnchorSetResponse) -> AnchorChunk:
    return AnchorChunk(
        name=message.name,
        version=message.version,
        sha256=message.sha256,
        texts=tuple(message.texts),
        offset=message.offset,
        total=message.total,
    )


def anchor_vectors_to_proto(chunk: AnchorVectors) -> coordinator_pb2.SubmitAnchorEmbeddingsRequest:
    return coordinator_pb2.SubmitAnchorEmbeddingsRequest(
        anchor_set=chunk.anchor_set,
        version=chunk.version,
        space=space_to_proto(chunk.space),
        offset=chunk.offset,
        vectors=[vector_to_proto(row) for row in chunk.vectors],
    )


def anchor_vectors_from_proto(
    message: coordinator_pb2.SubmitAnchorEmbeddingsRequest,
) -> AnchorVectors:
    return AnchorVectors(
        anchor_set=message.anchor_set,
        version=message.version,
        space=space_from_proto(message.space),
        offset=message.offset,
        vectors=matrix_from_protos(message.vectors, message.space.dimension),
    )


def adapter_files_to_proto(files: AdapterFiles) -> coordinator_pb2.GetAdapterResponse:
    return coordinator_pb2.GetAdapterResponse(
        manifest=files.manifest, weights=files.weights, signature=files.signature
    )


def adapter_files_from_proto(message: coordinator_pb2.GetAdapterResponse) -> AdapterFiles:
    return AdapterFiles(
        manifest=message.manifest, weights=message.weights, signature=message.signature
    )


# --- managing silos -------------------------------------------------------------------------

_ACTIONS = {
    coordinator_pb2.ManageSiloRequest.ACTION_DISABLE: SiloAction.DISABLE,
    coordinator_pb2.ManageSiloRequest.ACTION_ENABLE: SiloAction.ENABLE,
    coordinator_pb2.ManageSiloRequest.ACTION_REMOVE: SiloAction.REMOVE,
}


def manage_silo_to_proto(
    silo: str, action: SiloAction, reason: str
) -> coordinator_pb2.ManageSiloRequest:
    wire = next(code for code, known in _ACTIONS.items() if known is action)
    return coordinator_pb2.ManageSiloRequest(silo=silo, action=wire, reason=reason)


def manage_silo_from_proto(
    message: coordinator_pb2.ManageSiloRequest,
) -> tuple[str, SiloAction | None, str]:
    """The silo, the action (``None``: none the coordinator knows; refused once the caller is
    authorized, so a stranger learns nothing from it) and the reason."""
    return message.silo, _ACTIONS.get(message.action), message.reason


def silo_state_to_proto(state: SiloState) -> coordinator_pb2.ManageSiloResponse:
    return coordinator_pb2.ManageSiloResponse(
        silo=state.silo, state=state.state, reason=state.reason
    )


def silo_state_from_proto(message: coordinator_pb2.ManageSiloResponse) -> SiloState:
    return SiloState(message.silo, message.state, message.reason)
