"""The anchor-set catalogue: versioned, idempotent, verified on load; anchor files and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.anchors.cli import anchors_app
from silobridge.coordinator.anchors.files import read_anchor_file
from silobridge.coordinator.anchors.validation import (
    MAX_ANCHOR_TEXT_CHARS,
    MAX_ANCHOR_TEXTS,
    anchor_texts_sha256,
)
from silobridge.core.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

TEXTS = ["the river runs north", "a shepherd counts sheep", "functions return values"]


def reference_sha256(texts: list[str]) -> str:
    """The documented encoding, written independently: u64 big-endian byte length, then bytes."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


# --- build and get ------------------------------------------------------------------------------


def test_build_then_get_returns_the_texts_in_order(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path / "anchors")
    info, created = catalogue.build("public", TEXTS, source="hand-made")
    assert created
    assert (info.name, info.version, info.count, info.source) == ("public", "v1", 3, "hand-made")
    assert info.sha256 == reference_sha256(TEXTS)
    assert info.created_at.endswith("Z")

    loaded = catalogue.get("public")
    assert loaded.texts == tuple(TEXTS)
    assert loaded.info == info
    assert catalogue.get("public", "v1") == loaded
    assert catalogue.info("public") == info
    assert catalogue.list() == [info]
    manifest = json.loads((tmp_path / "anchors/public/v1/manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["sha256"] == info.sha256


def test_texts_are_stripped_and_duplicates_dropped_keeping_the_first(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    info, _ = catalogue.build("public", ["  b  ", "a", "b", "c\n", "a"], source="x")
    assert catalogue.get("public").texts == ("b", "a", "c")
    assert info.count == 3
    assert info.sha256 == reference_sha256(["b", "a", "c"])


def test_rebuilding_the_same_texts_writes_no_new_version(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    first, created = catalogue.build("public", TEXTS, source="one")
    again, created_again = catalogue.build("public", [f" {t} " for t in TEXTS], source="two")
    assert created and not created_again
    assert again == first  # the existing version, its original source included
    assert sorted(p.name for p in (tmp_path / "public").iterdir()) == ["v1"]


def test_changed_texts_become_the_next_version_and_old_ones_stay(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    v1, _ = catalogue.build("public", TEXTS, source="one")
    v2, created = catalogue.build("public", [*TEXTS, "one more"], source="two")
    assert created and v2.version == "v2" and v2.sha256 != v1.sha256
    # Going back to v1's texts is a change relative to the newest, so it is v3.
    v3, created = catalogue.build("public", TEXTS, source="three")
    assert created and v3.version == "v3" and v3.sha256 == v1.sha256
    assert catalogue.get("public").info == v3
    assert catalogue.get("public", "v2").texts == (*TEXTS, "one more")
    assert [i.version for i in catalogue.list()] == ["v1", "v2", "v3"]


def test_concurrent_builds_each_get_their_own_version(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    batches = [[f"batch {n} text {i}" for i in range(50)] for n in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda b: catalogue.build("public", b, source="t"), batches))
    assert all(created for _, created in results)
    assert sorted(info.version for info, _ in results) == [f"v{n}" for n in range(1, 7)]
    for batch, (info, _) in zip(batches, results, strict=True):
        assert catalogue.get("public", info.version).texts == tuple(batch)


def test_versions_order_numerically_not_as_strings(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    for n in range(11):
        catalogue.build("public", [f"text {n}"], source="loop")
    assert catalogue.get("public").info.version == "v11"
    assert catalogue.get("public").texts == ("text 10",)
    assert [i.version for i in catalogue.list()] == [f"v{n}" for n in range(1, 12)]


def test_list_is_sorted_by_name_and_empty_without_a_root(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path / "missing")
    assert catalogue.list() == []
    catalogue.build("zeta", ["z"], source="s")
    catalogue.build("alpha", ["a"], source="s")
    assert [i.name for i in catalogue.list()] == ["alpha", "zeta"]


def test_a_leftover_staging_directory_from_a_crash_is_invisible(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    catalogue.build("public", TEXTS, source="s")
    # What a crash between staging and rename leaves behind: a half-written hidden directory.
    half = tmp_path / "public" / ".v2.abc123.tmp"
    half.mkdir()
    (half / "texts.jsonl.gz").write_bytes(b"\x1f\x8b")
    assert [i.version for i in catalogue.list()] == ["v1"]
    assert catalogue.get("public").info.version == "v1"
    info, created = catalogue.build("public", ["new"], source="s")
    assert created and info.version == "v2"
    assert catalogue.get("public").texts == ("new",)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "Public", "-lead", ".hidden", "../up", "a/b", "a" * 64, "sp ace", "é", "x\n"]
)
def test_bad_names_are_refused_before_touching_the_disk(tmp_path: Path, name: str) -> None:
    root = tmp_path / "anchors"
    catalogue = AnchorCatalogue(root)
    with pytest.raises(InvalidArgument, match="anchor set name"):
        catalogue.build(name, TEXTS, source="s")
    with pytest.raises(InvalidArgument, match="anchor set name"):
        catalogue.get(name)
    assert not root.exists()


@pytest.mark.parametrize("version", ["1", "v", "v1/..", "../v1", "V1", "v1 ", "v-1", "latest"])
def test_bad_versions_are_refused(tmp_path: Path, version: str) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    catalogue.build("public", TEXTS, source="s")
    with pytest.raises(InvalidArgument, match="version"):
        catalogue.get("public", version)


def test_empty_blank_and_overlong_texts_are_refused_naming_the_index(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    with pytest.raises(InvalidArgument, match="no anchor texts"):
        catalogue.build("public", [], source="s")
    with pytest.raises(InvalidArgument, match="index 1 is blank"):
        catalogue.build("public", ["ok", "  \t "], source="s")
    long_text = "x" * (MAX_ANCHOR_TEXT_CHARS + 1)
    with pytest.raises(InvalidArgument, match="index 2 has 2001 characters"):
        catalogue.build("public", ["ok", "fine", long_text], source="s")
    # Exactly at the limit is fine.
    info, _ = catalogue.build("public", ["x" * MAX_ANCHOR_TEXT_CHARS], source="s")
    assert info.count == 1


def test_too_many_distinct_texts_are_refused_but_duplicates_do_not_count(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    with pytest.raises(ResourceExhausted, match=str(MAX_ANCHOR_TEXTS)):
        catalogue.build("big", [str(n) for n in range(MAX_ANCHOR_TEXTS + 1)], source="s")
    assert catalogue.list() == []
    info, _ = catalogue.build("dups", ["same"] * (MAX_ANCHOR_TEXTS + 1), source="s")
    assert info.count == 1


# --- not found and corruption -----------------------------------------------------------------


def test_not_found_lists_what_exists(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    with pytest.raises(NotFound, match="none"):
        catalogue.get("public")
    catalogue.build("public", TEXTS, source="s")
    catalogue.build("public", ["other"], source="s")
    catalogue.build("extra", TEXTS, source="s")
    with pytest.raises(NotFound) as missing_set:
        catalogue.get("missing")
    assert "extra, public" in missing_set.value.message
    with pytest.raises(NotFound) as missing_version:
        catalogue.info("public", "v9")
    assert "v1, v2" in missing_version.value.message


def _rewrite_texts(path: Path, texts: list[str]) -> None:
    path.write_bytes(gzip.compress("".join(json.dumps(t) + "\n" for t in texts).encode()))


def test_edited_texts_are_detected_as_corrupt(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    catalogue.build("public", TEXTS, source="s")
    texts_file = tmp_path / "public/v1/texts.jsonl.gz"
    _rewrite_texts(texts_file, [TEXTS[0], "a sneaky edit", TEXTS[2]])
    with pytest.raises(FailedPrecondition, match=r"anchor set public v1 is corrupt: .*hash"):
        catalogue.get("public")
    with pytest.raises(FailedPrecondition, match="corrupt"):
        catalogue.info("public", "v1")
    # A rebuild of the original texts must not call the damaged version "unchanged".
    with pytest.raises(FailedPrecondition, match="corrupt"):
        catalogue.build("public", TEXTS, source="s")

    _rewrite_texts(texts_file, TEXTS[:2])
    with pytest.raises(FailedPrecondition, match="manifest says 3 texts but 2"):
        catalogue.get("public")

    texts_file.write_bytes(b"not gzip at all")
    with pytest.raises(FailedPrecondition, match="corrupt"):
        catalogue.get("public")
    texts_file.unlink()
    with pytest.raises(FailedPrecondition, match="missing"):
        catalogue.get("public")


def test_an_edited_manifest_is_detected_as_corrupt(tmp_path: Path) -> None:
    catalogue = AnchorCatalogue(tmp_path)
    catalogue.build("public", TEXTS, source="s")
    manifest_file = tmp_path / "public/v1/manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "sha256": "0" * 64}))
    with pytest.raises(FailedPrecondition, match="public v1 is corrupt"):
        catalogue.get("public")
    manifest_file.write_text(json.dumps({**manifest, "name": "other"}))
    with pytest.raises(FailedPrecondition, match="describes other v1"):
        catalogue.get("public")
    manifest_file.write_text("{truncated")
    with pytest.raises(FailedPrecondition, match="corrupt"):
        catalogue.list()


def test_symlinked_sets_and_versions_are_refused(tmp_path: Path) -> None:
    elsewhere = AnchorCatalogue(tmp_path / "elsewhere")
    elsewhere.build("public", TEXTS, source="s")
    root = tmp_path / "anchors"
    catalogue = AnchorCatalogue(root)
    catalogue.build("real", ["r"], source="s")
    (root / "linked").symlink_to(tmp_path / "elsewhere/public")
    (root / "real" / "v2").symlink_to(tmp_path / "elsewhere/public/v1")
    assert [(i.name, i.version) for i in catalogue.list()] == [("real", "v1")]
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        catalogue.get("linked")
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        catalogue.build("linked", TEXTS, source="s")
    with pytest.raises(FailedPrecondition, match="symbolic link"):
        catalogue.get("real", "v2")


# --- the hash -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (["ab", "c"], ["a", "bc"]),
        (["abc"], ["a", "b", "c"]),
        ([""], []),
        (["a", ""], ["a"]),
        (["a", "b"], ["b", "a"]),
        (["\x00"], [""]),
        (["a\nb"], ["a", "b"]),
        (["é"], ["e\u0301"]),
    ],
)
def test_hash_tells_apart_lists_with_the_same_concatenation(
    left: list[str], right: list[str]
) -> None:
    assert anchor_texts_sha256(left) != anchor_texts_sha256(right)


texts_lists = st.lists(st.text(max_size=30), max_size=8)


@settings(max_examples=200, deadline=None)
@given(texts_lists, st.data())
def test_hash_is_stable_and_splitting_a_text_changes_it(
    texts: list[str], data: st.DataObject
) -> None:
    assert anchor_texts_sha256(texts) == anchor_texts_sha256(list(texts)) == reference_sha256(texts)
    assert anchor_texts_sha256(tuple(texts)) == anchor_texts_sha256(texts)
    if not texts:
        return
    # Re-cut the same characters at a different place: same concatenation, different list.
    index = data.draw(st.integers(0, len(texts) - 1))
    cut = data.draw(st.integers(0, len(texts[index])))
    recut = [*texts[:index], texts[index][:cut], texts[index][cut:], *texts[index + 1 :]]
    assert "".join(recut) == "".join(texts)
    assert anchor_texts_sha256(recut) != anchor_texts_sha256(texts)


anchor_text = st.text(min_size=1, max_size=60).map(str.strip).filter(bool)


@settings(max_examples=25, deadline=None)
@given(st.lists(anchor_text, min_size=1, max_size=12, unique=True))
def test_any_valid_texts_round_trip_through_the_catalogue(texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        catalogue = AnchorCatalogue(Path(root))
        info, _ = catalogue.build("prop", texts, source="hypothesis")
        loaded = catalogue.get("prop")
        assert loaded.texts == tuple(texts)
        assert loaded.info.sha256 == info.sha256 == reference_sha256(texts)


# --- anchor files -----------------------------------------------------------------------------


def test_txt_and_jsonl_files_plain_and_gzipped(tmp_path: Path) -> None:
    txt = "first line\n\n  second line  \r\n   \nthird\n"
    (tmp_path / "a.txt").write_text(txt)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(txt.encode()))
    jsonl = "\n".join(
        [json.dumps("first line"), "", json.dumps({"text": " second line", "id": 7}), '"third"']
    )
    (tmp_path / "a.jsonl").write_text(jsonl)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
    expected = ["first line", "second line", "third"]
    for name in ("a.txt", "a.txt.gz", "a.jsonl", "a.jsonl.gz"):
        assert read_anchor_file(tmp_path / name) == expected, name


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ('"ok"\n{not json\n', 2),
        ('"ok"\n\n42\n', 3),
        ('{"text": "ok"}\n{"body": "no text key"}\n', 2),
        ('"ok"\n"   "\n', 2),
        (f'"ok"\n"ok"\n"{"y" * (MAX_ANCHOR_TEXT_CHARS + 1)}"\n', 3),
    ],
)
def test_a_bad_jsonl_line_is_named_by_file_and_number(
    tmp_path: Path, content: str, line: int
) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(content.encode()))
    with pytest.raises(InvalidArgument, match=re.escape(f"bad.jsonl.gz:{line}: ")):
        read_anchor_file(path)


def test_bad_anchor_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("nope.txt does not exist")):
        read_anchor_file(tmp_path / "nope.txt")
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(InvalidArgument, match=re.escape("latin1.txt:2: not valid UTF-8")):
        read_anchor_file(tmp_path / "latin1.txt")
    (tmp_path / "plain.txt.gz").write_text("not gzipped")
    with pytest.raises(InvalidArgument, match="not a valid gzip file"):
        read_anchor_file(tmp_path / "plain.txt.gz")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(InvalidArgument, match="holds no texts"):
        read_anchor_file(tmp_path / "blank.txt")
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(InvalidArgument, match="unknown type"):
        read_anchor_file(tmp_path / "a.csv")


@settings(max_examples=50, deadline=None)
@given(st.lists(anchor_text, min_size=1, max_size=10))
def test_jsonl_files_carry_any_text(texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "anchors.jsonl"
        path.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        assert read_anchor_file(path) == texts


# --- the CLI -----------------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text('[coordinator]\nstate_dir = "state"\n[server]\ninsecure = true\n')
    return path


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_cli_builds_synthetic_and_file_sets_and_lists_them(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()
    args = ["build", "--config", str(config), "--name", "public", "--synthetic", "50"]
    first = runner.invoke(anchors_app, args)
    assert first.exit_code == 0, first.output
    assert "anchor set public v1: 50 texts" in _flat(first.output)
    assert str(tmp_path / "state/anchors/public/v1") in _flat(first.output)
    catalogue = AnchorCatalogue(tmp_path / "state/anchors")
    assert catalogue.info("public").source == "synthetic:50:seed=0"

    again = runner.invoke(anchors_app, args)
    assert again.exit_code == 0, again.output
    assert "unchanged (same texts as v1" in _flat(again.output)

    # ":100:" is also a rich emoji code; the source must still print as written.
    reseeded = runner.invoke(anchors_app, [*args[:-1], "100", "--seed", "3"])
    assert reseeded.exit_code == 0, reseeded.output
    assert "anchor set public v2: 100 texts" in _flat(reseeded.output)

    (tmp_path / "mine.txt").write_text("alpha beta\ngamma delta\n")
    from_file = runner.invoke(
        anchors_app,
        ["build", "-c", str(config), "--name", "mine", "--from", str(tmp_path / "mine.txt")],
    )
    assert from_file.exit_code == 0, from_file.output
    assert catalogue.get("mine").texts == ("alpha beta", "gamma delta")
    assert catalogue.info("mine").source == "mine.txt"

    listed = runner.invoke(anchors_app, ["list", "--config", str(config)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    rows = [line for line in listed.output.splitlines() if "public" in line or "mine" in line]
    assert len(rows) == 3
    assert all(info.sha256[:12] in listed.output for info in catalogue.list())
    assert "synthetic:100:seed=3" in listed.output


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runner = CliRunner()
    base = ["build", "--config", str(config), "--name", "public"]

    neither = runner.invoke(anchors_app, base)
    both = runner.invoke(anchors_app, [*base, "--synthetic", "5", "--from", "x.txt"])
    for result in (neither, both):
        assert result.exit_code == 1
        assert "exactly one of --from FILE or --synthetic N" in _flat(result.output)

    bad_name = runner.invoke(anchors_app, [*base[:-1], "Bad/Name", "--synthetic", "5"])
    assert bad_name.exit_code == 1
    assert "anchor set name" in _flat(bad_name.output)

    missing = runner.invoke(anchors_app, [*base, "--from", str(tmp_path / "gone.txt")])
    assert missing.exit_code == 1
    assert "gone.txt does not exist" in _flat(missing.output)

    empty = runner.invoke(anchors_app, ["list", "--config", str(config)])
    assert empty.exit_code == 0
    assert "no anchor sets" in _flat(empty.output)
