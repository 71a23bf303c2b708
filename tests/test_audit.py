"""Audit logs: a hash chain with signed checkpoints that names the first edited, deleted,
moved or missing line, and never takes query text or vectors."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.adapters.signing import load_verify_key, public_key_path
from silobridge.audit.chain import GENESIS, checkpoint_payload, sidecar_path
from silobridge.audit.cli import audit_app
from silobridge.audit.events import audit_event
from silobridge.audit.log import AuditLog, open_audit_log
from silobridge.audit.verify import verify_log
from silobridge.core.errors import FailedPrecondition, InvalidArgument, NotFound
from silobridge.security.identity import PeerIdentity, identity_from_certificate_pem

from .conftest import Pki

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
EVENTS = 10
EVERY = 4
# 10 events with a checkpoint after every 4th and one at close: e e e e C e e e e C e e C.
TOTAL_LINES = EVENTS + math.ceil(EVENTS / EVERY)
CHECKPOINT_LINES = (5, 10, 13)


@pytest.fixture(scope="module")
def alice(pki: Pki) -> PeerIdentity:
    return identity_from_certificate_pem(pki.home_client.cert.read_bytes())


def _event(who: PeerIdentity, number: int) -> dict[str, object]:
    return audit_event(
        who=who,
        rpc="/silobridge.v1.SiloService/Search",
        allowed=number % 3 != 0,
        reason="" if number % 3 else "rate limit exceeded",
        silos=["kjv"],
        results=number,
        request=number,
    )


def _write_log(path: Path, who: PeerIdentity, events: int = EVENTS, every: int = EVERY) -> None:
    with AuditLog.open(path, KEY, checkpoint_every=every, checkpoint_seconds=math.inf) as log:
        for number in range(events):
            log.append(_event(who, number))


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _encode(fields: dict[str, object]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _rehash(fields: dict[str, object]) -> bytes:
    """What an attacker who knows the format does: recompute the edited line's own hash."""
    body = {name: value for name, value in fields.items() if name != "hash"}
    fields["hash"] = hashlib.sha256(_encode(body)).hexdigest()
    return _encode(fields) + b"\n"


def _rechain(lines: list[bytes], start: int, key: Ed25519PrivateKey) -> list[bytes]:
    """Re-link and re-sign every line from index ``start`` on, as a full forger would."""
    out = list(lines[:start])
    prev = json.loads(out[-1])["hash"] if out else GENESIS
    for raw in lines[start:]:
        fields = json.loads(raw)
        fields["prev"] = prev
        if fields.get("type") == "checkpoint":
            fields["head"] = prev
            signature = key.sign(checkpoint_payload(fields["seq"] - 1, prev))
            fields["sig"] = base64.b64encode(signature).decode()
        out.append(_rehash(fields))
        prev = json.loads(out[-1])["hash"]
    return out


def test_untouched_log_verifies_with_and_without_key(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)

    signed = verify_log(log, KEY.public_key())
    assert signed.ok, signed.reason
    assert (signed.lines, signed.checkpoints) == (TOTAL_LINES, len(CHECKPOINT_LINES))
    assert signed.first_bad_line is None
    assert signed.reason == ""

    unsigned = verify_log(log)
    assert unsigned.ok
    assert unsigned.lines == TOTAL_LINES
    assert "signatures not checked" in unsigned.reason

    lines = [json.loads(raw) for raw in _lines(log)]
    assert [line["seq"] for line in lines] == list(range(1, TOTAL_LINES + 1))
    assert [n for n, line in enumerate(lines, 1) if line.get("type")] == list(CHECKPOINT_LINES)
    assert lines[0]["prev"] == GENESIS
    assert lines[0]["who"] == "spiffe://testnet/client/alice"
    assert lines[0]["org"] == "bible"
    assert sidecar_path(log).read_bytes() == _lines(log)[-1]


def test_an_edited_field_value_is_the_first_bad_line(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    fields = json.loads(lines[2])
    fields["allowed"] = not fields["allowed"]
    lines[2] = _encode(fields) + b"\n"
    log.write_bytes(b"".join(lines))

    for key in (KEY.public_key(), None):
        report = verify_log(log, key)
        assert not report.ok
        assert report.first_bad_line == 3
        assert report.reason.startswith("edited")
        assert report.lines == 2


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    fields = json.loads(lines[2])
    fields["results"] = 0
    lines[2] = _rehash(fields)
    log.write_bytes(b"".join(lines))

    report = verify_log(log)
    assert not report.ok
    assert report.first_bad_line == 3
    assert "line 4 does not link to line 3" in report.reason


def test_a_deleted_line_is_named(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    del lines[6]  # line 7
    log.write_bytes(b"".join(lines))

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 7
    assert report.reason.startswith("deleted or reordered: line 7 holds seq 8")


def test_two_swapped_lines_are_named(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    lines[3], lines[4] = lines[4], lines[3]  # lines 4 and 5
    log.write_bytes(b"".join(lines))

    report = verify_log(log)
    assert not report.ok
    assert report.first_bad_line == 4
    assert "deleted or reordered" in report.reason


@pytest.mark.parametrize("keep", [0, 5, 8, TOTAL_LINES - 1])
def test_a_tail_cut_before_the_last_checkpoint_is_truncation(
    tmp_path: Path, alice: PeerIdentity, keep: int
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    log.write_bytes(b"".join(_lines(log)[:keep]))  # a whole-line cut: the chain itself is fine

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == keep + 1
    assert report.reason == (
        f"truncated: the last signed checkpoint covers line {TOTAL_LINES} "
        f"but the log ends at line {keep}"
    )
    with pytest.raises(FailedPrecondition, match="truncated"):
        AuditLog.open(log, KEY)


def test_without_the_checkpoint_file_a_cut_tail_is_only_a_warning(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    log.write_bytes(b"".join(_lines(log)[:5]))
    sidecar_path(log).unlink()

    report = verify_log(log, KEY.public_key())
    assert report.ok  # the chain up to line 5 is intact; only the sidecar pins the end
    assert "a cut tail would go unnoticed" in report.reason


def test_a_wrong_key_fails_at_the_first_checkpoint(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)

    report = verify_log(log, OTHER_KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == CHECKPOINT_LINES[0]
    assert report.reason.startswith("bad signature")


def test_a_forged_checkpoint_signature_is_caught_with_the_key(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    # A forger swaps the second checkpoint's signature for one of their own key, then re-links
    # every later line and rewrites the checkpoint file, so every hash and link is consistent.
    forged = _rechain(lines, CHECKPOINT_LINES[1] - 1, OTHER_KEY)
    log.write_bytes(b"".join(forged))
    sidecar_path(log).write_bytes(forged[-1])

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == CHECKPOINT_LINES[1]
    assert report.reason.startswith("bad signature")
    # Without the key only the chain is checked, and this chain is consistent: hence --key.
    assert verify_log(log).ok


def test_a_rewritten_chain_fails_at_the_first_checkpoint_after_the_edit(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    lines = _lines(log)
    fields = json.loads(lines[6])
    fields["allowed"] = True
    lines[6] = _rehash(fields)
    log.write_bytes(b"".join(_rechain(lines, 7, OTHER_KEY)))

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    # Line 7 was edited; the earliest line that proves it is the next signed checkpoint.
    assert report.first_bad_line == CHECKPOINT_LINES[1]


def test_a_torn_last_line_is_reported_and_refused_on_reopen(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    whole = _lines(log)
    with log.open("ab") as handle:
        handle.write(_lines(log)[0][:40])  # a crash in the middle of writing the next line

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == TOTAL_LINES + 1
    assert report.reason.startswith("torn")
    with pytest.raises(FailedPrecondition, match=f"torn line {TOTAL_LINES + 1}"):
        AuditLog.open(log, KEY)
    assert _lines(log)[:-1] == whole  # nothing was appended after the torn line


def test_reopening_continues_the_chain(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice, events=3)
    _write_log(log, alice, events=2)

    report = verify_log(log, KEY.public_key())
    assert report.ok, report.reason
    assert (report.lines, report.checkpoints) == (7, 2)
    lines = [json.loads(raw) for raw in _lines(log)]
    assert lines[4]["seq"] == 5
    assert lines[4]["prev"] == lines[3]["hash"]


def test_reopening_after_a_crash_before_the_sidecar_was_replaced(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice, events=3)
    stale = sidecar_path(log).read_bytes()
    _write_log(log, alice, events=2)
    sidecar_path(log).write_bytes(stale)  # the last checkpoint reached the log, not the sidecar

    AuditLog.open(log, KEY).close()
    assert sidecar_path(log).read_bytes() == _lines(log)[-1]
    assert verify_log(log, KEY.public_key()).ok


def test_a_second_writer_and_a_vanished_log_are_refused(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    with AuditLog.open(log, KEY, checkpoint_seconds=math.inf) as first:
        first.append(_event(alice, 1))
        with pytest.raises(FailedPrecondition, match="already open"):
            AuditLog.open(log, KEY)
    log.unlink()
    with pytest.raises(FailedPrecondition, match="missing"):
        AuditLog.open(log, KEY)
    assert not log.exists()


def test_a_closed_log_refuses_appends(tmp_path: Path, alice: PeerIdentity) -> None:
    log = AuditLog.open(tmp_path / "audit.jsonl", KEY, checkpoint_seconds=math.inf)
    log.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        log.append(_event(alice, 1))


def test_concurrent_appends_from_four_threads_make_one_valid_chain(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log_path = tmp_path / "audit.jsonl"
    per_thread = 60
    start = threading.Barrier(4)

    def writer(log: AuditLog, thread: int) -> None:
        start.wait()
        for number in range(per_thread):
            log.append(audit_event(who=alice, rpc="Search", allowed=True, thread=thread, n=number))

    with AuditLog.open(log_path, KEY, checkpoint_every=7, checkpoint_seconds=math.inf) as log:
        threads = [threading.Thread(target=writer, args=(log, t)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    report = verify_log(log_path, KEY.public_key())
    assert report.ok, report.reason
    events = [json.loads(raw) for raw in _lines(log_path)]
    events = [event for event in events if "type" not in event]
    assert Counter(event["thread"] for event in events) == dict.fromkeys(range(4), per_thread)
    assert report.lines == 4 * per_thread + report.checkpoints


def test_an_idle_log_is_checkpointed_after_checkpoint_seconds(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog.open(log_path, KEY, checkpoint_every=1000, checkpoint_seconds=0.05) as log:
        log.append(_event(alice, 1))
        deadline = time.monotonic() + 10
        while not sidecar_path(log_path).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        # Still open: the timer, not close(), signed the head.
        lines = [json.loads(raw) for raw in _lines(log_path)]
    assert [line.get("type") for line in lines] == [None, "checkpoint"]
    assert lines[1]["covers"] == 1
    assert verify_log(log_path, KEY.public_key()).ok


@pytest.mark.parametrize(
    "name",
    ["text", "query", "vector", "texts", "vectors", "query_text", "queryVector", "Doc-Embedding"],
)
def test_audit_event_refuses_text_and_vector_fields(alice: PeerIdentity, name: str) -> None:
    extra: dict[str, str | int | float | bool | None] = {name: "x"}
    with pytest.raises(InvalidArgument, match="never hold query text"):
        audit_event(who=alice, rpc="Search", allowed=True, **extra)  # type: ignore[arg-type]


def test_events_hold_only_scalars_and_never_log_fields(tmp_path: Path, alice: PeerIdentity) -> None:
    with pytest.raises(InvalidArgument, match="only strings, numbers"):
        audit_event(who=alice, rpc="Search", allowed=True, k=[0.1, 0.2])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="finite"):
        audit_event(who=alice, rpc="Search", allowed=True, latency=math.nan)
    with pytest.raises(InvalidArgument, match="reserved"):
        audit_event(who=alice, rpc="Search", allowed=True, seq=3)
    with AuditLog.open(tmp_path / "a.jsonl", KEY, checkpoint_seconds=math.inf) as log:
        with pytest.raises(InvalidArgument, match="non-strings"):
            log.append({"rpc": "Search", "hits": [0.5, 0.25]})
        with pytest.raises(InvalidArgument, match="never hold query text"):
            log.append({"rpc": "Search", "embedding": "0.1,0.2"})
    event = audit_event(who=None, rpc="Search", allowed=False, reason="no identity", nonce="ab")
    assert (event["who"], event["allowed"], event["nonce"]) == (None, False, "ab")


def test_open_audit_log_creates_a_key_pair_once(tmp_path: Path, alice: PeerIdentity) -> None:
    key_path = tmp_path / "audit.key"
    log_path = tmp_path / "audit.jsonl"
    with open_audit_log(log_path, key_path, checkpoint_seconds=math.inf) as log:
        log.append(_event(alice, 1))
    with open_audit_log(log_path, key_path, checkpoint_seconds=math.inf) as log:
        log.append(_event(alice, 2))
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    report = verify_log(log_path, load_verify_key(public_key_path(key_path)))
    assert report.ok, report.reason
    assert report.checkpoints == 2


def test_verify_of_a_missing_log_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no audit log"):
        verify_log(tmp_path / "nope.jsonl")


# --- any single-line change is found at that line --------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)


def _byte_edit(data: st.DataObject, line: bytes) -> bytes:
    body = line[:-1]
    start = data.draw(st.integers(0, len(body)))
    stop = data.draw(st.integers(start, min(len(body), start + 8)))
    insert = data.draw(st.binary(max_size=8).filter(lambda b: b"\n" not in b))
    return body[:start] + insert + body[stop:] + b"\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.integers(1, 10),
    every=st.integers(1, 5),
    rehash=st.booleans(),
    data=st.data(),
)
def test_any_single_line_change_is_found_at_that_line(
    alice: PeerIdentity, events: int, every: int, rehash: bool, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "audit.jsonl"
        _write_log(log, alice, events=events, every=every)
        lines = _lines(log)
        index = data.draw(st.integers(0, len(lines) - 1))
        expected = index + 1
        if rehash:
            fields = json.loads(lines[index])
            name = data.draw(st.sampled_from(sorted(set(fields) - {"hash"})))
            value = data.draw(_SCALARS.filter(lambda v: v != fields[name]))
            fields[name] = value
            edited = _rehash(fields)
            if name == "prev" and isinstance(value, str) and index > 0:
                expected = index  # its link to the line before breaks, so that one is suspect
        else:
            edited = _byte_edit(data, lines[index])
        if edited == lines[index]:
            return
        lines[index] = edited
        log.write_bytes(b"".join(lines))

        for key in (KEY.public_key(), None):
            report = verify_log(log, key)
            assert not report.ok
            assert report.first_bad_line == expected, report.reason


# --- the CLI -------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")  # as the silobridge command registers it
    return app


def test_cli_verify_exit_codes_and_messages(tmp_path: Path, alice: PeerIdentity) -> None:
    log = tmp_path / "audit.jsonl"
    pub = tmp_path / "audit.pub"
    pub.write_bytes(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    _write_log(log, alice)
    runner = CliRunner()

    good = runner.invoke(_cli(), ["audit", "verify", str(log), "--key", str(pub)])
    assert good.exit_code == 0, good.output
    assert f"ok: {TOTAL_LINES} lines, {len(CHECKPOINT_LINES)} signed checkpoints" in good.output
    assert "not checked" not in good.output

    keyless = runner.invoke(_cli(), ["audit", "verify", str(log)])
    assert keyless.exit_code == 0, keyless.output
    assert "signatures not checked" in keyless.output

    lines = _lines(log)
    del lines[1]
    log.write_bytes(b"".join(lines))
    bad = runner.invoke(_cli(), ["audit", "verify", str(log), "--key", str(pub)])
    assert bad.exit_code == 1
    assert "TAMPERED at line 2: deleted or reordered" in bad.output

    missing = runner.invoke(_cli(), ["audit", "verify", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 1
    assert "error: no audit log at" in missing.output

    no_key = runner.invoke(_cli(), ["audit", "verify", str(log), "--key", str(tmp_path / "x")])
    assert no_key.exit_code == 1
    assert "error: no public key at" in no_key.output


def test_a_damaged_checkpoint_file_is_reported_without_a_line(
    tmp_path: Path, alice: PeerIdentity
) -> None:
    log = tmp_path / "audit.jsonl"
    _write_log(log, alice)
    sidecar_path(log).write_bytes(_lines(log)[CHECKPOINT_LINES[0] - 1][:-3] + b"}\n")

    report = verify_log(log, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line is None
    assert report.reason.startswith(f"checkpoint file {sidecar_path(log)}:")
    with pytest.raises(FailedPrecondition, match="not usable"):
        AuditLog.open(log, KEY)
    result = CliRunner().invoke(_cli(), ["audit", "verify", str(log)])
    assert result.exit_code == 1
    assert "TAMPERED: checkpoint file" in result.output


def _with_unsigned_tail(path: Path, who: PeerIdentity) -> list[bytes]:
    """A log whose last two events came after its last checkpoint (a crash before the next)."""
    _write_log(path, who)
    lines = _lines(path)
    # Two more event lines, chained on as the writer would have (the events of lines 1 and 2).
    extra = [json.loads(raw) for raw in lines[:2]]
    for number, fields in enumerate(extra, start=len(lines) + 1):
        fields["seq"] = number
    tail = _rechain([*lines, *(_encode(f) + b"\n" for f in extra)], len(lines), KEY)
    path.write_bytes(b"".join(tail))
    return tail


@pytest.mark.parametrize("recompute", [False, True], ids=["edited", "edited-and-rehashed"])
def test_a_restart_refuses_a_log_edited_after_its_last_checkpoint(
    tmp_path: Path, alice: PeerIdentity, recompute: bool
) -> None:
    """Issue 11, finding 1: the restarted server's next checkpoint would sign the forgery."""
    log = tmp_path / "audit.jsonl"
    lines = _with_unsigned_tail(log, alice)
    AuditLog.open(log, KEY).close()  # the intact unsigned tail reopens and is signed
    assert verify_log(log, KEY.public_key()).ok

    lines = _with_unsigned_tail(tmp_path / "second.jsonl", alice)
    log = tmp_path / "second.jsonl"
    fields = json.loads(lines[TOTAL_LINES])  # the first line after the last checkpoint
    fields["allowed"] = not fields["allowed"]
    lines[TOTAL_LINES] = _rehash(fields) if recompute else _encode(fields) + b"\n"
    log.write_bytes(b"".join(lines))
    with pytest.raises(FailedPrecondition, match=f"line {TOTAL_LINES + 1 + recompute}"):
        AuditLog.open(log, KEY)
    assert log.read_bytes() == b"".join(lines)  # refused before anything was written


def test_verify_refuses_lines_no_signature_vouches_for(tmp_path: Path, alice: PeerIdentity) -> None:
    """Issue 11, finding 2: an invented log with no checkpoint, or a long unsigned tail."""
    invented = tmp_path / "invented.jsonl"
    _write_log(invented, alice)
    lines = _lines(invented)
    events = [raw for raw in lines if json.loads(raw).get("type") != "checkpoint"]
    renumbered = []
    for number, raw in enumerate(events, start=1):
        fields = json.loads(raw)
        fields["seq"] = number
        renumbered.append(_encode(fields) + b"\n")
    invented.write_bytes(b"".join(_rechain(renumbered, 0, KEY)))
    sidecar_path(invented).unlink()
    report = verify_log(invented, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 1
    assert report.reason.startswith(f"unverified tail of {EVENTS} lines after line 0 (no signed")
    assert verify_log(invented, KEY.public_key(), max_tail=None).ok

    tail = tmp_path / "tail.jsonl"
    _with_unsigned_tail(tail, alice)  # two lines after the last checkpoint
    assert verify_log(tail, KEY.public_key(), max_tail=2).ok
    assert "unverified tail of 2 lines" in verify_log(tail, KEY.public_key()).reason
    short = verify_log(tail, KEY.public_key(), max_tail=1)
    assert not short.ok and short.first_bad_line == TOTAL_LINES + 1
    assert "more than the checkpoint interval of 1" in short.reason

    runner = CliRunner()
    refused = runner.invoke(_cli(), ["audit", "verify", str(invented)])
    assert refused.exit_code == 1
    assert "UNVERIFIED at line 1: unverified tail of 10 lines" in refused.output
    allowed = runner.invoke(_cli(), ["audit", "verify", str(invented), "--allow-tail"])
    assert allowed.exit_code == 0, allowed.output
    assert "note: unverified tail of 10 lines" in allowed.output
    strict = runner.invoke(_cli(), ["audit", "verify", str(tail), "--max-tail", "1"])
    assert strict.exit_code == 1 and "UNVERIFIED" in strict.output
