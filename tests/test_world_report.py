"""The main job's plots use matplotlib's object-oriented API and leave the process-wide backend alone."""

import matplotlib
from PIL import Image

from discritune_trl.world.report import plot_caption_grid, plot_training_curves


def test_plots_write_pngs_without_switching_the_backend(tmp_path):
    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, which the plots must not override
    try:
        logs = [{"step": step, "reward/mean": -1.0 / step, "retrieval/accuracy": 0.1 * step} for step in (1, 2, 3)]
        curves = plot_training_curves(logs, str(tmp_path / "curves.png"))
        images = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(3)]
        grid = plot_caption_grid(images, ["a"] * 3, ["b"] * 3, str(tmp_path / "grid.png"), columns=2)
        assert matplotlib.get_backend() == "svg"
        for path in (curves, grid):
            with Image.open(path) as image:
                assert image.format == "PNG" and image.width > 100
    finally:
        matplotlib.use(previous)
