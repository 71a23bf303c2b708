"""A child ``silobridge`` process of the loopback consortium, logging to its own file."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.errors import FailedPrecondition


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until the log matches ``pattern``; raise with the log's tail if it dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.text())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = "\n".join(self.text().splitlines()[-25:])
        state = "exited" if self.popen.poll() is not None else "timed out"
        raise FailedPrecondition(f"{self.name} {state} before {pattern.pattern!r}; log:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode
