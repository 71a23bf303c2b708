"""Data-boundary check: find recorded wire messages that carry what a silo must keep to itself.

``check_boundary`` is pure (no gRPC): it reads the lines ``silobridge.audit.wire`` wrote and
lists every message that carried a document's text, a document's vector or a metadata field the
silo's policy does not disclose.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument

# A vector this close to a stored document vector is that document's vector (float noise aside).
DOCUMENT_VECTOR_COSINE = 0.999
# Texts at least this long are looked for inside longer strings; shorter ones only as a whole
# value, and texts under MIN_EXACT_CHARS not at all (they are ordinary values, like "Amen.").
MIN_SUBSTRING_CHARS = 20
MIN_EXACT_CHARS = 8
# A string this long found inside a document's text is a fragment of it (a "snippet").
MIN_FRAGMENT_CHARS = 40
# The silo agent records as "silo-<name>" (the coordinator as "coordinator-<name>").
SILO_SERVER_PREFIX = "silo-"
_FLOAT32 = (1, "DTYPE_FLOAT32")
_VECTOR_KEYS = frozenset({"dtype", "dim", "data"})
_HIT_KEYS = frozenset({"doc_id", "score", "fields"})


class _Walker:
    """Collects a record's strings, vectors and the silo's own hit fields, each with its path."""

    def __init__(self, silo: str, disclosed: Collection[str]) -> None:
        self.silo = silo
        self.disclosed = disclosed
        self.strings: list[tuple[str, str, bool]] = []  # (path, value, in a disclosed field)
        self.vectors: list[tuple[str, Mapping[str, Any]]] = []
        self.fields: list[tuple[str, str, str]] = []  # (path, doc id, field key)

    def walk(self, node: object, path: str, own: bool) -> None:
        """``own``: hits under ``path`` are the silo's (its own server, or a merged hit of it)."""
        if isinstance(node, str):
            self.strings.append((path, node, False))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                self.walk(item, f"{path}[{index}]", own)
        elif isinstance(node, dict):
            self._walk_dict(node, path, own)

    def _walk_dict(self, node: dict[str, Any], path: str, own: bool) -> None:
        if "data" in node and set(node) <= _VECTOR_KEYS:  # a common.proto Vector
            self.vectors.append((path, node))
            return
        if isinstance(node.get("silo"), str) and isinstance(node.get("hit"), dict):
            # A merged hit names its silo: only that silo's hits are held to its policy.
            own = node["silo"] == self.silo
        rest = dict(node)
        if isinstance(node.get("fields"), dict) and set(node) <= _HIT_KEYS:  # a common.proto Hit
            for key, value in rest.pop("fields").items():
                where = f"{path}.fields.{key}"
                if own:
                    self.fields.append((where, str(node.get("doc_id", "")), str(key)))
                self.strings.append((where, str(key), False))
                self.strings.append((where, str(value), own and key in self.disclosed))
        for key, value in rest.items():
            self.strings.append((f"{path}.{key}", str(key), False))
            self.walk(value, f"{path}.{key}" if path else str(key), own)


def _decode_vector(node: Mapping[str, Any]) -> npt.NDArray[np.float32] | str:
    """The vector, or why it cannot be read (then the checker cannot vouch for it)."""
    dtype = node.get("dtype", 0)
    if dtype not in _FLOAT32:
        return f"dtype {dtype!r} is not float32"
    try:
        dim = int(node.get("dim", 0))
        data = base64.b64decode(str(node["data"]), validate=True)
    except (ValueError, TypeError, OverflowError, binascii.Error) as error:
        return f"undecodable ({error})"
    if len(data) != 4 * dim:
        return f"{len(data)} bytes for dim={dim}"
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


class _Corpus:
    """A silo's texts and vectors, indexed for the checks below."""

    def __init__(self, texts: Mapping[str, str], vectors: npt.ArrayLike | None) -> None:
        cleaned = {doc_id: text.strip() for doc_id, text in texts.items()}
        self.exact = {t: d for d, t in cleaned.items() if len(t) >= MIN_EXACT_CHARS}
        self.long = [(d, t) for d, t in cleaned.items() if len(t) >= MIN_SUBSTRING_CHARS]
        # One string to search fragments in; NUL never occurs in text, so no match spans two.
        self.joined = "\x00".join(t for _, t in self.long)
        self._seen: dict[tuple[str, bool], str | None] = {}
        self.vectors: npt.NDArray[np.float32] | None = None
        if vectors is not None:
            matrix = np.asarray(vectors, dtype=np.float32)
            if matrix.ndim != 2:
                raise InvalidArgument(
                    f"corpus_vectors must be (documents, dim), got {matrix.shape}"
                )
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            self.vectors = matrix / np.maximum(norms, 1e-12)

    def text_leak(self, value: str, fragment_allowed: bool) -> str | None:
        # Replies repeat the same strings (space ids, fingerprints, field values): scan each once.
        key = (value, fragment_allowed)
        if key not in self._seen:
            self._seen[key] = self._text_leak(value, fragment_allowed)
        return self._seen[key]

    def _text_leak(self, value: str, fragment_allowed: bool) -> str | None:
        stripped = value.strip()
        if stripped in self.exact:
            return f"the text of document {self.exact[stripped]!r}"
        if len(stripped) >= MIN_SUBSTRING_CHARS:
            for doc_id, text in self.long:
                if text in value:
                    return f"the text of document {doc_id!r}"
        if not fragment_allowed and len(stripped) >= MIN_FRAGMENT_CHARS and stripped in self.joined:
            return "a fragment of a document's text"
        return None


def check_boundary(
    records: Iterable[Mapping[str, Any]],
    *,
    silo: str,
    corpus_texts: Mapping[str, str],
    corpus_vectors: npt.ArrayLike | None,
    disclosed: Collection[str],
    all_metadata_keys: Collection[str],
) -> list[str]:
    """Every violation of ``silo``'s boundary in recorded messages, one line each ([] if none).

    Records are ``silobridge.audit.wire`` lines, of the silo's own server (named ``silo`` or
    ``silo-<silo>``, as the silo agent names its recorder) or of others (a coordinator relays
    the silo's hits as merged hits naming ``silo``). A violation is a string holding a
    document's text (or a fragment of 40+ characters outside a disclosed field), a vector
    within cosine 0.999 of a stored document vector, a vector that cannot be decoded, or a
    field of the silo's own hits outside ``disclosed``. Anchor vectors and a caller's own query
    vectors leave a silo legitimately; only a match with a document vector is reported.
    ``corpus_vectors`` None skips the vector check.
    """
    corpus = _Corpus(corpus_texts, corpus_vectors)
    own_servers = {silo, f"{SILO_SERVER_PREFIX}{silo}"}
    violations: list[str] = []
    vectors: list[tuple[str, npt.NDArray[np.float32]]] = []
    for number, record in enumerate(records, start=1):
        where = f"record {number} ({record.get('server')} {record.get('rpc')} -> " + (
            f"{record.get('peer') or 'anonymous'})"
        )
        message = record.get("message")
        if message is None and isinstance(record.get("status"), dict):
            message = {"status": record["status"]}  # a failed call: its details leave too
        if not isinstance(message, dict):
            violations.append(f"{where}: message not recorded, cannot vouch for it")
            continue
        found = _Walker(silo, disclosed)
        found.walk(message, "", own=record.get("server") in own_servers)
        for path, value, in_disclosed_field in found.strings:
            leak = corpus.text_leak(value, fragment_allowed=in_disclosed_field)
            if leak:
                violations.append(f"{where}: {path} carries {leak}")
        for path, doc_id, key in found.fields:
            if key not in disclosed:
                kind = "metadata field" if key in all_metadata_keys else "field (not metadata)"
                violations.append(
                    f"{where}: {path} hit {doc_id!r} discloses {kind} {key!r}, "
                    f"outside the policy {sorted(disclosed)}"
                )
        for path, node in found.vectors:
            decoded = _decode_vector(node)
            if isinstance(decoded, str):
                violations.append(f"{where}: {path} is a vector the check cannot read: {decoded}")
            else:
                vectors.append((f"{where}: {path}", decoded))
    violations.extend(_document_vectors(corpus.vectors, vectors))
    return violations


def _document_vectors(
    stored: npt.NDArray[np.float32] | None, sent: list[tuple[str, npt.NDArray[np.float32]]]
) -> Iterator[str]:
    if stored is None or stored.shape[0] == 0 or not sent:
        return
    same_space = [(where, v) for where, v in sent if v.shape == (stored.shape[1],)]
    if not same_space:
        return
    matrix = np.stack([v for _, v in same_space])
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    cosines = matrix @ stored.T
    best = cosines.argmax(axis=1)
    for row, (where, _) in enumerate(same_space):
        cosine = float(cosines[row, best[row]])
        if cosine >= DOCUMENT_VECTOR_COSINE:
            yield f"{where} is stored document vector {int(best[row])} (cosine {cosine:.4f})"
