"""Summarised refusal lines (issue 11, finding 8): a flood of identical refusals is a bounded
number of lines, and every refusal is still counted."""

from __future__ import annotations

from collections.abc import Mapping

from silobridge.security.refusals import RefusalSummary


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _summary(clock: Clock) -> tuple[RefusalSummary, list[dict[str, object]]]:
    written: list[dict[str, object]] = []

    def write(event: Mapping[str, object]) -> None:
        written.append(dict(event))

    return RefusalSummary(write, interval=10.0, clock=clock, background=False), written


def _refusal(who: str = "spiffe://t/client/mallory", reason: str = "denied") -> dict[str, object]:
    return {"who": who, "rpc": "Describe", "allowed": False, "reason": reason}


def _counted(lines: list[dict[str, object]]) -> int:
    return sum(int(str(line.get("repeated", 1))) for line in lines)


def test_a_sustained_flood_is_one_line_per_interval_and_every_refusal_is_counted() -> None:
    clock = Clock()
    summary, written = _summary(clock)
    for step in range(3_000):  # 100 refusals a second for 30 seconds
        clock.now = step / 100
        summary.record(_refusal())
    summary.close()
    assert _counted(written) == 3_000
    assert written[0] == _refusal()  # the first one is written at once, as it is
    assert len(written) <= 5
    assert all(line["repeated"] for line in written[1:])


def test_different_peers_and_reasons_are_not_merged() -> None:
    clock = Clock()
    summary, written = _summary(clock)
    for _ in range(3):
        summary.record(_refusal())
        summary.record(_refusal(who="spiffe://t/client/eve"))
        summary.record(_refusal(reason="rate limit"))
    assert len(written) == 3  # each first refusal at once
    summary.close()
    assert _counted(written) == 9
    assert {(line["who"], line["reason"]) for line in written} == {
        ("spiffe://t/client/mallory", "denied"),
        ("spiffe://t/client/eve", "denied"),
        ("spiffe://t/client/mallory", "rate limit"),
    }


def test_a_refusal_after_a_quiet_interval_is_written_at_once_again() -> None:
    clock = Clock()
    summary, written = _summary(clock)
    summary.record(_refusal())
    clock.now = 11.0
    summary.record(_refusal())
    assert written == [_refusal(), _refusal()]
