"""The most confident mistakes as a grid of photos (fastai's plot_top_losses): what the model gets wrong, and
how sure it was. Which mistakes, the task decides (`Task.confident_mistakes`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def plot_mistakes(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 4) -> None:
    """A grid of photos (HWC uint8 arrays), each titled with its caption (`Task.mistake_caption`: e.g. 'true X /
    predicted Y / p')."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training machines
    import matplotlib.pyplot as plt

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images and {len(captions)} captions: one of each per photo")
    if not len(images):
        figure = plt.figure(figsize=(4, 1.2), dpi=110)
        figure.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=12)
    else:
        columns = max(1, min(columns, len(images)))
        rows = math.ceil(len(images) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.1 * rows), dpi=110,
                                 squeeze=False, layout="constrained")  # keeps the 3-line titles off the row above
        for axis in axes.flat:
            axis.axis("off")
        for axis, image, caption in zip(axes.flat, images, captions):
            axis.imshow(_as_hwc_uint8(image))
            axis.set_title(caption, fontsize=8, color="darkred")
        figure.suptitle("most confident mistakes", fontsize=11)
    figure.savefig(path)
    plt.close(figure)


def _as_hwc_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an HWC uint8 image, got {image.dtype} of shape {image.shape} "
                         "(a CHW tensor needs .permute(1, 2, 0))")
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
