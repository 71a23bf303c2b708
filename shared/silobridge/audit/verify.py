"""Verify an audit log: every hash, link and checkpoint, and name the first bad line.

What it detects: without the key, any edit, deletion, reordering or truncation made without
recomputing hashes; with the public key, also a rewritten chain, at its first checkpoint.
Lines written after the last checkpoint can be cut off undetected (a close always checkpoints).
With the checkpoint heads recorded outside the host (``silobridge.audit.heads``), also a log cut
back to an older checkpoint: a recorded head is missing from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from silobridge.audit.chain import (
    GENESIS,
    BadLine,
    ChainLine,
    check_checkpoint,
    check_link,
    parse_line,
    read_sidecar,
    sidecar_path,
)
from silobridge.audit.heads import AuditHead, public_key_bytes
from silobridge.core.errors import ConfigError, NotFound

# Lines a server writes between checkpoints by default ([audit] checkpoint_every).
MAX_TAIL = 100
# Lines between two calls of ``verify_log``'s progress callback.
PROGRESS_EVERY = 4096


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_log`` found. ``lines``/``checkpoints`` count lines verified intact."""

    ok: bool
    lines: int
    checkpoints: int
    first_bad_line: int | None
    reason: str


def verify_log(
    path: Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    max_tail: int | None = MAX_TAIL,
    heads: Sequence[AuditHead] = (),
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every hash, link and checkpoint of the log at ``path``; report the first bad line.

    Without ``public_key`` the chain is still checked, but checkpoint signatures are not. Lines
    after the last signed checkpoint are vouched for by no signature (anyone who knows the
    format can rewrite them): more than ``max_tail`` of them, or a log with no checkpoint at
    all, is not ok (``None``: accept any tail, and say how long it is).

    ``heads`` are checkpoint heads recorded elsewhere (the coordinator): each one signed by
    ``public_key`` (all of them when no key is given) must be in the log, at its line.
    ``progress``, when given, receives the bytes of the log read so far, every few thousand
    lines and at the end.
    """
    expected = _expected_heads(heads, public_key)
    sidecar_file = sidecar_path(path)
    # Read the sidecar before the log: a live writer updates the log first, then the sidecar.
    sidecar_error = ""
    try:
        sidecar = read_sidecar(path, public_key)
    except BadLine as err:
        sidecar, sidecar_error = None, f"checkpoint file {sidecar_file}: {err.reason}"
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise NotFound(f"no audit log at {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read audit log {path}: {err.strerror}") from None
    lines = checkpoints = signed = 0
    prev = GENESIS
    with handle:
        for number, raw in enumerate(_reported(handle, progress), start=1):
            try:
                if not raw.endswith(b"\n"):
                    raise BadLine(
                        f"torn: line {number} is incomplete (no newline: a crash mid-write, "
                        "or the file was cut)"
                    )
                line = parse_line(raw[:-1])
                check_link(line, number, prev)
                if line.is_checkpoint:
                    check_checkpoint(line, public_key)
                _check_known_heads(line, number, sidecar, sidecar_file, expected)
            except BadLine as err:
                bad = err.line if err.line is not None else number
                return VerifyReport(False, min(lines, bad - 1), checkpoints, bad, err.reason)
            lines += 1
            checkpoints += line.is_checkpoint
            signed = lines if line.is_checkpoint else signed
            prev = line.digest
    if sidecar is not None and lines < sidecar.seq:
        return VerifyReport(
            False,
            lines,
            checkpoints,
            lines + 1,
            f"truncated: the last signed checkpoint covers line {sidecar.seq} "
            f"but the log ends at line {lines}",
        )
    recorded = max(expected, default=0)
    if recorded > lines:
        return VerifyReport(
            False,
            lines,
            checkpoints,
            lines + 1,
            f"cut back: a signed checkpoint of line {recorded} was recorded outside this host "
            f"(at {expected[recorded].recorded_unix}) but the log ends at line {lines}",
        )
    if sidecar_error:
        return VerifyReport(False, lines, checkpoints, None, sidecar_error)
    problem = _tail_problem(lines - signed, signed, checkpoints, max_tail)
    if problem:
        return VerifyReport(False, lines, checkpoints, signed + 1, problem)
    notes = [
        f"unverified tail of {lines - signed} lines after the last signed checkpoint"
        if lines > signed
        else "",
        "signatures not checked (no public key given)" if public_key is None else "",
        f"no {sidecar_file.name}: a cut tail would go unnoticed" if sidecar is None else "",
        f"{len(expected)} recorded checkpoint heads found in the log" if expected else "",
    ]
    return VerifyReport(True, lines, checkpoints, None, "; ".join(n for n in notes if n))


def _reported(lines: Iterable[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """``lines`` as they are, telling ``progress`` the bytes read so far now and then."""
    read = 0
    for number, raw in enumerate(lines, start=1):
        read += len(raw)
        if progress is not None and number % PROGRESS_EVERY == 0:
            progress(read)
        yield raw
    if progress is not None:
        progress(read)


def _tail_problem(tail: int, signed: int, checkpoints: int, max_tail: int | None) -> str:
    """Why the lines after the last checkpoint (``tail`` of them) cannot be vouched for, or ""."""
    if not tail or max_tail is None or (checkpoints and tail <= max_tail):
        return ""
    why = (
        "no signed checkpoint: nothing in it is vouched for"
        if not checkpoints
        else f"more than the checkpoint interval of {max_tail}"
    )
    return (
        f"unverified tail of {tail} lines after line {signed} ({why}); pass --allow-tail to "
        "accept it, or --max-tail for a longer checkpoint interval"
    )


def _expected_heads(
    heads: Sequence[AuditHead], public_key: Ed25519PublicKey | None
) -> dict[int, AuditHead]:
    """The recorded heads that belong to this log, by the line each covers."""
    key = public_key_bytes(public_key) if public_key is not None else None
    return {head.covers: head for head in heads if key is None or head.public_key == key}


def _check_known_heads(
    line: ChainLine,
    number: int,
    sidecar: ChainLine | None,
    sidecar_file: Path,
    expected: dict[int, AuditHead],
) -> None:
    """Line ``number`` must be what the sidecar and the heads recorded elsewhere say it is."""
    if sidecar is not None and number == sidecar.seq and line.digest != sidecar.digest:
        raise BadLine(
            f"rewritten: line {number} is not the signed checkpoint in "
            f"{sidecar_file} (the log was cut and written again)"
        )
    if number in expected and line.digest != expected[number].head:
        raise BadLine(
            f"rewritten: line {number} is not the line whose signed checkpoint was "
            f"recorded outside this host at {expected[number].recorded_unix}"
        )
