"""Rebuild the packaged anchor sentences from Debian's ``fortunes`` and ``fortunes-min``.

Run ``.venv/bin/python scripts/build_anchor_sentences.py`` after
``apt-get install fortunes fortunes-min``. The output is byte-identical on every run: files in
name order, sentences in file order, gzip with a zero timestamp and no file name. See
``coordinator/silobridge/coordinator/anchors/SENTENCES.md`` for what is kept and why.
"""

from __future__ import annotations

import argparse
import gzip
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

APT_HINT = "apt-get update && apt-get install fortunes fortunes-min"
# fortunes-off is deliberately absent: its files are the offensive ones.
PACKAGES = ("fortunes", "fortunes-min")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1]
    / "coordinator"
    / "silobridge"
    / "coordinator"
    / "anchors"
    / "sentences.txt.gz"
)
# Not general prose (lyrics, comics, chat logs, pictures, untranslated quotes) or prone to
# offend (groups of people, the sexes, drugs, politics).
DROPPED = frozenset(
    {
        "songs-poems",
        "zippy",
        "knghtbrd",
        "ascii-art",
        "translate-me",
        "ethnic",
        "men-women",
        "drugs",
        "politics",
    }
)
MIN_WORDS = 4
MAX_WORDS = 40
# Share of a sentence's non-space characters that must be letters: drops code, tables, shell
# sessions and ASCII pictures that survive the category filter.
MIN_LETTER_SHARE = 0.88
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# A whole sentence opens with a capital (or a quote) and closes with its punctuation; anything
# else is a fragment the simple split left behind, a heading or a list item.
WHOLE_SENTENCE = re.compile(r"[A-Z\"'].*[.!?][\"')]?", re.DOTALL)


def package_files(packages: tuple[str, ...]) -> list[Path]:
    """The fortune text files the packages installed (not ``.dat`` indexes, not ``.u8`` links)."""
    try:
        listing = subprocess.run(
            ["dpkg-query", "-L", *packages], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"cannot list the files of {', '.join(packages)} ({error}); {APT_HINT}")
    files = set()
    for line in listing.splitlines():
        path = Path(line.strip())
        if path.parent == FORTUNE_DIR and not path.suffix and path.is_file():
            files.add(path)
    return sorted(files, key=lambda p: p.name)


def is_dropped(category: str) -> bool:
    return category in DROPPED or category.endswith("-o")


def fortunes(path: Path) -> Iterator[str]:
    """Each ``%``-separated fortune of a file, attribution lines removed, whitespace collapsed."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    for block in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        lines = [line for line in block.splitlines() if not line.strip().startswith("--")]
        joined = " ".join(" ".join(lines).split())
        if joined:
            yield joined


def sentences(fortune: str) -> Iterator[str]:
    for piece in SENTENCE_END.split(fortune):
        sentence = piece.strip()
        if sentence:
            yield sentence


def keep(sentence: str) -> bool:
    if not WHOLE_SENTENCE.fullmatch(sentence):
        return False
    if not sentence.isascii() or not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return False
    visible = [c for c in sentence if not c.isspace()]
    return sum(c.isalpha() for c in visible) >= MIN_LETTER_SHARE * len(visible)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    files = package_files(PACKAGES)
    if not files:
        sys.exit(f"no fortune files found in {FORTUNE_DIR}; {APT_HINT}")
    kept: dict[str, None] = {}
    for path in files:
        if is_dropped(path.name):
            print(f"{path.name:16} dropped")
            continue
        before = len(kept)
        for fortune in fortunes(path):
            for sentence in sentences(fortune):
                if keep(sentence):
                    kept.setdefault(sentence, None)
        print(f"{path.name:16} {len(kept) - before:6} sentences")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        args.out.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle,
    ):
        handle.write(("\n".join(kept) + "\n").encode("utf-8"))
    size = args.out.stat().st_size
    print(f"{len(kept)} distinct sentences, {size} bytes, written to {args.out}")


if __name__ == "__main__":
    main()
