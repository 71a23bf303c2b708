"""Bounded fuzzing of every file a user hands the CLI, read in process by its own loader.

Corpora (JSONL, CSV, gzipped), anchor files, ``silo.toml``, ``coordinator.toml``,
``client.toml``, certificate signing requests, adapter artifacts, denylists and audit logs are
each fed random bytes and mutations of a valid file (bit flips, cuts, insertions, duplicated
lines, and for configs any TOML value at any key). A loader must either accept the file or
refuse it with a domain error (``SiloBridgeError``): never a bare ``ValueError``, ``KeyError``,
``UnicodeDecodeError``, ``IndexError``... which the CLI would print as a traceback. And reading a
file writes nothing beside it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import ipaddress
import json
import math
import shutil
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.artifact import MANIFEST_FILE, WEIGHTS_FILE, load_adapter, save_adapter
from silobridge.audit.events import audit_event
from silobridge.audit.log import AuditLog
from silobridge.audit.verify import verify_log
from silobridge.client.config import load_client_config
from silobridge.coordinator.anchors.files import read_anchor_file
from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.errors import SiloBridgeError
from silobridge.core.spaces import SpaceDescriptor
from silobridge.security.denylist import Denylist
from silobridge.security.identity import PeerIdentity
from silobridge.security.pki.approve import approve_request, describe_request
from silobridge.security.pki.ca import request_certificate
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.ingest import read_documents

from .conftest import CONSORTIUM, Pki, write_coordinator_config, write_silo_config

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- mutations ------------------------------------------------------------------------------

_OPERATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**20), st.integers(0, 2**20)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=12)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 2**20),
        st.sampled_from(
            [
                b"\n",
                b"\r\n",
                b"\x00",
                b"\xff\xfe",
                b"\xef\xbb\xbf",
                b'"',
                b",",
                b"{",
                b"]",
                b"=",
                b"\\u0000",
                b"\\ud800",
                b"\xe2\x80\x8b",
                b"nan",
                b"1e999",
            ]
        ),
    ),
    st.tuples(st.just("duplicate-line"), st.integers(0, 2**20), st.just(b"")),
    st.tuples(st.just("drop-line"), st.integers(0, 2**20), st.just(b"")),
)


def _apply(data: bytes, operation: tuple[str, int, Any]) -> bytes:
    kind, position, argument = operation
    at = position % (len(data) + 1)
    if kind == "flip" and data:
        at %= len(data)
        return data[:at] + bytes([data[at] ^ argument]) + data[at + 1 :]
    if kind == "cut":
        end = at + argument % (len(data) - at + 1)
        return data[:at] + data[end:]
    if kind == "insert":
        inserted: bytes = argument
        return data[:at] + inserted + data[at:]
    lines = data.split(b"\n")
    index = position % len(lines)
    if kind == "duplicate-line":
        return b"\n".join([*lines[: index + 1], lines[index], *lines[index + 1 :]])
    if kind == "drop-line" and len(lines) > 1:
        return b"\n".join(lines[:index] + lines[index + 1 :])
    return data


def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """``original`` with a few random edits, or random bytes in its place."""
    edits = st.lists(_OPERATIONS, min_size=1, max_size=4).map(
        lambda operations: _fold(original, operations)
    )
    return st.one_of(edits, edits, st.binary(max_size=300), st.just(b""))


def _fold(data: bytes, operations: list[tuple[str, int, Any]]) -> bytes:
    for operation in operations:
        data = _apply(data, operation)
    return data


def _gzipped(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Gzip streams of the data, and cut or damaged ones."""
    whole = data.map(gzip.compress)
    return st.one_of(whole, st.tuples(whole, st.lists(_OPERATIONS, max_size=2)).map(
        lambda pair: _fold(*pair)
    ))  # fmt: skip


@contextmanager
def _folder() -> Iterator[Path]:
    # Hypothesis runs many examples per test call, so each gets its own directory.
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its contents (None for directories)."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def only_domain_errors(load: Callable[[], object], root: Path) -> object | None:
    """Call ``load``: its result, or None when it refused with a domain error. Anything else
    fails the test, and so does any change to the files under ``root``."""
    before = _tree(root)
    try:
        result: object | None = load()
    except SiloBridgeError:
        result = None
    assert _tree(root) == before, "reading the file changed the files around it"
    return result


# --- corpora --------------------------------------------------------------------------------

JSONL_CORPUS = (
    b'{"id": "Gen.1.1", "text": "In the beginning", "metadata": {"book": "Genesis"}}\n'
    b'{"id": 2, "text": "And the earth was without form"}\n'
    b'{"id": "x\\u200b", "text": "\\u00e9\\u4e2d", "metadata": {}}\n'
)
CSV_CORPUS = (
    b'id,text,book\nGen.1.1,"In the beginning, God",Genesis\n'
    b'Gen.1.2,"And the earth\nwas void",Genesis\n"x""y",\xc3\xa9,\n'
)


def _read_corpus(path: Path) -> object:
    return list(read_documents(path))


@FUZZ
@given(suffix=st.sampled_from([".jsonl", ".ndjson"]), data=mutated(JSONL_CORPUS))
def test_jsonl_corpora_are_read_or_refused_with_a_domain_error(suffix: str, data: bytes) -> None:
    with _folder() as root:
        path = root / f"corpus{suffix}"
        path.write_bytes(data)
        only_domain_errors(lambda: _read_corpus(path), root)


@FUZZ
@given(data=mutated(CSV_CORPUS))
def test_csv_corpora_are_read_or_refused_with_a_domain_error(data: bytes) -> None:
    with _folder() as root:
        path = root / "corpus.csv"
        path.write_bytes(data)
        only_domain_errors(lambda: _read_corpus(path), root)


@FUZZ
@given(
    suffix=st.sampled_from([".jsonl.gz", ".csv.gz"]),
    data=_gzipped(mutated(JSONL_CORPUS) | mutated(CSV_CORPUS)) | st.binary(max_size=100),
)
def test_gzipped_corpora_are_read_or_refused_with_a_domain_error(suffix: str, data: bytes) -> None:
    with _folder() as root:
        path = root / f"corpus{suffix}"
        path.write_bytes(data)
        only_domain_errors(lambda: _read_corpus(path), root)


# --- anchor files ---------------------------------------------------------------------------

ANCHOR_TXT = b"the public anchor\nanother anchor text\n\n  spaced  \n"
ANCHOR_JSONL = b'"a json string"\n{"text": "an object"}\n{"text": "\\u00e9"}\n'


@FUZZ
@given(
    name_and_data=st.one_of(
        st.tuples(st.just("anchors.txt"), mutated(ANCHOR_TXT)),
        st.tuples(st.just("anchors.jsonl"), mutated(ANCHOR_JSONL)),
        st.tuples(st.just("anchors.txt.gz"), _gzipped(mutated(ANCHOR_TXT))),
        st.tuples(st.just("anchors.jsonl.gz"), _gzipped(mutated(ANCHOR_JSONL))),
        st.tuples(st.just("anchors.jsonl.gz"), st.binary(max_size=60)),
    )
)
def test_anchor_files_are_read_or_refused_with_a_domain_error(
    name_and_data: tuple[str, bytes],
) -> None:
    name, data = name_and_data
    with _folder() as root:
        path = root / name
        path.write_bytes(data)
        texts = only_domain_errors(lambda: read_anchor_file(path), root)
        if texts is not None:
            assert isinstance(texts, list) and all(isinstance(t, str) and t for t in texts)


# --- configs --------------------------------------------------------------------------------

TOML_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "*", "127.0.0.1:0", "0.0.0.0:99999", "[::1]:1", "../..", "/", "x" * 300]),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1]),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.dates(),
)
TOML_VALUES: st.SearchStrategy[Any] = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _toml_key(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:  # noqa: PLR0911 - one return per TOML type
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise AssertionError(f"no TOML for {value!r}")


def _toml(document: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, table in document.items():
        if not isinstance(table, dict):
            lines.insert(0, f"{_toml_key(section)} = {_toml_value(table)}")
            continue
        lines.append(f"[{_toml_key(section)}]")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


def _keys(document: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(section, key) of every key, and (section, None) for the sections themselves."""
    found: list[tuple[str, str | None]] = []
    for section, table in document.items():
        found.append((section, None))
        if isinstance(table, dict):
            found.extend((section, key) for key in table)
    return found


def config_mutations(valid: str) -> st.SearchStrategy[bytes]:
    """A valid config with one key set to any TOML value, a key or section removed, an unknown
    key added, or its bytes mutated."""
    document = tomllib.loads(valid)
    keys = _keys(document)

    def rewritten(choice: tuple[tuple[str, str | None], str, Any]) -> bytes:
        (section, key), action, value = choice
        changed = tomllib.loads(valid)  # a fresh copy per example
        table = changed.get(section)
        if action == "set":
            if key is None or not isinstance(table, dict):
                changed[section] = value
            else:
                table[key] = value
        elif action == "remove":
            if key is None or not isinstance(table, dict):
                changed.pop(section, None)
            else:
                table.pop(key, None)
        elif isinstance(table, dict):
            table[f"unknown_{len(table)}"] = value
        return _toml(changed).encode("utf-8", "surrogatepass")

    structured = st.tuples(
        st.sampled_from(keys), st.sampled_from(["set", "set", "remove", "add"]), TOML_VALUES
    ).map(rewritten)
    return st.one_of(structured, structured, structured, mutated(valid.encode()))


@pytest.fixture(scope="module")
def configs(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Valid config texts, their paths absolute (each example writes them to its own folder)."""
    root = tmp_path_factory.mktemp("fuzz-configs")
    silo = write_silo_config(
        root / "silo",
        pki.silo,
        model="static-64",
        extra='admin = ["org:bible/client"]\n[coordinator]\nendpoint = "127.0.0.1:7443"\n',
    )
    coordinator = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f'[policy]\nlist = ["org:bible/client"]\n[policy.query]\n"*" = ["spiffe://{CONSORTIUM}/*"]\n',
    )
    tls = pki.home_client
    client = f"""
[client]
coordinator = "127.0.0.1:7443"
home_silo = "127.0.0.1:7444"
home_silo_name = "kjv"
timeout_seconds = 5.0
[tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"
"""
    texts = {"silo.toml": silo.read_text(), "coordinator.toml": coordinator.read_text()}
    texts["client.toml"] = client
    for name, text in texts.items():
        # The fixture's own configs must load: the mutations start from a valid file.
        with _folder() as folder:
            (folder / name).write_text(text)
            LOADERS[name](folder / name)
    return texts


LOADERS: dict[str, Callable[[Path], object]] = {
    "silo.toml": load_silo_config,
    "coordinator.toml": load_coordinator_config,
    "client.toml": load_client_config,
}


def _fuzz_config(name: str, valid: str) -> None:
    @FUZZ
    @given(data=config_mutations(valid))
    # Found by this test: tomllib's UnicodeDecodeError escaped load_toml as a traceback.
    @example(data=b"\x80")
    def check(data: bytes) -> None:
        with _folder() as root:
            path = root / name
            path.write_bytes(data)
            only_domain_errors(lambda: LOADERS[name](path), root)

    check()


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_configs_load_or_are_refused_with_a_domain_error(
    name: str, configs: dict[str, str]
) -> None:
    _fuzz_config(name, configs[name])


# --- certificate signing requests -----------------------------------------------------------


@pytest.fixture(scope="module")
def valid_csr(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    request = request_certificate(
        tmp_path_factory.mktemp("fuzz-csr"),
        consortium=CONSORTIUM,
        role="client",
        name="carol",
        org="bible",
    )
    return request.csr.read_bytes()


_EC_KEY = ec.generate_private_key(ec.SECP256R1())
_OTHER_KEYS: list[Any] = [
    ec.generate_private_key(ec.SECP384R1()),
    rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ed25519.Ed25519PrivateKey.generate(),
]

SAN_NAMES: st.SearchStrategy[tuple[Callable[[Any], x509.GeneralName], Any]] = st.one_of(
    st.tuples(st.just(x509.UniformResourceIdentifier), st.text(max_size=40)),
    st.tuples(
        st.just(x509.UniformResourceIdentifier),
        st.builds(
            lambda c, r, n: f"spiffe://{c}/{r}/{n}",
            st.sampled_from([CONSORTIUM, "other", "", "TestNet"]),
            st.sampled_from(["client", "silo", "coordinator", "admin", "", "client/x"]),
            st.text(max_size=12),
        ),
    ),
    st.tuples(st.just(x509.DNSName), st.text(max_size=30)),
    st.tuples(
        st.just(x509.IPAddress),
        st.sampled_from([ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]),
    ),
    st.tuples(st.just(x509.RFC822Name), st.text(max_size=20)),
)


def _general_names(
    names: list[tuple[Callable[[Any], x509.GeneralName], Any]],
) -> list[x509.GeneralName]:
    built = []
    for kind, value in names:
        try:
            built.append(kind(value))
        except ValueError:  # the library itself refuses it (non-ASCII): leave it out
            continue
    return built


def _built_csr(
    key_index: int,
    common_name: str,
    org: str | None,
    san: list[tuple[Callable[[Any], x509.GeneralName], Any]],
) -> bytes:
    """A CSR with any subject and SANs, signed by any kind of key."""
    names = _general_names(san)
    key = _EC_KEY if key_index == 0 else _OTHER_KEYS[key_index - 1]
    attributes = []
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if org is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    try:
        csr = builder.sign(key, algorithm)
    except ValueError:  # the library refuses such a subject (e.g. an empty org): send garbage
        return b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"
    return csr.public_bytes(serialization.Encoding.PEM)


BUILT_CSRS = st.builds(
    _built_csr,
    st.integers(0, len(_OTHER_KEYS)),
    st.text(min_size=0, max_size=20).filter(lambda s: len(s) <= 64),
    st.none() | st.text(min_size=1, max_size=70),
    st.lists(SAN_NAMES, max_size=3),
)


def _one_character_changed(csr_pem: bytes, fails: Callable[[bytes], bool]) -> bytes:
    """``csr_pem`` with the first single-character change of its body for which ``fails``."""
    lines = csr_pem.split(b"\n")
    for line_index in range(1, len(lines) - 2):
        for column in range(len(lines[line_index])):
            for replacement in b"ABg/":
                line = bytearray(lines[line_index])
                line[column] = replacement
                candidate = b"\n".join([*lines[:line_index], bytes(line), *lines[line_index + 1 :]])
                if candidate != csr_pem and fails(candidate):
                    return candidate
    raise AssertionError("no single-character change of the request fails that way")


def _only_the_key_is_damaged(candidate: bytes) -> bool:
    # The key is read lazily: the request parses, reading its key fails.
    try:
        csr = x509.load_pem_x509_csr(candidate)
    except Exception:
        return False
    try:
        csr.public_key()
    except Exception:
        return True
    return False


def _bad_version(candidate: bytes) -> bool:
    try:
        x509.load_pem_x509_csr(candidate)
    except x509.InvalidVersion:
        return True
    except Exception:
        return False
    return False


def _approve_and_describe(pki: Pki, csr: bytes) -> object:
    summary = describe_request(pki.ca, csr)
    certificate = approve_request(pki.ca, csr)
    assert certificate.startswith(b"-----BEGIN CERTIFICATE-----")
    return summary


def test_certificate_requests_are_signed_or_refused_with_a_domain_error(
    pki: Pki, valid_csr: bytes
) -> None:
    @FUZZ
    @given(csr=st.one_of(mutated(valid_csr), BUILT_CSRS))
    # Found by this test: a damaged public key raised cryptography's ValueError("Invalid key"),
    # and a version field other than 1 its InvalidVersion ("4 is not a valid CSR version").
    @example(csr=_one_character_changed(valid_csr, _only_the_key_is_damaged))
    @example(csr=_one_character_changed(valid_csr, _bad_version))
    def check(csr: bytes) -> None:
        with _folder() as root:
            only_domain_errors(lambda: _approve_and_describe(pki, csr), root)

    check()


# --- adapter artifacts ----------------------------------------------------------------------

SOURCE = SpaceDescriptor("fuzz-a", "static-64", 16, "00112233445566778899aabbccddeeff")
TARGET = SpaceDescriptor("fuzz-b", "minilm-l6", 12, "ffeeddccbbaa99887766554433221100")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One unsigned artifact of each kind whose weights are not a single matrix."""
    root = tmp_path_factory.mktemp("fuzz-adapters")
    rng = np.random.default_rng(3)
    source = rng.standard_normal((120, SOURCE.dimension)).astype(np.float32)
    target = (source @ rng.standard_normal((SOURCE.dimension, TARGET.dimension))).astype(np.float32)
    configs = {
        "affine": FitConfig(kind="affine"),
        "mlp": FitConfig(kind="mlp", mlp_hidden=8, mlp_epochs=2, mlp_batch=32),
        "local": FitConfig(kind="local", local_clusters=2),
    }
    made = {}
    for kind, config in configs.items():
        directory = root / kind
        save_adapter(
            directory,
            fit(source, target, config),
            source=SOURCE,
            target=TARGET,
            anchor_set_sha256=hashlib.sha256(b"fuzz").hexdigest(),
        )
        made[kind] = directory
    return made


def _rehashed(manifest: bytes, weights: bytes) -> bytes:
    """The manifest with its weights hash set to ``weights``' (so loading reaches the tensors)."""
    try:
        document = json.loads(manifest)
    except ValueError:
        return manifest
    if isinstance(document, dict):
        document["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        return json.dumps(document).encode()
    return manifest


def _replace_json_value(document: Any, path: list[int], value: Any) -> Any:
    """``document`` with the value found by following ``path`` (indices into the keys or items
    met on the way) replaced by ``value``."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    if isinstance(document, dict):
        key = sorted(document)[path[0] % len(document)]
        return {**document, key: _replace_json_value(document[key], path[1:], value)}
    index = path[0] % len(document)
    return [
        *document[:index],
        _replace_json_value(document[index], path[1:], value),
        *document[index + 1 :],
    ]


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["float32", "F32", "<f4", "mlp", "local", ""]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=5,
)


@pytest.mark.parametrize("kind", ["affine", "mlp", "local"])
def test_adapter_artifacts_load_or_are_refused_with_a_domain_error(
    kind: str, artifacts: dict[str, Path]
) -> None:
    original = artifacts[kind]
    manifest = (original / MANIFEST_FILE).read_bytes()
    weights = (original / WEIGHTS_FILE).read_bytes()
    manifest_document = json.loads(manifest)

    @FUZZ
    @given(
        change=st.one_of(
            # Weights mutated (safetensors header and tensors), manifest hash kept in step.
            mutated(weights).map(lambda w: (_rehashed(manifest, w), w)),
            # Any JSON value anywhere in the manifest.
            st.tuples(st.lists(st.integers(0, 50), max_size=4), JSON_VALUES).map(
                lambda pv: (
                    json.dumps(_replace_json_value(manifest_document, *pv)).encode(),
                    weights,
                )
            ),
            mutated(manifest).map(lambda m: (m, weights)),
        ),
        expect=st.booleans(),
    )
    def check(change: tuple[bytes, bytes], expect: bool) -> None:
        new_manifest, new_weights = change
        with _folder() as root:
            directory = Path(shutil.copytree(original, root / "artifact"))
            (directory / MANIFEST_FILE).write_bytes(new_manifest)
            (directory / WEIGHTS_FILE).write_bytes(new_weights)
            source, target = (SOURCE, TARGET) if expect else (None, None)
            loaded = only_domain_errors(
                lambda: load_adapter(directory, expected_source=source, expected_target=target),
                root,
            )
            if loaded is not None:
                # Whatever loaded must translate a query of its source space without failing.
                query = np.ones(SOURCE.dimension, dtype=np.float32) / math.sqrt(SOURCE.dimension)
                adapter = loaded.adapter  # type: ignore[attr-defined]
                only_domain_errors(lambda: adapter.apply(query[None, :]), root)

    if kind == "local":
        # Found by this test: temperature 0 divided by zero in the gate (nan translations).
        params = {**manifest_document["params"], "temperature": 0}
        zero = json.dumps({**manifest_document, "params": params}).encode()
        check = example(change=(zero, weights), expect=False)(check)
    check()


# --- denylists ------------------------------------------------------------------------------

DENYLIST = (
    b"# revoked\n0x1f2e3d\n"
    b"sha256:" + hashlib.sha256(b"x").hexdigest().encode() + b"\n"
    b"AB:CD:EF  # trailing comment\n\n"
)


@FUZZ
@given(data=mutated(DENYLIST))
def test_denylist_files_load_or_are_refused_with_a_domain_error(data: bytes) -> None:
    with _folder() as root:
        path = root / "denylist.txt"
        path.write_bytes(data)
        denylist = only_domain_errors(lambda: Denylist(path), root)
        if isinstance(denylist, Denylist):
            someone = PeerIdentity(
                spiffe_id=f"spiffe://{CONSORTIUM}/client/x",
                consortium=CONSORTIUM,
                role="client",
                name="x",
                org="o",
            )
            only_domain_errors(lambda: denylist.check(someone), root)


# --- audit logs -----------------------------------------------------------------------------

AUDIT_KEY = ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real log: a few events with a checkpoint every 3 lines, closed (so its sidecar exists)."""
    path = tmp_path_factory.mktemp("fuzz-audit") / "audit.log"
    with AuditLog.open(path, AUDIT_KEY, checkpoint_every=3, checkpoint_seconds=math.inf) as log:
        for number in range(7):
            caller = PeerIdentity(
                spiffe_id=f"spiffe://{CONSORTIUM}/client/c{number}",
                consortium=CONSORTIUM,
                role="client",
                name=f"c{number}",
                org="bible",
            )
            log.append(audit_event(who=caller, rpc="Search", allowed=number % 2 == 0))
    return path


def _copy_log(original: Path, root: Path, data: bytes) -> Path:
    for item in original.parent.iterdir():
        shutil.copy2(item, root / item.name)
    path = root / original.name
    path.write_bytes(data)
    return path


def test_mutated_audit_logs_verify_or_are_refused_with_a_domain_error(audit_log: Path) -> None:
    original = audit_log.read_bytes()
    public = AUDIT_KEY.public_key()

    @FUZZ
    @given(data=mutated(original), with_key=st.booleans(), max_tail=st.sampled_from([None, 0, 3]))
    def check(data: bytes, with_key: bool, max_tail: int | None) -> None:
        with _folder() as root:
            path = _copy_log(audit_log, root, data)
            only_domain_errors(
                lambda: verify_log(path, public if with_key else None, max_tail=max_tail), root
            )

    check()


def test_mutated_audit_logs_reopen_or_are_refused_with_a_domain_error(audit_log: Path) -> None:
    """A server restarting on a damaged log either continues it or refuses to start cleanly."""
    original = audit_log.read_bytes()

    @FUZZ
    @given(data=mutated(original))
    def check(data: bytes) -> None:
        with _folder() as root:
            path = _copy_log(audit_log, root, data)
            try:
                log = AuditLog.open(path, AUDIT_KEY, checkpoint_seconds=math.inf)
            except SiloBridgeError:
                return
            log.close()

    check()
