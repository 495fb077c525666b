"""Colour images are drawn in colour: image grids of ``(N, 3, H, W)`` are RGB arrays with the images'
own pixels, shown without a colour map, and every image figure accepts them; grey stays ``gray_r``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ppl_vae.app import latent_figures, plots

RED, BLUE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def solid(n: int, colour=RED, side: int = 6) -> torch.Tensor:
    """``n`` images ``(3, side, side)`` of one colour."""
    return torch.tensor(colour).reshape(1, 3, 1, 1).expand(n, 3, side, side).clone()


def rendered(fig) -> np.ndarray:
    """The drawn figure as an RGB uint8 array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def share_of(pixels: np.ndarray, colour) -> float:
    """Share of the drawn pixels within 40/255 of ``colour``."""
    target = np.array(colour) * 255
    return float((np.abs(pixels.astype(float) - target).max(-1) <= 40).mean())


def test_a_red_grid_is_an_rgb_array_whose_tiles_stay_red():
    h = 6
    grid = plots.image_grid(solid(3, side=h), ncol=2)  # 2 x 2 cells, the last empty
    assert grid.shape == (2 * (h + 1) + 1, 2 * (h + 1) + 1, 3)
    for index in range(3):
        r, c = divmod(index, 2)
        top, left = r * (h + 1) + 1, c * (h + 1) + 1
        tile = grid[top : top + h, left : left + h]
        assert torch.equal(tile, torch.tensor(RED).expand(h, h, 3))
        assert torch.all(grid[top - 1, left - 1 : left + h + 1] == plots.FRAME)  # grey frame, equal channels
    empty = grid[h + 2 :, h + 2 :]
    assert torch.all(empty == plots.background_value(3))  # white, no frame


def test_show_grid_draws_rgb_without_a_colour_map_and_grey_with_gray_r():
    fig = plots.samples_figure(solid(4))
    image = fig.axes[0].images[0]
    assert np.asarray(image.get_array()).shape[-1] == 3  # RGB data: matplotlib applies no colour map
    drawn = rendered(fig)
    assert share_of(drawn, RED) > 0.3  # most of the figure is its red tiles
    grey = plots.samples_figure(torch.full((4, 1, 6, 6), 0.7))
    assert np.asarray(grey.axes[0].images[0].get_array()).ndim == 2
    assert grey.axes[0].images[0].get_cmap().name == "gray_r"
    assert share_of(rendered(grey), RED) == 0


def test_reconstructions_keep_each_row_in_its_colour():
    h, n = 6, 5
    fig = plots.reconstructions_figure(solid(n, RED, h), solid(n, BLUE, h))
    shown = torch.as_tensor(np.asarray(fig.axes[0].images[0].get_array()))
    assert shown.shape == (2 * (h + 1) + 1, n * (h + 1) + 1, 3)
    inputs_row, reconstructions_row = shown[1 : 1 + h, 1 : 1 + h], shown[h + 2 : 2 * h + 2, 1 : 1 + h]
    assert torch.equal(inputs_row, torch.tensor(RED).expand(h, h, 3))
    assert torch.equal(reconstructions_row, torch.tensor(BLUE).expand(h, h, 3))


def _colour_figures():
    side = 6
    return {
        "samples": lambda: plots.samples_figure(solid(9, side=side)),
        "reconstructions": lambda: plots.reconstructions_figure(solid(4, side=side), solid(4, BLUE, side)),
        "grid_figure": lambda: plots.grid_figure([(plots.image_grid(solid(4, side=side)), "red")], panel_width=3),
        "interpolation": lambda: latent_figures.interpolation_figure(solid(14, side=side).reshape(2, 7, 3, side, side)),
        "interpolation with inputs": lambda: latent_figures.interpolation_figure(
            solid(10, side=side).reshape(2, 5, 3, side, side), solid(4, BLUE, side).reshape(2, 2, 3, side, side)
        ),
        "traversal": lambda: latent_figures.traversal_figure(
            solid(12, side=side).reshape(3, 4, 3, side, side), [0, 1, 2], [-2.0, -1.0, 1.0, 2.0]
        ),
        "manifold": lambda: latent_figures.manifold_figure(solid(25, side=side), 5, 2.0),
    }


@pytest.mark.parametrize("name", list(_colour_figures()))
def test_every_image_figure_draws_colour_images_in_colour(name):
    fig = _colour_figures()[name]()
    images = [image for ax in fig.axes for image in ax.images]
    assert images and all(np.asarray(image.get_array()).shape[-1] == 3 for image in images)
    assert share_of(rendered(fig), RED) > 0.02, "no red drawn"
    if "inputs" in name or name == "reconstructions":
        assert share_of(rendered(fig), BLUE) > 0.005, "no blue drawn"


def test_images_of_other_channel_counts_are_refused_in_one_line():
    with pytest.raises(ValueError, match="cannot draw"):
        plots.image_grid(torch.zeros(2, 2, 4, 4))
    assert plots.as_images(torch.zeros(2, 3, 4, 4)).shape == (2, 3, 4, 4)
