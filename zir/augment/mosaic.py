"""Mosaic (Bochkovskiy et al. 2020, YOLOv4 section 3.3): four training images tiled into one.

Each of the four samples is letterboxed into one quadrant of an ``S x S`` canvas (grey 114 around it),
its boxes scaled and shifted with it. The detector then sees four contexts and four times as many,
smaller, objects per image. Mosaic needs several samples, so it wraps a dataset rather than being a
per-sample transform; ``data.mosaic=P`` in the training config applies it with probability ``P`` to
box-only (``detect``) data, and ``data.mosaic_off_epochs=N`` trains the last ``N`` epochs without it (YOLOX's
last 15 epochs, YOLOv8's ``close_mosaic=10``): the detector ends on whole images like those it will see.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors

FILL = 114


class Mosaic(torch.utils.data.Dataset):
    """A dataset whose sample ``i`` is, with probability ``p``, sample ``i`` and three random others tiled 2x2.

    Args:
        dataset: yields zir detection samples (uint8 ``image``, ``boxes``, ``labels``, ``iscrowd``).
        p: probability of a mosaic; otherwise the sample is returned as it is.
        size: side ``S`` of the mosaic (default: the first sample's longer side).
        off_epochs: the last this many epochs of training get no mosaic (:meth:`set_epoch` says which
            epoch it is).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, p: float = 0.5, size: int | None = None,
                 off_epochs: int = 0) -> None:
        self.dataset = dataset
        self.p = p
        self.size = size
        self.off_epochs = off_epochs
        self.on = True
        self.classes = getattr(dataset, "classes", None)
        self.task = getattr(dataset, "task", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the engine before epoch ``epoch`` (0-based) of ``epochs``: mosaic stays on until the last
        ``off_epochs``. It depends on the epoch number alone, so a resumed run does the same. The loader's
        workers are not persistent, so each epoch's workers get the dataset as it is then."""
        self.on = epoch < epochs - self.off_epochs

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.dataset[i]
        if not self.on or "bad" in sample or "masks" in sample or float(torch.rand(())) >= self.p:
            return sample
        others = [self.dataset[int(j)] for j in torch.randint(len(self), (3,))]
        if any("bad" in s for s in others):
            return sample
        return tile([sample, *others], self.size or max(sample["image"].shape[-2:]))


def tile(samples: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Four samples -> one ``(3, size, size)`` sample; quadrants in reading order, each letterboxed."""
    half = size // 2
    canvas = torch.full((3, 2 * half, 2 * half), FILL, dtype=torch.uint8)
    boxes, labels, crowd, difficult = [], [], [], []
    for k, s in enumerate(samples):
        image = s["image"].as_subclass(Tensor)
        h, w = image.shape[-2:]
        scale = half / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        top, left = (k // 2) * half, (k % 2) * half
        canvas[:, top: top + nh, left: left + nw] = small
        b = s["boxes"].as_subclass(Tensor).float()
        boxes.append(b * torch.tensor([nw / w, nh / h, nw / w, nh / h]) + torch.tensor([left, top, left, top]))
        labels.append(s["labels"])
        crowd.append(s.get("iscrowd", torch.zeros(len(b), dtype=torch.bool)))
        difficult.append(s.get("difficult", torch.zeros(len(b), dtype=torch.bool)))
    out = {k: v for k, v in samples[0].items() if k not in ("image", "boxes", "labels", "iscrowd", "difficult")}
    out["image"] = tv_tensors.Image(canvas)
    out["boxes"] = tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(2 * half, 2 * half))
    out["labels"] = torch.cat(labels)
    out["iscrowd"] = torch.cat(crowd)
    if any("difficult" in s for s in samples):
        out["difficult"] = torch.cat(difficult)
    return out
