"""``silobridge anchors …``: build and list the consortium's public anchor sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from silobridge.core.cli_support import (
    fail,
    print_json,
    run_or_exit,
    stderr_console,
    stdout_console,
)

anchors_app = typer.Typer(
    no_args_is_help=True, help="Build and list the consortium's public anchor sets."
)
out = stdout_console()
err = stderr_console()

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path to coordinator.toml.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SHA_PREFIX = 12


def _anchors_root(config: Path) -> Path:
    from silobridge.coordinator.config import load_coordinator_config

    return load_coordinator_config(config).state_dir / "anchors"


@anchors_app.command()
def build(
    config: ConfigOption,
    name: Annotated[str, typer.Option("--name", help="Anchor set name, e.g. 'public'.")],
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="Texts: .txt (one per line), .jsonl, or .gz of either."),
    ] = None,
    synthetic: Annotated[
        int | None,
        typer.Option(help="Generate N public texts instead (see --generator).", min=1),
    ] = None,
    generator: Annotated[
        str | None,
        typer.Option(
            help="What --synthetic generates: words (random word strings, the default), zipf "
            "(frequency-weighted words), sentences (real English sentences), chain (a "
            "word-pair chain over them) or mix (the three in turn)."
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for --synthetic (default 0).", min=0)
    ] = None,
) -> None:
    """Store a new version of an anchor set; the same texts as the newest version change nothing."""
    from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
    from silobridge.coordinator.anchors.files import read_anchor_file as read_texts
    from silobridge.coordinator.anchors.validation import MAX_ANCHOR_TEXTS

    if (from_file is None) == (synthetic is None):
        fail("give exactly one of --from FILE or --synthetic N")
    if seed is not None and synthetic is None:
        fail("--seed only applies to --synthetic N")
    if generator is not None and synthetic is None:
        fail("--generator only applies to --synthetic N")
    catalogue = run_or_exit(lambda: AnchorCatalogue(_anchors_root(config)))
    texts: list[str] | tuple[str, ...]
    if synthetic is not None:
        # Refuse before generating: N strings are built in memory first.
        if synthetic > MAX_ANCHOR_TEXTS:
            fail(f"--synthetic {synthetic} is over the limit of {MAX_ANCHOR_TEXTS} texts")
        from silobridge.coordinator.anchors.generators import WORDS, generate_anchor_texts

        used_seed = 0 if seed is None else seed
        used_generator = WORDS if generator is None else generator
        texts = run_or_exit(lambda: generate_anchor_texts(used_generator, synthetic, used_seed))
        # Word sets keep their original source string, so manifests built before there were
        # other generators still read the same.
        label = "synthetic" if used_generator == WORDS else used_generator
        source = f"{label}:{synthetic}:seed={used_seed}"
    else:
        assert from_file is not None
        texts = run_or_exit(lambda: read_texts(from_file))
        source = from_file.name
    info, created = run_or_exit(lambda: catalogue.build(name, texts, source=source))
    if created:
        where = catalogue.version_dir(info.name, info.version)
        out.print(
            f"anchor set {escape(info.name)} {info.version}: {info.count} texts, "
            f"sha256 {info.sha256[:SHA_PREFIX]}…, written to {escape(str(where))}",
            emoji=False,
        )
    else:
        out.print(
            f"anchor set {escape(info.name)} unchanged (same texts as {info.version}, "
            f"sha256 {info.sha256[:SHA_PREFIX]}…)",
            emoji=False,
        )


@anchors_app.command("list")
def list_sets(config: ConfigOption, as_json: JsonOption = False) -> None:
    """List every version of every anchor set in the coordinator's state directory.

    --json: an array of {name, version, count, sha256 (whole), created_at, source}.
    """
    from silobridge.coordinator.anchors.catalogue import AnchorCatalogue

    root = run_or_exit(lambda: _anchors_root(config))
    sets = run_or_exit(lambda: AnchorCatalogue(root).list())
    if as_json:
        print_json(sets)
        return
    if not sets:
        err.print(
            f"no anchor sets in {escape(str(root))}; build one with "
            "`silobridge anchors build --name NAME --synthetic N`",
            emoji=False,
        )
        return
    table = Table(title="anchor sets")
    for column in ("name", "version", "texts", "sha256", "created", "source"):
        # fold, not ellipsis: a cut-off timestamp or file name is worse than a wrapped one.
        table.add_column(column, overflow="fold")
    for info in sets:
        # Text cells: neither markup nor emoji codes apply (":100:" in a source is not 💯).
        table.add_row(
            *(
                Text(cell)
                for cell in (
                    info.name,
                    info.version,
                    str(info.count),
                    info.sha256[:SHA_PREFIX],
                    info.created_at,
                    info.source,
                )
            )
        )
    out.print(table)
