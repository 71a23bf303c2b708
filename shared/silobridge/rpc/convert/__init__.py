"""All protobuf <-> domain conversion, in one place: protobuf lives only at the wire.

``queries`` (what travels with each query) and ``listings`` (what servers say about what they
hold); every name is importable from here, so callers write ``convert.hit_to_proto``.
"""

from __future__ import annotations

from silobridge.rpc.convert.listings import (
    adapter_files_from_proto as adapter_files_from_proto,
)
from silobridge.rpc.convert.listings import (
    adapter_files_to_proto as adapter_files_to_proto,
)
from silobridge.rpc.convert.listings import (
    adapter_listing_from_proto as adapter_listing_from_proto,
)
from silobridge.rpc.convert.listings import (
    adapter_listing_to_proto as adapter_listing_to_proto,
)
from silobridge.rpc.convert.listings import (
    anchor_chunk_from_proto as anchor_chunk_from_proto,
)
from silobridge.rpc.convert.listings import (
    anchor_chunk_to_proto as anchor_chunk_to_proto,
)
from silobridge.rpc.convert.listings import (
    anchor_vectors_from_proto as anchor_vectors_from_proto,
)
from silobridge.rpc.convert.listings import (
    anchor_vectors_to_proto as anchor_vectors_to_proto,
)
from silobridge.rpc.convert.listings import (
    description_from_proto as description_from_proto,
)
from silobridge.rpc.convert.listings import (
    description_to_proto as description_to_proto,
)
from silobridge.rpc.convert.listings import (
    disclosure_from_proto as disclosure_from_proto,
)
from silobridge.rpc.convert.listings import (
    disclosure_to_proto as disclosure_to_proto,
)
from silobridge.rpc.convert.listings import (
    progress_from_proto as progress_from_proto,
)
from silobridge.rpc.convert.listings import (
    progress_to_proto as progress_to_proto,
)
from silobridge.rpc.convert.listings import (
    silo_listing_from_proto as silo_listing_from_proto,
)
from silobridge.rpc.convert.listings import (
    silo_listing_to_proto as silo_listing_to_proto,
)
from silobridge.rpc.convert.queries import (
    answer_from_proto as answer_from_proto,
)
from silobridge.rpc.convert.queries import (
    answer_to_proto as answer_to_proto,
)
from silobridge.rpc.convert.queries import (
    federated_query_from_proto as federated_query_from_proto,
)
from silobridge.rpc.convert.queries import (
    federated_query_to_proto as federated_query_to_proto,
)
from silobridge.rpc.convert.queries import (
    hit_from_proto as hit_from_proto,
)
from silobridge.rpc.convert.queries import (
    hit_to_proto as hit_to_proto,
)
from silobridge.rpc.convert.queries import (
    matrix_from_protos as matrix_from_protos,
)
from silobridge.rpc.convert.queries import (
    signed_query_from_proto as signed_query_from_proto,
)
from silobridge.rpc.convert.queries import (
    signed_query_to_proto as signed_query_to_proto,
)
from silobridge.rpc.convert.queries import (
    silo_query_from_proto as silo_query_from_proto,
)
from silobridge.rpc.convert.queries import (
    silo_query_to_proto as silo_query_to_proto,
)
from silobridge.rpc.convert.queries import (
    space_from_proto as space_from_proto,
)
from silobridge.rpc.convert.queries import (
    space_to_proto as space_to_proto,
)
from silobridge.rpc.convert.queries import (
    status_from_proto as status_from_proto,
)
from silobridge.rpc.convert.queries import (
    status_to_proto as status_to_proto,
)
from silobridge.rpc.convert.queries import (
    vector_from_proto as vector_from_proto,
)
from silobridge.rpc.convert.queries import (
    vector_to_proto as vector_to_proto,
)
from silobridge.rpc.convert.queries import (
    wire_vector_from_proto as wire_vector_from_proto,
)
from silobridge.rpc.convert.queries import (
    wire_vector_to_proto as wire_vector_to_proto,
)
