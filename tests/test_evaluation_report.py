from discritune_trl.evaluation.report import markdown_metric_blocks, markdown_table


def test_markdown_table_table1_layout():
    table = markdown_table(
        {
            "ClipCap-COCO": {"COCO": 0.742, "Flickr": 0.659},
            "DiscriTune-COCO": {"COCO": 0.848, "Flickr": 0.794, "note": "a|b"},
        },
        digits=1,
    )
    assert table == (
        "| Model | COCO | Flickr | note |\n"
        "|---|---:|---:|---:|\n"
        "| ClipCap-COCO | 74.2 | 65.9 | – |\n"
        "| DiscriTune-COCO | 84.8 | 79.4 | a\\|b |\n"
    )


def test_markdown_metric_blocks_table2_layout_counts_unscaled():
    text = markdown_metric_blocks(
        {"COCO": {"ClipCap-COCO": {"bleu_4": 0.326, "meteor": 0.275, "cider": 1.0855, "num_empty_predictions": 3}}},
        columns=("bleu_4", "meteor", "cider", "spice", "num_empty_predictions"),
        headers={"num_empty_predictions": "empty"},
    )
    assert text == (
        "### COCO\n\n"
        "| Model | B@4 | M | C | S | empty |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| ClipCap-COCO | 32.60 | 27.50 | 108.55 | – | 3 |\n"
    )


def test_evaluation_report_sections():
    from discritune_trl.evaluation.report import evaluation_report_markdown

    results = {
        "COCO": {
            "ClipCap": {"precision_at_1": 0.742, "recall_at_1": 0.3, "num_candidates": 100, "bleu_4": 0.326},
            "DiscriTune": {"precision_at_1": 0.848, "imagecode_accuracy": 0.34, "skipped": {"spice": "no jars."}},
        },
        "Flickr": {"ClipCap": {"precision_at_1": 0.659, "num_candidates": 100}},
    }
    report = evaluation_report_markdown(results)
    assert "## Text-to-image retrieval: P@1 with 100 candidates (%)" in report
    assert "| ClipCap | 74.2 | 65.9 |\n| DiscriTune | 84.8 | – |" in report
    assert "### Flickr" not in report  # no recall or captioning metrics for Flickr
    assert "| Model | R@1 |\n|---|---:|\n| ClipCap | 30.0 |" in report
    assert "| ClipCap | 32.60 | – | – | – |" in report
    assert "| DiscriTune | 34.0 |" in report
    assert report.endswith("## Skipped\n\n- no jars.\n")
