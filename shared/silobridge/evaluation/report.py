"""Present an evaluation: a terminal table, a JSON file, and a retention-vs-anchors PNG plot."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from silobridge.core.errors import ConfigError
from silobridge.evaluation.runner import EvalResult, EvalRow

TABLE_WIDTH = 150


def result_table(result: EvalResult) -> Table:
    config = result.config
    dataset = result.dataset
    table = Table(
        title=(
            f"{config.source_model} → {config.target_model} on {dataset['name']} "
            f"({dataset['queries']} queries, {dataset['corpus']} documents)"
        )
    )
    headers = ("method", "kind", "receiving", "anchors", "count", "nDCG@10", "R@10", "MRR@10")
    for header in headers:
        table.add_column(header, justify="left" if header in headers[:4] else "right")
    identity = result.config.protocol == "identity"
    extra = ("identity R@1", "identity MRR") if identity else ()
    for header in ("retention", "of achievable", *extra, "ARR@10", "train s", "apply µs"):
        table.add_column(header, justify="right")
    for row in result.rows:
        table.add_row(
            row.method,
            row.kind or "",
            row.receiving,
            row.anchors or "",
            "" if row.anchor_count is None else str(row.anchor_count),
            _num(row.ndcg),
            _num(row.recall),
            _num(row.mrr),
            _num(row.retention_ndcg),
            _num(row.retention_achievable_ndcg),
            *((_num(row.identity_r1), _num(row.identity_mrr)) if identity else ()),
            _num(row.arr),
            _num(row.train_s, 2),
            _num(row.apply_us, 1),
        )
    return table


def print_result(result: EvalResult, console: Console) -> None:
    # Piped output defaults to 80 columns, which would truncate every number; a file or a log
    # has no width limit worth honouring, so give the table the room it needs there.
    if not console.is_terminal and console.width < TABLE_WIDTH:
        console = Console(file=console.file, width=TABLE_WIDTH, no_color=console.no_color)
    console.print(result_table(result))


def write_json(result: EvalResult, path: Path) -> None:
    try:
        path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc


def write_plot(result: EvalResult, path: Path) -> None:
    """Retention of nDCG@10 (ARR@10 for an unlabelled set) against anchor count, log x-axis."""
    # The object API with an explicit Agg canvas: no global pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labelled = bool(result.dataset.get("labelled", True))
    metric = "retention of nDCG@10" if labelled else "ARR@10"
    # One colour per kind, one line style per anchor source, two-stage dotted-dashed: a chart
    # with a dozen lines stays readable, and the legend sits beside the axes, not on the data.
    lines: dict[tuple[str, str, bool], list[tuple[int, float]]] = defaultdict(list)
    for row in result.rows:
        value = _plotted(row, labelled)
        # Receiving-side rows are points of their own in the table, not lines over counts here.
        if row.anchor_count is None or value is None or row.receiving:
            continue
        # Group auto by what was asked, not the per-count winner, so it stays one line.
        kind = (row.kind or "").split("→")[0]
        lines[(kind, row.anchors or "", row.method == "two-stage")].append(
            (row.anchor_count, value)
        )
    kinds = list(dict.fromkeys(key[0] for key in lines))
    sources = list(dict.fromkeys(key[1] for key in lines))
    colours = [f"C{i % 10}" for i in range(len(kinds))]
    styles = ["-", "--", ":", (0, (5, 1, 1, 1))]
    markers = ["o", "s", "^", "D"]
    figure = Figure(figsize=(10, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (kind, source, two_stage), points in lines.items():
        points.sort()
        which = sources.index(source) % len(styles)
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle="-." if two_stage else styles[which],
            marker=markers[which],
            color="black" if two_stage else colours[kinds.index(kind)],
            alpha=0.6 if two_stage else 1.0,
            label=f"{kind} ({source})" + (" two-stage" if two_stage else ""),
        )
    axes.axhline(1.0, color="black", linewidth=1, label="native (upper bound)")
    baseline = next((row for row in result.rows if row.method == "none"), None)
    if baseline is not None and _plotted(baseline, labelled) is not None:
        axes.axhline(_plotted(baseline, labelled) or 0.0, color="grey", linestyle=":", label="none")
    axes.set_xscale("log")
    axes.set_xlabel("anchor count")
    axes.set_ylabel(metric)
    axes.set_ylim(bottom=0.0)
    axes.grid(True, which="both", alpha=0.3)
    config = result.config
    axes.set_title(
        f"{config.source_model} → {config.target_model} on {result.dataset['name']}: {metric}"
    )
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    try:
        figure.savefig(path, format="png", dpi=120)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc


def _plotted(row: EvalRow, labelled: bool) -> float | None:
    return row.retention_ndcg if labelled else row.arr


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
