"""Rebuild the committed demo corpus (KJV/WEB verses, Python-doc anchors and sections) from Debian.

Run ``.venv/bin/python scripts/build_demo_data.py`` after
``apt-get install sword-text-kjv sword-text-web python3.11-doc``. The output is byte-identical on
every run: records in canonical order, canonical JSON, gzip with a zero timestamp and no file name.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import re
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

APT_HINT = "apt-get update && apt-get install sword-text-kjv sword-text-web python3.11-doc"
ZTEXT_ROOT = Path("/usr/share/sword/modules/texts/ztext")
DEFAULT_KJV = ZTEXT_ROOT / "engKJV2006eb"
DEFAULT_WEB = ZTEXT_ROOT / "engWEB2015eb"
DEFAULT_PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "demo"  # <repo>/data/demo
MAX_ANCHORS = 20_000
MIN_ANCHOR_WORDS = 20


@dataclass(frozen=True)
class Record:
    """One output line: an id, its text and string-valued metadata."""

    id: str
    text: str
    metadata: dict[str, str]


# --- SWORD zText -----------------------------------------------------------------------------


def read_ztext_entries(module_dir: Path, testament: str) -> list[str]:
    """Every index slot of one testament, in file order (empty slots are '').

    Read directly rather than through pysword: its per-verse API maps slots through a named
    versification and skips empty ones, and we need the raw slot sequence to rebuild references
    from the module's own chapter markers.
    """
    blocks_raw = (module_dir / f"{testament}.bzs").read_bytes()
    verses_raw = (module_dir / f"{testament}.bzv").read_bytes()
    compressed = (module_dir / f"{testament}.bzz").read_bytes()
    # .bzs: (offset, compressed size, uncompressed size) per block, little-endian u32s.
    blocks = [struct.unpack_from("<III", blocks_raw, i) for i in range(0, len(blocks_raw), 12)]
    cache: dict[int, bytes] = {}
    entries: list[str] = []
    # .bzv: (block number u32, start u32, length u16) per slot.
    for pos in range(0, len(verses_raw) - 9, 10):
        block, start, length = struct.unpack_from("<IIH", verses_raw, pos)
        if length == 0:
            entries.append("")
            continue
        if block not in cache:
            offset, size, _ = blocks[block]
            cache[block] = zlib.decompress(compressed[offset : offset + size])
        entries.append(cache[block][start : start + length].decode("utf-8"))
    return entries


_CHAPTER_START = re.compile(r'<chapter\b(?=[^>]*\bsID=)[^>]*\bosisID="([^".]+)\.(\d+)"')
_BOOK_START = re.compile(r'<div\b(?=[^>]*\bsID=)(?=[^>]*\btype="book")[^>]*>')
# Front/back matter (WEB appends its glossary to Rev.22.21) starts with one of these divisions.
_MATTER_START = re.compile(
    r'<div\b(?=[^>]*\bsID=)(?=[^>]*\btype="(?:book|bookGroup|front|back|glossary|introduction|'
    r'colophon)")[^>]*>'
)
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_TITLE = re.compile(r"<title\b([^>]*)>(.*?)</title>", re.S)
_SPEAKER = re.compile(r"<speaker\b[^>]*>.*?</speaker>", re.S)
_INLINE_TAG = re.compile(r"</?(?:w|transChange|divineName|seg|foreign|name|hi|catchWord)\b[^>]*>")
_ANY_TAG = re.compile(r"<[^>]*>")
_GAP = "\x00"
# Gaps that touch whitespace, an opening quote or closing punctuation (quotes spelled as escapes
# because they look like ASCII ones in an editor).
_GAP_WITHOUT_SPACE = re.compile(
    r"(?<=[\s\u201c\u2018(\[])\x00+|\x00+(?=[\s,.;:!?\u2019\u201d)\]]|$)|^\x00+"
)


def _title_text(match: re.Match[str]) -> str:
    """Keep canonical psalm superscriptions; drop section headings and Ps 119's letter names.

    WEB marks the acrostic letters ("BETH") canonical and KJV does not, so a title without a
    lowercase letter is dropped to keep the two translations' verses comparable.
    """
    words = _ANY_TAG.sub("", match.group(2))
    if 'canonical="true"' in match.group(1) and re.search(r"[a-z]", words):
        return f"{_GAP}{match.group(2)}{_GAP}"
    return _GAP


def clean_osis(raw: str) -> str:
    """Plain verse text: notes, headings and tags removed, the words kept, whitespace normalised."""
    matter = _MATTER_START.search(raw)
    if matter:
        raw = raw[: matter.start()]
    # A removed note or block tag may sit between two words with no space around it, so it
    # becomes a gap marker: a space between words, nothing next to punctuation or whitespace.
    text = _NOTE.sub(_GAP, raw)
    text = _TITLE.sub(_title_text, text)
    text = _SPEAKER.sub(_GAP, text)
    text = _INLINE_TAG.sub("", text)
    text = _ANY_TAG.sub(_GAP, text)
    text = html.unescape(text)
    text = _GAP_WITHOUT_SPACE.sub("", text)
    text = text.replace(_GAP, " ").replace("¶", " ")  # KJV's pilcrows mark paragraphs, not words
    # WEB leaves a space where a note or quote boundary sat before "?" and the like.
    return re.sub(r"\s+([?!,.;:])", r"\1", " ".join(text.split()))


def bible_verses(module_dir: Path) -> dict[tuple[str, int, int], str]:
    """Non-empty verses keyed by (book, chapter, verse), numbered from the module's markers.

    Each slot after a chapter marker is the next verse of that chapter; a book division ends the
    chapter so that book-introduction slots are never counted as verses.
    """
    verses: dict[tuple[str, int, int], str] = {}
    for testament in ("ot", "nt"):
        book: str | None = None
        chapter = verse = 0
        for raw in read_ztext_entries(module_dir, testament):
            markers = list(_CHAPTER_START.finditer(raw))
            if markers:
                book, chapter, verse = markers[-1].group(1), int(markers[-1].group(2)), 0
                continue
            if _BOOK_START.search(raw):
                book = None
                continue
            if book is None:
                continue
            verse += 1
            text = clean_osis(raw)
            if text:
                verses[(book, chapter, verse)] = text
    return verses


def aligned_bibles(kjv_dir: Path, web_dir: Path) -> tuple[list[Record], list[Record]]:
    """KJV and WEB records for the references present and non-empty in both, in KJV order."""
    kjv = bible_verses(kjv_dir)
    web = bible_verses(web_dir)
    # dicts keep insertion order, which is the KJV module's canonical book/chapter/verse order.
    shared = [ref for ref in kjv if ref in web]

    def records(verses: dict[tuple[str, int, int], str], translation: str) -> list[Record]:
        return [
            Record(
                id=f"{book}.{chapter}.{verse}",
                text=verses[(book, chapter, verse)],
                metadata={
                    "book": book,
                    "chapter": str(chapter),
                    "verse": str(verse),
                    "translation": translation,
                },
            )
            for book, chapter, verse in shared
        ]

    return records(kjv, "KJV"), records(web, "WEB")


# --- Python documentation --------------------------------------------------------------------

# Directives whose body is code, tables, indexes or metadata rather than prose.
_SKIP_BODY = frozenset(
    {
        *("code-block", "code", "sourcecode", "parsed-literal", "literalinclude", "highlight"),
        *("doctest", "testcode", "testoutput", "testsetup", "testcleanup", "productionlist"),
        *("index", "toctree", "contents", "include", "raw", "math", "image", "figure"),
        *("table", "list-table", "csv-table", "tabularcolumns", "audit-event-table"),
        *("miscnews", "limited-api-list", "availability", "audit-event", "rubric"),
        *("sectionauthor", "moduleauthor", "module", "currentmodule", "program"),
    }
)
# Directives whose argument on the directive line is already prose.
_ADMONITIONS = frozenset(
    {
        *("note", "warning", "seealso", "important", "caution", "tip", "hint", "attention"),
        *("danger", "error", "impl-detail"),
    }
)
_VERSION_NOTES = {"versionadded": 1, "versionchanged": 1, "deprecated": 1, "deprecated-removed": 2}
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::(.*)$")
_EXPLICIT = re.compile(r"^(\s*)\.\.(\s|$)")
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_.:])\1{2,}\s*$")
_GRID_TABLE_BORDER = re.compile(r"^\s*\+[-=+]*-[-=+]*\+\s*$")
_SIMPLE_TABLE_BORDER = re.compile(r"^\s*=+( +=+)+\s*$")
_BULLET = re.compile(r"^(\s*)(?:[-*+•]|\d+\.|#\.|\(\w\))\s+")
_FIELD = re.compile(r"^\s*:[\w -]+:(\s|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_paragraphs(lines: list[str]) -> Iterator[str]:  # noqa: PLR0912, PLR0915
    """Raw prose paragraphs of one reStructuredText file, markup still inline."""
    skip_deeper_than: int | None = None  # skip lines indented more than this (code, comments)
    paragraph: list[str] = []
    text_col = 0

    def flush() -> Iterator[str]:
        if paragraph:
            yield " ".join(paragraph)
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        i += 1
        if skip_deeper_than is not None:
            if not stripped or _indent(line) > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not stripped:
            yield from flush()
            continue
        indent = _indent(line)
        if _ADORNMENT.match(stripped) or (nxt.strip() and _ADORNMENT.match(nxt.strip())):
            yield from flush()
            if not _ADORNMENT.match(stripped):
                i += 1  # the heading's underline
            continue
        table_start = _GRID_TABLE_BORDER.match(line) or _SIMPLE_TABLE_BORDER.match(line)
        if not paragraph and (table_start or stripped.startswith("| ")):  # tables, line blocks
            i = _skip_table(lines, i - 1)
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            yield from flush()
            name, argument = directive.group(2), directive.group(3).strip()
            if name in _SKIP_BODY:
                skip_deeper_than = indent
                continue
            # Signature continuations align with the argument; options are field lines.
            arg_col = len(line) - len(directive.group(3)) + 1
            while i < len(lines) and lines[i].strip():
                cont = lines[i]
                if _FIELD.match(cont) or _indent(cont) >= arg_col:
                    i += 1
                else:
                    break
            if name in _ADMONITIONS and argument:
                paragraph.append(argument)
            elif name in _VERSION_NOTES:
                words = argument.split(maxsplit=_VERSION_NOTES[name])
                if len(words) > _VERSION_NOTES[name]:
                    paragraph.append(words[-1])
            continue
        if _EXPLICIT.match(line):  # comments, link targets, footnotes, substitutions
            yield from flush()
            skip_deeper_than = indent
            continue
        if stripped.startswith(">>>"):  # a doctest block runs to the next blank line
            yield from flush()
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        # A list item or field starts a paragraph unless it is indented as a continuation line
        # (a wrapped "- x" or "+ 1" inside running text).
        item = _BULLET.match(line) or _FIELD.match(line)
        if item and (not paragraph or indent < text_col):
            yield from flush()
            stripped = line[item.end() :].strip()
        else:
            item = None
        if not paragraph:
            text_col = item.end() if item else indent
            # A definition-list term: the next line is its more-indented definition.
            if nxt.strip() and _indent(nxt) > text_col and not _BULLET.match(nxt):
                continue
        if stripped.endswith("::"):
            # An expanded literal block follows: keep the sentence, drop the code.
            stripped = stripped[:-2].rstrip()
            if stripped and not stripped.endswith(":"):
                stripped += ":"
            paragraph.append(stripped)
            yield from flush()
            skip_deeper_than = indent
            continue
        paragraph.append(stripped)
    yield from flush()


def _skip_table(lines: list[str], start: int) -> int:
    """Index of the first line after the table starting at ``start``."""
    i = start
    if _SIMPLE_TABLE_BORDER.match(lines[i]):
        # A simple table ends at a border line that is followed by a blank line (or EOF).
        i += 1
        while i < len(lines):
            if _SIMPLE_TABLE_BORDER.match(lines[i]) and (
                i + 1 >= len(lines) or not lines[i + 1].strip()
            ):
                return i + 1
            i += 1
        return i
    while i < len(lines) and lines[i].strip():
        i += 1
    return i


_ROLE = re.compile(r":(?:[\w-]+:)*([\w-]+):`((?:[^`\\]|\\.)+)`")
_TITLED = re.compile(r"^(.*?)\s*<[^<>]+>$", re.S)
_LINK = re.compile(r"`([^`]+?)\s*<[^<>`]+>`__?")
_INTERPRETED = re.compile(r"`([^`]+)`__?|`([^`]+)`")


def _role_text(match: re.Match[str]) -> str:
    role, content = match.group(1), match.group(2)
    titled = _TITLED.match(content)
    text = titled.group(1) if titled else content
    if text.startswith("~"):  # Sphinx shows only the last component of ~a.b.c
        text = text.rsplit(".", 1)[-1]
    text = text.lstrip("~!.")
    if role in {"pep", "rfc"}:
        return f"{role.upper()} {text}"
    if role in {"issue", "gh"}:
        return f"{'bpo' if role == 'issue' else 'gh'}-{text}"
    return text


def strip_inline_markup(text: str) -> str:
    """Plain text of a paragraph: roles, literals, emphasis, links and escapes unwrapped."""
    # Literal text is set aside first so that no other rule rewrites code inside it.
    literals: list[str] = []

    def hold(match: re.Match[str]) -> str:
        literals.append(match.group(1))
        return f"\x02{len(literals) - 1}\x03"

    text = re.sub(r"``(.+?)``", hold, text)
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(r"\1", text)
    text = _INTERPRETED.sub(lambda m: m.group(1) or m.group(2), text)
    text = re.sub(r"\*\*([^\s*](?:[^*]*?[^\s*])?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*\\])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\s*\[(?:#\w*|\d+|\*)\]_", "", text)  # footnote references
    text = re.sub(r"\|(\w[\w -]*)\|", r"\1", text)  # substitution references
    text = re.sub(r"\b([A-Za-z][\w.-]*[A-Za-z0-9])_(?=[\s,.;:)]|$)", r"\1", text)  # name_ refs
    text = re.sub(r"\\(.)", r"\1", text).replace("\\", "")
    text = re.sub(r"\x02(\d+)\x03", lambda m: literals[int(m.group(1))], text)
    return " ".join(text.split())


def _is_prose(text: str) -> bool:
    if len(text.split()) < MIN_ANCHOR_WORDS or ">>>" in text:
        return False
    # Leftover role syntax means a construct the stripper did not understand: leave it out.
    return re.search(r":[\w-]+:`", text) is None


def _rst_sources(sources: Path) -> list[Path]:
    """Every ``*.rst.txt`` file under ``sources``, in sorted relative-path order."""
    return sorted(sources.rglob("*.rst.txt"), key=lambda p: p.relative_to(sources).as_posix())


def pydoc_anchors(sources: Path, limit: int = MAX_ANCHORS) -> list[Record]:
    """Deduplicated prose paragraphs of the docs, first ``limit`` in sorted source-path order."""
    seen: set[str] = set()
    records: list[Record] = []
    for path in _rst_sources(sources):
        source = path.relative_to(sources).as_posix().removesuffix(".txt")
        lines = path.read_text(encoding="utf-8").splitlines()
        for raw in rst_paragraphs(lines):
            text = strip_inline_markup(raw)
            if not _is_prose(text) or text in seen:
                continue
            seen.add(text)
            records.append(
                Record(id=f"pydoc-{len(records) + 1:06d}", text=text, metadata={"source": source})
            )
            if len(records) >= limit:
                return records
    return records


# Section titles too generic to name what their section is about, compared case-folded. Titles
# repeated across the docs ("Porting to Python 3.10") are dropped by count, not listed here.
_GENERIC_HEADINGS = frozenset(
    {
        *("examples", "example", "notes", "introduction", "overview", "see also", "summary"),
        *("functions", "classes", "constants", "exceptions", "module contents", "changes"),
        *("other changes", "usage", "background", "attributes", "methods", "contents"),
        *("footnotes", "acknowledgements", "abstract", "rationale", "motivation", "details"),
    }
)
MAX_HEADING_WORDS = 12


def rst_headings(lines: list[str]) -> list[tuple[int, int, str]]:
    """Section titles of one file: (first line of the title block, first body line, raw title).

    A title is an unindented text line after a blank line (or the file's start) with an
    adornment line under it, optionally one above it as well (then it may be inset).
    """
    headings: list[tuple[int, int, str]] = []
    i = 0
    while i + 1 < len(lines):
        line, nxt = lines[i].rstrip(), lines[i + 1].rstrip()
        after = lines[i + 2].rstrip() if i + 2 < len(lines) else ""
        if _ADORNMENT.match(line) and nxt.strip() and not _ADORNMENT.match(nxt.strip()):
            if _ADORNMENT.match(after) and after[0] == line[0]:
                headings.append((i, i + 3, nxt.strip()))
                i += 3
                continue
        elif (
            line.strip()
            and _indent(line) == 0
            and not _ADORNMENT.match(line)
            and not _EXPLICIT.match(line)
            and _ADORNMENT.match(nxt)
            and (i == 0 or not lines[i - 1].strip())
        ):
            headings.append((i, i + 2, line.strip()))
            i += 2
            continue
        i += 1
    return headings


def _is_topical_heading(heading: str) -> bool:
    """A heading that says what its section is about: not generic, not long, not one code name."""
    words = heading.split()
    if not words or len(words) > MAX_HEADING_WORDS or heading.casefold() in _GENERIC_HEADINGS:
        return False
    code_like = heading.islower() or any(c in heading for c in "._(")
    return len(words) > 1 or not code_like


def pydoc_sections(sources: Path) -> list[Record]:
    """(section heading, the section's first prose paragraph) pairs: a query and its document.

    A paragraph belongs to the text between its heading and the next heading of any level.
    Headings seen more than once anywhere in the docs are dropped with every copy, and so is a
    pair whose paragraph an earlier pair already took.
    """
    sections: list[tuple[str, str | None, str]] = []  # heading, first prose paragraph, source
    for path in _rst_sources(sources):
        source = path.relative_to(sources).as_posix().removesuffix(".txt")
        lines = path.read_text(encoding="utf-8").splitlines()
        headings = rst_headings(lines)
        for n, (_, body, raw_title) in enumerate(headings):
            end = headings[n + 1][0] if n + 1 < len(headings) else len(lines)
            prose = (strip_inline_markup(raw) for raw in rst_paragraphs(lines[body:end]))
            paragraph = next((text for text in prose if _is_prose(text)), None)
            sections.append((strip_inline_markup(raw_title), paragraph, source))
    # Counted over every heading, with or without prose: a repeated one is no unique query.
    occurrences = Counter(heading.casefold() for heading, _, _ in sections)
    used: set[str] = set()
    records: list[Record] = []
    for heading, paragraph, source in sections:
        if paragraph is None or paragraph in used or occurrences[heading.casefold()] > 1:
            continue
        if not _is_topical_heading(heading):
            continue
        used.add(paragraph)
        records.append(
            Record(
                id=f"pysec-{len(records) + 1:06d}",
                text=paragraph,
                metadata={"heading": heading, "source": source},
            )
        )
    return records


# --- output ----------------------------------------------------------------------------------


def write_jsonl_gz(path: Path, records: Iterable[Record]) -> int:
    """Write records as canonical gzipped JSON lines, atomically; return the byte size."""
    lines = [
        json.dumps(
            {"id": r.id, "text": r.text, "metadata": r.metadata},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for r in records
    ]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write("".join(lines).encode("utf-8"))
    tmp.replace(path)
    return path.stat().st_size


def _missing_packages(args: argparse.Namespace) -> list[str]:
    """What of the Debian packages' files is absent, one line each."""
    expected = (
        (args.kjv / "ot.bzv", "the KJV SWORD module (package sword-text-kjv)"),
        (args.web / "ot.bzv", "the WEB SWORD module (package sword-text-web)"),
        (args.pydoc / "library", "the Python 3.11 doc sources (package python3.11-doc)"),
    )
    return [f"{what} not found at {path}" for path, what in expected if not path.exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--kjv", type=Path, default=DEFAULT_KJV, help="KJV zText module dir")
    parser.add_argument("--web", type=Path, default=DEFAULT_WEB, help="WEB zText module dir")
    parser.add_argument("--pydoc", type=Path, default=DEFAULT_PYDOC, help="Python doc _sources")
    parser.add_argument("--max-anchors", type=int, default=MAX_ANCHORS, help="anchor cap")
    args = parser.parse_args(argv)
    missing = _missing_packages(args)
    if missing:
        for line in missing:
            print(f"error: {line}", file=sys.stderr)
        print(f"Install the packages first: {APT_HINT}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    kjv, web = aligned_bibles(args.kjv, args.web)
    anchors = pydoc_anchors(args.pydoc, args.max_anchors)
    sections = pydoc_sections(args.pydoc)
    total = 0
    outputs = (("kjv", kjv), ("web", web), ("pydoc_anchors", anchors), ("pydoc_sections", sections))
    for name, records in outputs:
        size = write_jsonl_gz(args.out / f"{name}.jsonl.gz", records)
        total += size
        print(f"{name}: {len(records)} records, {size:,} bytes")
    print(f"total: {total:,} bytes in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
