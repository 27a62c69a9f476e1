"""Augmentation: the lecture's four families as torchvision transforms v2 on zir samples.

* geometric (:mod:`zir.augment.geometric`): flips, quarter turns, rotation, affine, scale + translate, random resized
  crop, perspective, elastic deformation, letterbox; boxes and masks move with the image;
* colour (:mod:`zir.augment.colour`): HSV gains, brightness / contrast / saturation / hue jitter,
  greyscale, equalisation, gamma;
* noise and occlusion (:mod:`zir.augment.noise`): Gaussian and salt-and-pepper noise, blur, JPEG,
  cutout, grid mask;
* weather (:mod:`zir.augment.weather`): rain, snow, fog, sun flare, shadow.

Every transform has a probability ``p`` and magnitude arguments, works on uint8 images and takes a
:class:`zir.data.contract.Sample` dict. :func:`build_augment` gives the presets (table in
:mod:`zir.augment.presets`); :func:`preview_grid` draws them.
"""

from zir.augment.colour import ColorJitter, RandomEqualize, RandomGamma, RandomGrayscale, RandomHSV
from zir.augment.geometric import (
    ElasticDeform,
    Letterbox,
    RandomAffine,
    RandomHorizontalFlip,
    RandomPerspective,
    RandomQuarterTurn,
    RandomResizedCrop,
    RandomRotation,
    RandomScaleTranslate,
    RandomVerticalFlip,
    SanitizeBoxes,
)
from zir.augment.noise import JPEG, Blur, Cutout, GaussianNoise, GridMask, SaltPepperNoise
from zir.augment.presets import ORIENTATIONS, PRESETS, build_augment
from zir.augment.preview import preview, preview_grid
from zir.augment.weather import RandomFog, RandomRain, RandomShadow, RandomSnow, RandomSunFlare

__all__ = [
    "JPEG", "ORIENTATIONS", "PRESETS", "Blur", "ColorJitter", "Cutout", "ElasticDeform", "GaussianNoise", "GridMask", "Letterbox",
    "RandomAffine", "RandomEqualize", "RandomFog", "RandomGamma", "RandomGrayscale", "RandomHSV",
    "RandomHorizontalFlip", "RandomPerspective", "RandomQuarterTurn", "RandomRain", "RandomResizedCrop", "RandomRotation",
    "RandomScaleTranslate", "RandomShadow", "RandomSnow", "RandomSunFlare", "RandomVerticalFlip",
    "SaltPepperNoise", "SanitizeBoxes", "build_augment", "preview", "preview_grid",
]
