"""`silobridge silo ingest` on real files: bad lines named, good lines kept, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from silobridge.cli import app
from silobridge.evaluation.corpus import load_records

from .conftest import Pki, write_silo_config

pytestmark = pytest.mark.integration


def test_malformed_lines_are_named_and_every_good_line_is_kept(pki: Pki, tmp_path: Path) -> None:
    verses = load_records("kjv", limit=40)
    lines = [json.dumps({"id": v.id, "text": v.text}) for v in verses]
    lines.insert(3, "{not json")  # line 4
    lines.insert(10, json.dumps({"text": "no id here"}))  # line 11
    lines.insert(20, json.dumps({"id": "x", "text": ""}))  # line 21
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")

    runner = CliRunner()
    first = runner.invoke(app, ["silo", "ingest", "--config", str(config), str(source)])
    assert first.exit_code == 0, first.output
    output = " ".join(first.output.split())
    for number in (4, 11, 21):
        assert f"mixed.jsonl:{number}:" in output
    assert "40 new" in output
    assert "3 bad line(s)" in output

    second = runner.invoke(app, ["silo", "ingest", "--config", str(config), str(source)])
    assert second.exit_code == 0, second.output
    assert "0 new, 0 updated, 40 unchanged" in " ".join(second.output.split())

    search = runner.invoke(
        app, ["silo", "search", "--config", str(config), "--json", "-k", "40", verses[0].text]
    )
    assert search.exit_code == 0, search.output
    hits = json.loads(search.output)
    assert len(hits) == 40  # every good line, once: the index holds exactly the 40 verses
    assert hits[0]["doc_id"] == verses[0].id
