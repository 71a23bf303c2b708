"""Repository layout and protocol conventions the project promises (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import importlib
import tomllib
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
    for module in ("silobridge.core", "silobridge.silo_agent", "silobridge.coordinator"):
        importlib.import_module(module)
    assert not hasattr(silobridge, "__file__") or silobridge.__file__ is None
    locations = {Path(p).resolve() for p in silobridge.__path__ if Path(p).exists()}
    assert (REPO / "shared" / "silobridge").resolve() in locations


# Hand-written modules stay small enough to read in one sitting (STYLE.md, httpx).
MAX_MODULE_LINES = 400


def _hand_written_modules() -> list[Path]:
    modules = []
    for root in ROOTS:
        for path in sorted((REPO / root / "silobridge").rglob("*.py")):
            if "v1" not in path.relative_to(REPO / root).parts:
                modules.append(path)
    return modules


def test_hand_written_modules_stay_under_the_line_limit() -> None:
    modules = _hand_written_modules()
    assert len(modules) > 50
    too_long = {
        str(path.relative_to(REPO)): lines
        for path in modules
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them): {too_long}"


def test_every_package_is_listed_for_the_wheel() -> None:
    """A package missing from pyproject's list would be silently left out of the wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {"silobridge"}
    for root in ROOTS:
        for init in (REPO / root / "silobridge").rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(REPO / root).parts))
    found |= {"silobridge.v1"}
    assert listed == found, f"missing: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_demo_tooling_is_not_in_the_runtime_library() -> None:
    """The loopback launcher lives with the demo; the runtime never finds data beside itself."""
    for path in _hand_written_modules():
        text = path.read_text()
        assert "localnet" not in text, f"{path} refers to the demo launcher"
        assert "parents[" not in text, f"{path} finds files relative to its own location"


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
    assert silo == {
        "Describe",
        "Embed",
        "EmbedAnchors",
        "PreferAnchors",
        "Search",
        "SearchBatch",
        "SearchMany",
    }
    admin = {m.name for m in silo_pb2.DESCRIPTOR.services_by_name["SiloAdminService"].methods}
    assert admin == {"WriteDocuments", "DeleteDocuments", "PlanMigration", "ControlMigration"}
    coordinator = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"]
    assert {m.name for m in coordinator.methods} == {
        "RegisterSilo",
        "ListSilos",
        "GetAnchorSet",
        "SubmitAnchorEmbeddings",
        "TrainAdapter",
        "ListAdapters",
        "FederatedSearch",
        "FederatedSearchBatch",
        "GetAdapter",
        "ManageSilo",
        "RecordAuditHead",
        "ListAuditHeads",
    }


def test_the_architecture_map_names_every_package() -> None:
    """docs/ARCHITECTURE.md is the map of the code: a package it does not name is off the map."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = []
    for root in ROOTS:
        for init in (REPO / root / "silobridge").rglob("__init__.py"):
            name = init.parent.name
            if f"`{name}/`" not in text and f"silobridge/{name}/" not in text:
                missing.append(str(init.parent.relative_to(REPO)))
    assert not missing, f"docs/ARCHITECTURE.md does not mention: {sorted(missing)}"
