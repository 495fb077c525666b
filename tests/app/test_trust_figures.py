"""Figures people read: thin margins, gaps in image grids drawn as background, labelled axes with
units, integer ticks for epochs and counts. Each property is measured on the drawn or saved figure."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from ppl_vae.app import plots

DPI = 120


def _images(n, side=8, channels=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, side, side) if channels is None else (n, channels, side, side)
    return 0.2 + 0.6 * torch.rand(*shape, generator=g)  # never exactly the background or the frame


HISTORY = [{"epoch": e, "train_elbo": -100.0 + 10 * e, "heldout_elbo": -95.0 + 9 * e} for e in (1, 2, 3)]


def _figures():
    rng = np.random.default_rng(0)
    return {
        "samples": lambda: plots.samples_figure(_images(60, 28)),
        "reconstructions": lambda: plots.reconstructions_figure(_images(20, 28), _images(20, 28, seed=1)),
        "elbo": lambda: plots.elbo_figure(HISTORY),
        "khat": lambda: plots.khat_figure(rng.normal(0.4, 0.2, 300), {"good": 0.5, "ok": 0.7, "bad": 1.0}),
        "sbc": lambda: plots.rank_histograms_figure(rng.integers(0, 101, (200, 5)), 100, 20, rng.uniform(size=5)),
        "pair": lambda: plots.pair_figure(rng.normal(size=(300, 3)), rng.normal(size=(300, 3)), "observation 0"),
    }


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def _visible_tick_labels(ax, axis):
    which = ax.xaxis if axis == "x" else ax.yaxis
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    return [
        t.get_text().replace("\u2212", "-")
        for t, v in zip(which.get_ticklabels(), which.get_ticklocs())
        if low <= v <= high and t.get_text()
    ]


def _all_integers(labels):
    return bool(labels) and all(label.lstrip("-").isdigit() for label in labels)


# --- margins ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(_figures()))
def test_saved_figure_has_no_blank_band_at_its_edges(tmp_path, name):
    """The blank margin on each side of the saved PNG, measured in pixels, is a thin pad (<= 10 px at
    120 dpi, 1/12 inch); before cropping it was 12 to 213 px."""
    path = tmp_path / f"{name}.png"
    plots.save_figure(_figures()[name](), path, dpi=DPI)
    image = imread(path)[..., :3]
    ink = np.abs(image - 1).max(-1) > 0.02
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    height, width = ink.shape
    margins = {"top": rows[0], "bottom": height - 1 - rows[-1], "left": cols[0], "right": width - 1 - cols[-1]}
    assert max(margins.values()) <= 10, margins


# --- image grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 3])
def test_cells_after_the_last_image_are_background_without_frames(channels):
    h = 8
    grid = plots.image_grid(_images(10, h, channels), ncol=4)  # 3 rows, the last holds 2 images
    background = 0.0 if channels is None else 1.0
    assert grid.shape[:2] == (3 * (h + 1) + 1, 4 * (h + 1) + 1)
    below_frame = 2 * (h + 1) + 1  # first pixel row inside row 3
    right_of_tile_2 = 2 * (h + 1) + 1  # just right of column 2's frame
    assert torch.all(grid[below_frame:, right_of_tile_2:] == background)
    assert torch.all(grid[2 * (h + 1), :] == plots.FRAME)  # the line above row 3: framed tiles
    assert torch.all(grid[below_frame:, 2 * (h + 1)] == plots.FRAME)  # the right edge of the last tile


def test_spacer_cells_are_background_and_real_tiles_keep_their_frames():
    h = 8
    images = _images(12, h)
    grid = plots.image_grid(images, ncol=6, spacers=[1, 4, 7, 10])  # two gap columns (1 and 4)
    for col in (1, 4):
        inside = slice(col * (h + 1) + 1, col * (h + 1) + 1 + h)
        assert torch.all(grid[:, inside] == 0.0)  # no image, no frame lines across it
    for index in (0, 2, 3, 5, 6, 8, 9, 11):
        r, c = divmod(index, 6)
        top, left = r * (h + 1), c * (h + 1)
        torch.testing.assert_close(grid[top + 1 : top + 1 + h, left + 1 : left + 1 + h, 0], images[index])
        assert torch.all(grid[top, left : left + h + 2] == plots.FRAME)  # framed above
        assert torch.all(grid[top : top + h + 2, left] == plots.FRAME)  # framed on the left


def test_each_reconstruction_stays_under_its_input():
    inputs, recon = _images(20, 8), _images(20, 8, seed=1)
    fig = plots.reconstructions_figure(inputs, recon)
    shown = torch.as_tensor(np.asarray(fig.axes[0].images[0].get_array()))
    h = 8
    assert shown.shape == (4 * (h + 1) + 1, 16 * (h + 1) + 1)  # 2 groups x (inputs, reconstructions)
    for k in range(16, 20):  # the short last group
        col = (k - 16) * (h + 1) + 1
        torch.testing.assert_close(shown[2 * (h + 1) + 1 : 2 * (h + 1) + 1 + h, col : col + h], inputs[k])
        torch.testing.assert_close(shown[3 * (h + 1) + 1 : 3 * (h + 1) + 1 + h, col : col + h], recon[k])
    assert torch.all(shown[2 * (h + 1) + 1 :, 4 * (h + 1) + 1 :] == 0.0)  # the padding of that group: background


# --- labels and ticks -------------------------------------------------------------------------------


def test_elbo_epoch_ticks_are_integers_and_units_are_named():
    fig = _drawn(plots.elbo_figure(HISTORY))
    ax = fig.axes[0]
    labels = _visible_tick_labels(ax, "x")
    assert _all_integers(labels), labels
    assert {"1", "2", "3"} <= set(labels)
    assert ax.get_xlabel() == "epoch"
    assert "nats per example" in ax.get_ylabel()


@pytest.mark.parametrize("epochs", [1, 2, 7, 50])
def test_epoch_ticks_are_integers_for_any_length(epochs):
    history = [{"epoch": e, "train_elbo": -100.0 + e, "heldout_elbo": -99.0 + e} for e in range(1, epochs + 1)]
    ax = _drawn(plots.elbo_figure(history)).axes[0]
    labels = _visible_tick_labels(ax, "x")
    assert _all_integers(labels), labels
    if epochs <= 10:  # short runs: every epoch is a tick
        assert labels == [str(e) for e in range(1, epochs + 1)], labels


def test_sbc_rank_histograms_are_labelled_with_integer_counts():
    rng = np.random.default_rng(0)
    fig = _drawn(plots.rank_histograms_figure(rng.integers(0, 101, (200, 5)), 100, 20, rng.uniform(size=5)))
    assert len(fig.axes) == 5
    for j, ax in enumerate(fig.axes):
        assert "rank of the true value among the" in ax.get_xlabel() and "guide draws" in ax.get_xlabel()
        assert ax.get_ylabel() == "simulations"
        assert ax.get_title().startswith(f"z[{j}]")
        assert _all_integers(_visible_tick_labels(ax, "y")), _visible_tick_labels(ax, "y")


def test_every_data_axis_of_every_figure_is_labelled():
    for name, make in _figures().items():
        fig = make()
        for ax in fig.axes:
            if not ax.axison:  # image panels
                continue
            rows, cols = ax.get_subplotspec().get_geometry()[:2]
            spec = ax.get_subplotspec()
            bottom = spec.rowspan.stop == rows
            left = spec.colspan.start == 0
            if name == "pair":  # corner plot: outer axes and diagonals
                diagonal = spec.rowspan.start == spec.colspan.start
                assert ax.get_xlabel() or not bottom, (name, ax.get_title())
                assert ax.get_ylabel() or not (left or diagonal), name
            else:
                assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())


def test_khat_histogram_counts_are_integers():
    fig = _drawn(_figures()["khat"]())
    assert _all_integers(_visible_tick_labels(fig.axes[1], "y"))
