"""Repository layout and protocol conventions the project promises (DESIGN.md, Layout)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf.descriptor import FileDescriptor

import silobridge
from silobridge.v1 import common_pb2, coordinator_pb2, silo_pb2

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("shared", "silo_agent", "coordinator")


@pytest.mark.parametrize("root", ROOTS)
def test_no_root_makes_silobridge_a_regular_package(root: str) -> None:
    assert (REPO / root / "silobridge").is_dir()
    assert not (REPO / root / "silobridge" / "__init__.py").exists(), (
        f"{root}/silobridge/__init__.py would shadow the other roots (PEP 420 namespace)"
    )


def test_one_namespace_spans_the_three_roots() -> None:
    for module in ("silobridge.shared", "silobridge.silo_agent", "silobridge.coordinator"):
        importlib.import_module(module)
    assert not hasattr(silobridge, "__file__") or silobridge.__file__ is None
    locations = {Path(p).resolve() for p in silobridge.__path__ if Path(p).exists()}
    assert (REPO / "shared" / "silobridge").resolve() in locations


PROTO_FILES: tuple[FileDescriptor, ...] = (
    common_pb2.DESCRIPTOR,
    silo_pb2.DESCRIPTOR,
    coordinator_pb2.DESCRIPTOR,
)


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda f: f.name)
def test_enum_zero_values_are_unspecified(proto: FileDescriptor) -> None:
    for enum in proto.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), f"{enum.name}: zero value is {zero}"


@pytest.mark.parametrize("proto", PROTO_FILES[1:], ids=lambda f: f.name)
def test_each_rpc_has_its_own_request_and_response(proto: FileDescriptor) -> None:
    assert proto.package == "silobridge.v1"
    for service in proto.services_by_name.values():
        seen: set[str] = set()
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
            seen.update({method.input_type.name, method.output_type.name})
        assert len(seen) == 2 * len(service.methods)


def test_declared_services_have_the_promised_rpcs() -> None:
    silo = {m.name for m in silo_pb2.DESCRIPTOR.services_by_name["SiloService"].methods}
    assert silo == {"Describe", "Embed", "EmbedAnchors", "Search"}
    coordinator = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"]
    assert {m.name for m in coordinator.methods} == {
        "RegisterSilo",
        "ListSilos",
        "GetAnchorSet",
        "SubmitAnchorEmbeddings",
        "TrainAdapter",
        "ListAdapters",
        "FederatedSearch",
        "GetAdapter",
    }
