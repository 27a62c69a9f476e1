"""A picture of what the model will see: one image under each augmentation family and weather effect.

``zir augment preview IMAGE --out grid.png`` calls :func:`preview`; boxes are drawn on every panel
so that a person can check that they follow the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from zir.augment.colour import ColorJitter, RandomGamma, RandomHSV
from zir.augment.geometric import RandomAffine, RandomHorizontalFlip, RandomPerspective, SanitizeBoxes
from zir.augment.noise import Blur, Cutout, GaussianNoise, SaltPepperNoise
from zir.augment.weather import RandomFog, RandomRain, RandomShadow, RandomSnow, RandomSunFlare
from zir.data.contract import Sample


def preview_panels() -> list[tuple[str, v2.Transform | None]]:
    """The panels of the grid: a title and the transform applied (every step at ``p=1``)."""
    return [
        ("original", None),
        ("geometric: flip, affine, perspective",
         v2.Compose([RandomHorizontalFlip(1.0), RandomAffine(15, 0.1, (0.7, 1.3), 5), RandomPerspective(0.2, p=1.0)])),
        ("colour: HSV, contrast, gamma",
         v2.Compose([RandomHSV(0.05, 0.7, 0.4), ColorJitter(0, 0.4, 0), RandomGamma(0.5)])),
        ("noise & occlusion: noise, blur, cutout",
         v2.Compose([GaussianNoise((10.0, 20.0)), SaltPepperNoise(), Blur(2.0), Cutout()])),
        ("weather: rain", RandomRain()),
        ("weather: snow", RandomSnow()),
        ("weather: fog", RandomFog()),
        ("weather: sun flare", RandomSunFlare()),
        ("weather: shadow", RandomShadow()),
    ]


def preview_grid(sample: Sample, out_png: Path, seed: int = 0) -> Path:
    """Draw ``sample`` under each family and weather effect in a grid and save it as a PNG.

    Args:
        sample: a zir sample with at least ``image`` (uint8 ``(3, H, W)``); ``boxes`` / ``labels`` and
            instance ``masks`` are drawn where present.
        out_png: where to write the grid.
        seed: seeds torch's generator for the draws (the global generator is left as it was).

    Returns:
        ``out_png`` as a ``Path``.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    out_png = Path(out_png)
    panels = preview_panels()
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    H, W = sample["image"].shape[-2:]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.5, rows * 4.5 * H / W + 0.4 * rows), squeeze=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for ax, (title, transform) in zip(axes.flat, panels):
            shown = dict(sample)
            if transform is not None:
                shown = transform(shown)
                if "boxes" in shown:
                    shown = SanitizeBoxes()(shown)
            ax.imshow(_draw(shown).permute(1, 2, 0).numpy())
            n = len(shown["boxes"]) if "boxes" in shown else None
            ax.set_title(title if n is None else f"{title} ({n} boxes)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _draw(sample: Sample) -> torch.Tensor:
    """uint8 ``(3, H, W)`` image with instance masks and boxes drawn on it."""
    image = sample["image"].as_subclass(torch.Tensor)
    masks = sample.get("masks")
    if masks is not None and len(masks):
        image = draw_segmentation_masks(image, masks.as_subclass(torch.Tensor).bool(), alpha=0.35)
    boxes = sample.get("boxes")
    if boxes is not None and len(boxes):
        labels = sample.get("labels")
        names = [str(int(i)) for i in labels] if labels is not None else None
        width = max(1, round(max(image.shape[-2:]) / 300))
        image = draw_bounding_boxes(image, boxes.as_subclass(torch.Tensor), labels=names, colors="lime",
                                    width=width)
    return image


def preview(image_path_or_sample: str | Path | Sample, out_png: str | Path,
            boxes: Sequence[Sequence[float]] | torch.Tensor | None = None, seed: int = 0) -> Path:
    """Preview grid of an image file (or a sample); ``boxes`` are XYXY pixels drawn with class 0.

    Raises:
        zir.errors.DataError: the image cannot be read.
    """
    if isinstance(image_path_or_sample, dict):
        sample: Sample = dict(image_path_or_sample)  # type: ignore[assignment]
    else:
        from zir.data.image_io import read_image

        sample = {"image": read_image(image_path_or_sample), "path": str(image_path_or_sample)}
    if boxes is not None:
        H, W = sample["image"].shape[-2:]
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        sample["boxes"] = tv_tensors.BoundingBoxes(b, format="XYXY", canvas_size=(H, W))
        sample["labels"] = torch.zeros(len(b), dtype=torch.int64)
    return preview_grid(sample, Path(out_png), seed=seed)
