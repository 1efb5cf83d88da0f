"""SimCLR's augmentations, seeded per image so that any number of processes draws the same views.

The random draws for one view depend only on ``(seed, epoch, image index, view)``, never on
the process or on the order within a batch: the 2-process run sees exactly the images the
1-process run sees, which is what lets the two be compared weight for weight.

The recipe follows SimCLR (Chen et al., 2020) minus the Gaussian blur: a random resized crop
(35-100% of the area, aspect 3/4-4/3), a horizontal flip, colour jitter (brightness,
contrast, saturation 0.4; with probability 0.8) and grayscale (probability 0.2). Crops are
resized the way nsfwjs resizes (bilinear, ``align_corners=True``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

MIN_AREA = 0.35
JITTER = 0.4
JITTER_P = 0.8
GRAY_P = 0.2
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def view_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, view])


def augment(image: Tensor, rng: np.random.Generator) -> Tensor:
    """uint8 HWC ``[S, S, 3]`` -> float HWC in [0, 1], same size, one random view."""
    size = image.shape[0]
    x = image.permute(2, 0, 1).to(torch.float32) / 255.0
    area = rng.uniform(MIN_AREA, 1.0) * size * size
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = min(size, max(8, round(math.sqrt(area / aspect))))
    w = min(size, max(8, round(math.sqrt(area * aspect))))
    top = int(rng.integers(0, size - h + 1))
    left = int(rng.integers(0, size - w + 1))
    crop = x[:, top : top + h, left : left + w].unsqueeze(0)
    x = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=True)[0]
    if rng.uniform() < 0.5:
        x = x.flip(-1)
    if rng.uniform() < JITTER_P:
        brightness, contrast, saturation = rng.uniform(1 - JITTER, 1 + JITTER, size=3)
        x = x * float(brightness)
        mean = (x * _LUMA[:, None, None]).sum(0).mean()
        x = (x - mean) * float(contrast) + mean
        gray = (x * _LUMA[:, None, None]).sum(0, keepdim=True)
        x = (x - gray) * float(saturation) + gray
    if rng.uniform() < GRAY_P:
        x = (x * _LUMA[:, None, None]).sum(0, keepdim=True).expand(3, -1, -1)
    return x.clamp(0.0, 1.0).permute(1, 2, 0).contiguous()


def two_views(images: Tensor, indices: list[int], *, seed: int, epoch: int) -> Tensor:
    """``[2b, S, S, 3]`` floats: the first view of every image, then the second."""
    return torch.stack(
        [augment(images[i], view_rng(seed, epoch, i, view)) for view in (0, 1) for i in indices]
    )
