"""Adapter artifacts: bit-exact round trips, signatures, fingerprints, and hostile files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.adapters import Adapter, FitConfig, fit
from silobridge.adapters.artifact import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    ArtifactCorrupt,
    LoadedAdapter,
    SpaceMismatch,
    load_adapter,
    save_adapter,
)
from silobridge.adapters.cli import adapter_app
from silobridge.adapters.signing import (
    SignatureInvalid,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
)
from silobridge.core.errors import ConfigError, InvalidArgument, NotFound, SiloBridgeError
from silobridge.core.spaces import SpaceDescriptor

ANCHORS = 200
SOURCE_DIM, TARGET_DIM = 32, 24
ANCHOR_SET = hashlib.sha256(b"python-docs-anchors-v1").hexdigest()
SOURCE = SpaceDescriptor("minilm", "minilm-l6", SOURCE_DIM, "1f2e3d4c5b6a7988")
TARGET = SpaceDescriptor("static", "static-64", TARGET_DIM, "a0b1c2d3e4f50617")
SAME_DIM_TARGET = SpaceDescriptor("minilm-next", "minilm-l3-onnx", SOURCE_DIM, "0f0e0d0c0b0a0908")


def _unit(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    unit: npt.NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def _anchor_pairs(
    target_dim: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    source = _unit(rng.standard_normal((ANCHORS, SOURCE_DIM)))
    mixing = rng.standard_normal((SOURCE_DIM, target_dim))
    target = _unit(source @ mixing + 0.05 * rng.standard_normal((ANCHORS, target_dim)))
    return source, target


@dataclasses.dataclass(frozen=True)
class Fitted:
    adapter: Adapter
    target: SpaceDescriptor


FIT_CONFIGS = {
    "identity": FitConfig(kind="identity"),
    "procrustes": FitConfig(kind="procrustes"),
    "affine": FitConfig(kind="affine"),
    "mlp": FitConfig(kind="mlp", mlp_hidden=32, mlp_epochs=3, mlp_batch=64),
    "local": FitConfig(kind="local", local_clusters=3),
}


@pytest.fixture(scope="module")
def fitted() -> dict[str, Fitted]:
    out: dict[str, Fitted] = {}
    for kind, config in FIT_CONFIGS.items():
        target = SAME_DIM_TARGET if kind == "identity" else TARGET
        source_rows, target_rows = _anchor_pairs(target.dimension, seed=7)
        out[kind] = Fitted(fit(source_rows, target_rows, config), target)
    return out


@dataclasses.dataclass(frozen=True)
class Keys:
    private_path: Path
    public_path: Path
    signing: Ed25519PrivateKey
    verify: Ed25519PublicKey


def _make_keys(directory: Path, name: str) -> Keys:
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / name
    public_path = generate_signing_key(private_path)
    return Keys(
        private_path, public_path, load_signing_key(private_path), load_verify_key(public_path)
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _make_keys(tmp_path_factory.mktemp("keys"), "coordinator.key")


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _make_keys(tmp_path_factory.mktemp("other-keys"), "impostor.key")


@pytest.fixture(scope="module")
def signed_artifact(
    tmp_path_factory: pytest.TempPathFactory, fitted: dict[str, Fitted], keys: Keys
) -> Path:
    """A signed procrustes artifact; tests copy it before changing anything."""
    directory = tmp_path_factory.mktemp("signed") / "procrustes"
    save_adapter(
        directory,
        fitted["procrustes"].adapter,
        source=SOURCE,
        target=TARGET,
        anchor_set_sha256=ANCHOR_SET,
        signing_key=keys.signing,
    )
    return directory


@pytest.fixture
def artifact_copy(signed_artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(signed_artifact, tmp_path / "artifact"))


@contextlib.contextmanager
def _fresh_copy(artifact: Path) -> Iterator[Path]:
    # Hypothesis runs many examples in one test call, so each example copies into its own dir.
    with tempfile.TemporaryDirectory() as name:
        yield Path(shutil.copytree(artifact, Path(name) / "artifact"))


def _rewrite_manifest_unsigned(directory: Path, **changes: object) -> None:
    """Edit manifest fields of an unsigned artifact (as an attacker without the key could)."""
    (directory / SIGNATURE_FILE).unlink(missing_ok=True)
    document = json.loads((directory / MANIFEST_FILE).read_bytes())
    document.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(document, sort_keys=True, indent=2))


def _probe_batch(dim: int) -> npt.NDArray[np.float32]:
    return _unit(np.random.default_rng(99).standard_normal((17, dim)))


# --- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FIT_CONFIGS))
def test_round_trip_is_bit_exact(
    kind: str, fitted: dict[str, Fitted], keys: Keys, tmp_path: Path
) -> None:
    original, target = fitted[kind].adapter, fitted[kind].target
    manifest = save_adapter(
        tmp_path / kind,
        original,
        source=SOURCE,
        target=target,
        anchor_set_sha256=ANCHOR_SET,
        signing_key=keys.signing,
    )
    loaded = load_adapter(
        tmp_path / kind, verify_key=keys.verify, expected_source=SOURCE, expected_target=target
    )

    assert loaded.verified
    assert loaded.manifest == manifest
    assert (manifest.source, manifest.target, manifest.anchor_set_sha256) == (
        SOURCE,
        target,
        ANCHOR_SET,
    )
    assert manifest.metrics == original.metrics
    before, after = original.tensors(), loaded.adapter.tensors()
    assert sorted(before) == sorted(after)
    for name, array in before.items():
        assert after[name].dtype == array.dtype, name
        assert after[name].shape == array.shape, name
        assert after[name].tobytes() == np.ascontiguousarray(array).tobytes(), name
    batch = _probe_batch(SOURCE_DIM)
    assert loaded.adapter.apply(batch).tobytes() == original.apply(batch).tobytes()
    assert loaded.adapter.apply_one(batch[3]).tobytes() == original.apply_one(batch[3]).tobytes()


def test_manifest_is_canonical_json_naming_both_spaces(signed_artifact: Path) -> None:
    raw = (signed_artifact / MANIFEST_FILE).read_bytes()
    document = json.loads(raw)
    assert raw == (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()
    assert document["format_version"] == 1
    assert document["kind"] == "procrustes"
    assert document["source"]["fingerprint"] == SOURCE.fingerprint
    assert document["target"]["model_id"] == TARGET.model_id
    weights = (signed_artifact / WEIGHTS_FILE).read_bytes()
    assert document["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert document["created_at"].endswith("Z")


def test_unsigned_artifact_loads_when_no_key_is_asked(
    fitted: dict[str, Fitted], tmp_path: Path
) -> None:
    save_adapter(
        tmp_path / "a",
        fitted["affine"].adapter,
        source=SOURCE,
        target=TARGET,
        anchor_set_sha256=ANCHOR_SET,
    )
    assert not (tmp_path / "a" / SIGNATURE_FILE).exists()
    loaded = load_adapter(tmp_path / "a", expected_source=SOURCE, expected_target=TARGET)
    assert isinstance(loaded, LoadedAdapter)
    assert not loaded.verified
    assert loaded.adapter.target_dim == TARGET_DIM


def test_saving_again_replaces_the_artifact_and_leaves_no_debris(
    fitted: dict[str, Fitted], keys: Keys, tmp_path: Path
) -> None:
    directory = tmp_path / "adapters" / "pair"
    for kind in ("procrustes", "affine"):
        save_adapter(
            directory,
            fitted[kind].adapter,
            source=SOURCE,
            target=TARGET,
            anchor_set_sha256=ANCHOR_SET,
            signing_key=keys.signing if kind == "procrustes" else None,
        )
    # The second save was unsigned: the first save's signature must not survive beside it.
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    assert load_adapter(directory).manifest.kind == "affine"
    assert [p.name for p in directory.parent.iterdir()] == ["pair"]


def test_refuses_to_replace_a_directory_that_is_not_an_artifact(
    fitted: dict[str, Fitted], tmp_path: Path
) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        save_adapter(
            precious,
            fitted["affine"].adapter,
            source=SOURCE,
            target=TARGET,
            anchor_set_sha256=ANCHOR_SET,
        )
    assert (precious / "notes.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["home"]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (SpaceDescriptor("x", "m", SOURCE_DIM + 1, "f" * 16), TARGET),
        (SOURCE, SpaceDescriptor("y", "m", TARGET_DIM - 1, "e" * 16)),
    ],
)
def test_save_refuses_spaces_of_the_wrong_dimension(
    source: SpaceDescriptor, target: SpaceDescriptor, fitted: dict[str, Fitted], tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match="dimension"):
        save_adapter(
            tmp_path / "a",
            fitted["procrustes"].adapter,
            source=source,
            target=target,
            anchor_set_sha256=ANCHOR_SET,
        )
    assert not (tmp_path / "a").exists()


def test_save_refuses_an_anchor_hash_that_is_not_sha256(
    fitted: dict[str, Fitted], tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match="anchor_set_sha256"):
        save_adapter(
            tmp_path / "a",
            fitted["affine"].adapter,
            source=SOURCE,
            target=TARGET,
            anchor_set_sha256="anchors-v1",
        )


# --- signatures ------------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    member=st.sampled_from([MANIFEST_FILE, WEIGHTS_FILE, SIGNATURE_FILE]),
    position=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_a_flipped_byte_anywhere_is_refused(
    member: str, position: float, mask: int, signed_artifact: Path, keys: Keys
) -> None:
    with _fresh_copy(signed_artifact) as directory:
        data = bytearray((directory / member).read_bytes())
        index = int(position * len(data))
        data[index] ^= mask
        (directory / member).write_bytes(bytes(data))
        with pytest.raises(SignatureInvalid, match="does not verify"):
            load_adapter(directory, verify_key=keys.verify)


@pytest.mark.parametrize("member", [MANIFEST_FILE, WEIGHTS_FILE])
def test_without_a_key_a_flipped_byte_is_still_refused(member: str, artifact_copy: Path) -> None:
    path = artifact_copy / member
    data = bytearray(path.read_bytes())
    # Inside the tensor data (the weights file's end) or the manifest's weights hash digits.
    index = len(data) - 5 if member == WEIGHTS_FILE else data.index(b'"weights_sha256"') + 20
    data[index] = ord("0") if data[index] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        load_adapter(artifact_copy)


def test_a_key_that_did_not_sign_is_refused(artifact_copy: Path, other_keys: Keys) -> None:
    with pytest.raises(SignatureInvalid, match="different key"):
        load_adapter(artifact_copy, verify_key=other_keys.verify)


def test_a_signature_moved_from_another_artifact_is_refused(
    artifact_copy: Path, fitted: dict[str, Fitted], keys: Keys, tmp_path: Path
) -> None:
    save_adapter(
        tmp_path / "affine",
        fitted["affine"].adapter,
        source=SOURCE,
        target=TARGET,
        anchor_set_sha256=ANCHOR_SET,
        signing_key=keys.signing,
    )
    shutil.copyfile(tmp_path / "affine" / SIGNATURE_FILE, artifact_copy / SIGNATURE_FILE)
    with pytest.raises(SignatureInvalid):
        load_adapter(artifact_copy, verify_key=keys.verify)


def test_a_missing_signature_is_refused_when_a_key_is_required(
    artifact_copy: Path, keys: Keys
) -> None:
    (artifact_copy / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureInvalid, match="unsigned"):
        load_adapter(artifact_copy, verify_key=keys.verify)
    assert not load_adapter(artifact_copy).verified


def test_a_missing_artifact_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no adapter artifact"):
        load_adapter(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / MANIFEST_FILE).write_text("{}")
    with pytest.raises(NotFound, match=WEIGHTS_FILE):
        load_adapter(tmp_path / "half")


# --- fingerprints ----------------------------------------------------------------------------


def test_a_mismatched_source_fingerprint_names_both(artifact_copy: Path, keys: Keys) -> None:
    upgraded = SpaceDescriptor("minilm", "minilm-l6-finetuned", SOURCE_DIM, "9999888877776666")
    with pytest.raises(SpaceMismatch) as caught:
        load_adapter(artifact_copy, verify_key=keys.verify, expected_source=upgraded)
    message = caught.value.message
    for fragment in ("source", upgraded.fingerprint, SOURCE.fingerprint, upgraded.model_id):
        assert fragment in message
    assert "target" not in message.split("fit these embedding spaces:")[1].split(".")[0]


def test_mismatched_source_and_target_are_both_reported(artifact_copy: Path) -> None:
    other_source = SpaceDescriptor("s", "other-source", SOURCE_DIM, "1111111111111111")
    other_target = SpaceDescriptor("t", "other-target", TARGET_DIM, "2222222222222222")
    with pytest.raises(SpaceMismatch) as caught:
        load_adapter(artifact_copy, expected_source=other_source, expected_target=other_target)
    message = caught.value.message
    for fragment in (
        other_source.fingerprint,
        SOURCE.fingerprint,
        other_target.fingerprint,
        TARGET.fingerprint,
        TARGET.model_id,
        "other-target",
    ):
        assert fragment in message


# --- hostile or foreign files ----------------------------------------------------------------


def test_an_unknown_kind_is_refused_without_importing_it(artifact_copy: Path) -> None:
    _rewrite_manifest_unsigned(artifact_copy, kind="os.system")
    with pytest.raises(InvalidArgument, match=r"os\.system"):
        load_adapter(artifact_copy)


def test_a_newer_format_version_is_refused(artifact_copy: Path) -> None:
    _rewrite_manifest_unsigned(artifact_copy, format_version=2)
    with pytest.raises(ArtifactCorrupt, match="format_version 2"):
        load_adapter(artifact_copy)


def test_manifest_dimensions_must_match_the_weights(artifact_copy: Path) -> None:
    document = json.loads((artifact_copy / MANIFEST_FILE).read_bytes())
    source = dict(document["source"], dimension=SOURCE_DIM + 8)
    _rewrite_manifest_unsigned(artifact_copy, source=source, source_dim=SOURCE_DIM + 8)
    with pytest.raises(SiloBridgeError):
        load_adapter(artifact_copy)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(manifest=st.binary(max_size=600))
def test_random_manifest_bytes_raise_only_domain_errors(
    manifest: bytes, signed_artifact: Path
) -> None:
    with _fresh_copy(signed_artifact) as directory:
        (directory / MANIFEST_FILE).write_bytes(manifest)
        with pytest.raises(SiloBridgeError):
            load_adapter(directory)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
MANIFEST_KEYS = [field.name for field in dataclasses.fields(AdapterManifest)]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(MANIFEST_KEYS), value=JSON_VALUES)
def test_a_manifest_field_of_any_json_value_raises_only_domain_errors(
    key: str, value: object, signed_artifact: Path
) -> None:
    with _fresh_copy(signed_artifact) as directory:
        _rewrite_manifest_unsigned(directory, **{key: value})
        # A value of the right type may load; anything else must be a domain error, not a crash.
        with contextlib.suppress(SiloBridgeError):
            load_adapter(directory)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(weights=st.binary(max_size=400))
def test_unsigned_weights_that_match_their_hash_but_are_garbage_are_refused(
    weights: bytes, signed_artifact: Path
) -> None:
    with _fresh_copy(signed_artifact) as directory:
        (directory / WEIGHTS_FILE).write_bytes(weights)
        _rewrite_manifest_unsigned(directory, weights_sha256=hashlib.sha256(weights).hexdigest())
        with pytest.raises(SiloBridgeError):
            load_adapter(directory)


# --- keys ------------------------------------------------------------------------------------


def test_key_files_are_private_and_never_overwritten(keys: Keys) -> None:
    assert stat.S_IMODE(keys.private_path.stat().st_mode) == 0o600
    assert keys.public_path.name == keys.private_path.name + ".pub"
    before = keys.private_path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_signing_key(keys.private_path)
    assert keys.private_path.read_bytes() == before


def test_key_loaders_refuse_the_wrong_file(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.pub"):
        load_signing_key(keys.public_path)
    with pytest.raises(ConfigError, match="public key"):
        load_verify_key(keys.private_path)
    with pytest.raises(ConfigError, match="keygen"):
        load_verify_key(tmp_path / "missing.pub")
    ec_key = tmp_path / "tls.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_signing_key(ec_key)


# --- command line ----------------------------------------------------------------------------


def test_cli_keygen_then_inspect_verifies_with_the_key(
    fitted: dict[str, Fitted], tmp_path: Path
) -> None:
    runner = CliRunner()
    key = tmp_path / "signing.key"
    made = runner.invoke(adapter_app, ["keygen", "--out", str(key)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    again = runner.invoke(adapter_app, ["keygen", "--out", str(key)])
    assert again.exit_code == 1
    assert again.stderr.startswith("error: ") and "refusing to overwrite" in again.stderr

    save_adapter(
        tmp_path / "art",
        fitted["procrustes"].adapter,
        source=SOURCE,
        target=TARGET,
        anchor_set_sha256=ANCHOR_SET,
        signing_key=load_signing_key(key),
    )
    shown = runner.invoke(adapter_app, ["inspect", str(tmp_path / "art"), "--key", f"{key}.pub"])
    assert shown.exit_code == 0, shown.output
    for fragment in ("procrustes", SOURCE.fingerprint, TARGET.fingerprint, ANCHOR_SET, "verified"):
        assert fragment in shown.output
    assert "NOT verified" not in shown.output

    unverified = runner.invoke(adapter_app, ["inspect", str(tmp_path / "art")])
    assert unverified.exit_code == 0, unverified.output
    assert "NOT verified" in unverified.output


def test_cli_inspect_with_the_wrong_key_fails(artifact_copy: Path, other_keys: Keys) -> None:
    result = CliRunner().invoke(
        adapter_app, ["inspect", str(artifact_copy), "--key", str(other_keys.public_path)]
    )
    assert result.exit_code == 1
    assert "error: adapter signature does not verify" in result.stderr
    assert "Traceback" not in result.output
