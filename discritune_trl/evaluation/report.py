"""Markdown tables of metrics in the layout of the paper's Tables 1-3.

- Table 1 layout (one number per model and dataset): `markdown_table({model: {dataset: p_at_1}})`.
- Tables 2-3 layout (a block of metrics per dataset): `markdown_metric_blocks({dataset: {model: metrics}})`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real


# Short column headers used by the paper (B@4, M, C, S) and for the other metrics of this package.
METRIC_HEADERS = {
    "precision_at_1": "P@1",
    "recall_at_1": "R@1",
    "recall_at_5": "R@5",
    "recall_at_10": "R@10",
    "bleu_1": "B@1",
    "bleu_2": "B@2",
    "bleu_3": "B@3",
    "bleu_4": "B@4",
    "meteor": "M",
    "rouge_l": "R-L",
    "cider": "C",
    "spice": "S",
    "imagecode_accuracy": "ImageCoDe",
}
PAPER_CAPTION_COLUMNS = ("bleu_4", "meteor", "cider", "spice")


def _format_cell(value, scale: float, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, Real):
        return str(value).replace("|", "\\|")
    if isinstance(value, int):
        return str(value)  # counts are not scaled
    return f"{value * scale:.{digits}f}"


def markdown_table(
    rows: Mapping[str, Mapping[str, object]],
    columns: Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    row_label: str = "Model",
    scale: float = 100.0,
    digits: int = 2,
) -> str:
    """Render `{row name: {column: value}}` as a GitHub markdown table.

    Args:
        rows (`Mapping[str, Mapping[str, object]]`): one entry per table row, in display order.
        columns (`Sequence[str]`, *optional*): columns to show, in order; defaults to every key seen, in
            first-seen order. A row without a column shows "–".
        headers (`Mapping[str, str]`, *optional*): display names per column; defaults to `METRIC_HEADERS`,
            then the column key itself.
        row_label (`str`, defaults to `"Model"`): header of the first column.
        scale (`float`, defaults to `100.0`): factor applied to float values (fractions to percentages,
            CIDEr-D to the paper's scale). Integers (counts) are printed as they are.
        digits (`int`, defaults to `2`): decimals for float values.

    Returns:
        The table as a string ending in a newline.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for values in rows.values() for key in values))
    headers = {**METRIC_HEADERS, **(headers or {})}
    lines = [
        "| " + " | ".join([row_label, *(headers.get(column, column) for column in columns)]) + " |",
        "|" + "---|" + "---:|" * len(columns),
    ]
    for name, values in rows.items():
        cells = [_format_cell(values.get(column), scale, digits) for column in columns]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def markdown_metric_blocks(
    results: Mapping[str, Mapping[str, Mapping[str, object]]],
    columns: Sequence[str] = PAPER_CAPTION_COLUMNS,
    heading_level: int = 3,
    **table_kwargs,
) -> str:
    """One titled table per dataset, models as rows: the layout of the paper's Tables 2, 3 and 5.

    Args:
        results (`Mapping[str, Mapping[str, Mapping[str, object]]]`): `{dataset: {model: metrics}}`.
        columns (`Sequence[str]`, defaults to `("bleu_4", "meteor", "cider", "spice")`): metrics shown.
        heading_level (`int`, defaults to `3`): markdown heading level of each dataset title.
        **table_kwargs: forwarded to `markdown_table` (`headers`, `scale`, `digits`, `row_label`).
    """
    blocks = [
        f"{'#' * heading_level} {dataset}\n\n{markdown_table(models, columns=columns, **table_kwargs)}"
        for dataset, models in results.items()
    ]
    return "\n".join(blocks)


def evaluation_report_markdown(
    results: Mapping[str, Mapping[str, Mapping[str, object]]], title: str = "Evaluation"
) -> str:
    """The full report of `examples/evaluate_captioner.py`, from `{dataset: {model: metrics}}`.

    Sections, each in the paper's layout: retrieval P@1 (Table 1: models x datasets), recall@k, captioning
    metrics per dataset (Tables 2-3: B@4, M, C, S), hard-distractor accuracy (Table 11) when computed, and
    the metrics that were skipped, with the reason.
    """

    def by_model(metric: str) -> dict[str, dict[str, object]]:
        table: dict[str, dict[str, object]] = {}
        for dataset, models in results.items():
            for model, metrics in models.items():
                if metric in metrics:
                    table.setdefault(model, {})[dataset] = metrics[metric]
        return table

    all_metrics = [metrics for models in results.values() for metrics in models.values()]
    candidates = sorted({m["num_candidates"] for m in all_metrics if "num_candidates" in m})
    sections = [f"# {title}\n"]
    p_at_1 = by_model("precision_at_1")
    if p_at_1:
        sections.append(f"## Text-to-image retrieval: P@1 with {'/'.join(map(str, candidates))} candidates (%)\n")
        sections.append(markdown_table(p_at_1, digits=1))
    recall_columns = [key for key in METRIC_HEADERS if key.startswith("recall_at_") and by_model(key)]
    if recall_columns:
        sections.append("## Text-to-image retrieval: recall@k over the whole test set (%)\n")
        recall_results = {
            dataset: {model: metrics for model, metrics in models.items() if recall_columns[0] in metrics}
            for dataset, models in results.items()
        }
        recall_results = {dataset: models for dataset, models in recall_results.items() if models}
        sections.append(markdown_metric_blocks(recall_results, columns=recall_columns, digits=1))
    caption_results = {
        dataset: {model: metrics for model, metrics in models.items() if "bleu_4" in metrics or "cider" in metrics}
        for dataset, models in results.items()
    }
    caption_results = {dataset: models for dataset, models in caption_results.items() if models}
    if caption_results:
        sections.append("## Captioning metrics (BLEU@4, METEOR, CIDEr, SPICE; x100)\n")
        sections.append(markdown_metric_blocks(caption_results))
    imagecode = by_model("imagecode_accuracy")
    if imagecode:
        sections.append("## Retrieval among hard distractors, 10 candidates (ImageCoDe-style, %)\n")
        sections.append(markdown_table(imagecode, digits=1))
    skipped = {reason for metrics in all_metrics for reason in (metrics.get("skipped") or {}).values()}
    if skipped:
        sections.append("## Skipped\n")
        sections.append("".join(f"- {reason}\n" for reason in sorted(skipped)))
    return "\n".join(sections)
