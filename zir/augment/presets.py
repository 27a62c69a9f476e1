"""Augmentation presets: ``build_augment(preset, task, image_size)``.

Probabilities ``p`` and magnitudes of each preset. ``S`` is ``image_size``; steps marked *(S)* exist only
when it is given. Every task with boxes ends with ``SanitizeBoxes`` (boxes pushed out of the image are
dropped with their labels, iscrowd flags and masks). Geometric padding is grey 114 in images, 0 in
instance masks and 255 (ignore) in semantic maps; masks are resampled nearest-neighbour.

Segmentation tasks (segment, instance, panoptic) leave out cutout and grid mask: hiding pixels whose
label says "object" would teach the model that a grey square is a car. Elastic deformation (U-Net) is
for ``segment`` only: it bends objects, which loosens their boxes.

=========  ========  ============================================================================================
preset     task      steps (probability, magnitude)
=========  ========  ============================================================================================
none       classify  *(S)* Resize(S) + CenterCrop(S)
none       others    *(S)* Letterbox(S)
light      classify  *(S)* RandomResizedCrop(S, scale 0.5-1) else ScaleTranslate(p .5, scale .1, shift .05);
                     HFlip(.5); HSV(p .5, h .01, s .3, v .2)
light      others    *(S)* Letterbox(S); HFlip(.5); ScaleTranslate(p .5, scale .2, shift .05);
                     HSV(p .5, h .01, s .3, v .2)
standard   classify  *(S)* RandomResizedCrop(S, scale .25-1) else ScaleTranslate(p .5, scale .3, shift .1);
                     HFlip(.5); Rotation(p .2, 10 deg); HSV(1, h .015, s .7, v .4); Grayscale(.05);
                     GaussianNoise(.1, sigma 3-15); Blur(.1, radius 3); JPEG(.1, quality 30-90);
                     Cutout(.25, 1-3 holes of 5-25 %)
standard   detect    *(S)* Letterbox(S); HFlip(.5); ScaleTranslate(1, scale .5, shift .1) (YOLO's);
                     HSV(1, h .015, s .7, v .4) (YOLO's); Grayscale(.01); GaussianNoise(.2, sigma 3-15);
                     Blur(.05, radius 3); JPEG(.05, quality 30-90)
standard   segment   as detect, plus Elastic(.2, sigma 10 px on a 3x3 grid) after ScaleTranslate
standard   instance  as detect
standard   panoptic  as detect
heavy      classify  *(S)* RandomResizedCrop(S, scale .08-1) else Affine(p .7, 15 deg, shift .1, scale .5-1.5,
                     shear 5); HFlip(.5); Perspective(.2, distortion .2); HSV(1, h .02, s .7, v .4);
                     ColorJitter(.3, contrast .3); Gamma(.2, 0.5); Equalize(.05); Grayscale(.1);
                     GaussianNoise(.3, sigma 3-25); SaltPepper(.1, .2-2 %); Blur(.15, radius 4);
                     JPEG(.2, quality 20-90); Cutout(.4); GridMask(.2); one weather effect (.3)
heavy      detect    *(S)* Letterbox(S); HFlip(.5); Affine(.7, 10 deg, shift .1, scale .5-1.5, shear 5);
                     Perspective(.2, distortion .1); then the colour, noise and weather steps of heavy
                     classify, with Cutout(.3) and GridMask(.1)
heavy      segment   as heavy detect without Cutout and GridMask, plus Elastic(.3, sigma 12 px)
heavy      instance  as heavy detect without Cutout and GridMask
heavy      panoptic  as heavy instance
=========  ========  ============================================================================================

"One weather effect" is a uniform choice among rain, snow, fog, sun flare and shadow.

With ``orientation="any"`` (``data.orientation=any``) every preset but ``none`` adds
``QuarterTurn(.75, 1-3 turns)`` right after ``HFlip``: 0-3 quarter turns, uniform, so all eight flips and
turns of the image are equally likely.
"""

from __future__ import annotations

from torchvision.transforms import v2

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
    SanitizeBoxes,
)
from zir.augment.noise import JPEG, Blur, Cutout, GaussianNoise, GridMask, SaltPepperNoise
from zir.augment.weather import RandomFog, RandomRain, RandomShadow, RandomSnow, RandomSunFlare
from zir.data.contract import TASKS
from zir.errors import ConfigError

PRESETS: tuple[str, ...] = ("none", "light", "standard", "heavy")
ORIENTATIONS: tuple[str, ...] = ("upright", "any")


def build_augment(preset: str = "standard", task: str = "detect", image_size: int | None = None,
                  orientation: str = "upright") -> v2.Compose:
    """The augmentation pipeline of ``preset`` for ``task`` (see the module's table).

    Args:
        preset: ``none``, ``light``, ``standard`` or ``heavy``.
        task: ``classify``, ``detect``, ``segment``, ``instance`` or ``panoptic``.
        image_size: side of the square output; ``None`` keeps each image's size.
        orientation: ``upright`` (photographs: up is up, only left-right flips) or ``any`` (microscopy,
            aerial and satellite images: a random quarter turn follows the flip, so all eight flips and
            turns of the image are equally likely). Ignored by ``none``.

    Returns:
        a ``v2.Compose`` taking and returning a :class:`zir.data.contract.Sample` (uint8 image).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"unknown orientation {orientation!r}; choose one of {', '.join(ORIENTATIONS)}")
    S = image_size
    if S is not None and S < 8:
        raise ConfigError(f"image_size={S} is too small; give the training side in pixels, e.g. 224 or 640")
    steps = _classify(preset, S) if task == "classify" else _dense(preset, task, S)
    if orientation == "any" and preset != "none":
        flip = next(i for i, t in enumerate(steps) if isinstance(t, RandomHorizontalFlip))
        steps.insert(flip + 1, RandomQuarterTurn())
    if task in ("detect", "instance", "panoptic") and preset != "none":
        steps.append(SanitizeBoxes())
    return v2.Compose(steps or [v2.Identity()])  # Compose refuses an empty list


def _weather(p: float) -> v2.Transform:
    effects = [RandomRain(), RandomSnow(), RandomFog(), RandomSunFlare(), RandomShadow()]
    return v2.RandomApply([v2.RandomChoice(effects)], p=p)


def _heavy_pixels(occlusion: bool, cutout: float, grid: float) -> list[v2.Transform]:
    steps: list[v2.Transform] = [
        RandomHSV(0.02, 0.7, 0.4),
        ColorJitter(brightness=0, contrast=0.3, saturation=0, p=0.3),
        RandomGamma(0.5, p=0.2),
        RandomEqualize(p=0.05),
        RandomGrayscale(p=0.1),
        GaussianNoise((3.0, 25.0), p=0.3),
        SaltPepperNoise((0.002, 0.02), p=0.1),
        Blur(4.0, p=0.15),
        JPEG((20, 90), p=0.2),
    ]
    if occlusion:
        steps += [Cutout(p=cutout), GridMask(p=grid)]
    return steps + [_weather(0.3)]


def _classify(preset: str, S: int | None) -> list[v2.Transform]:
    if preset == "none":
        return [v2.Resize(S, antialias=True), v2.CenterCrop(S)] if S else []
    if preset == "light":
        crop = RandomResizedCrop(S, scale=(0.5, 1.0)) if S else RandomScaleTranslate(0.1, 0.05, p=0.5)
        return [crop, RandomHorizontalFlip(0.5), RandomHSV(0.01, 0.3, 0.2, p=0.5)]
    if preset == "standard":
        crop = RandomResizedCrop(S, scale=(0.25, 1.0)) if S else RandomScaleTranslate(0.3, 0.1, p=0.5)
        return [crop, RandomHorizontalFlip(0.5), RandomRotation(10, p=0.2), RandomHSV(0.015, 0.7, 0.4),
                RandomGrayscale(0.05), GaussianNoise(p=0.1), Blur(3.0, p=0.1), JPEG(p=0.1), Cutout(p=0.25)]
    crop = (RandomResizedCrop(S, scale=(0.08, 1.0)) if S
            else RandomAffine(15, 0.1, (0.5, 1.5), 5, p=0.7))
    return [crop, RandomHorizontalFlip(0.5), RandomPerspective(0.2, p=0.2),
            *_heavy_pixels(occlusion=True, cutout=0.4, grid=0.2)]


def _dense(preset: str, task: str, S: int | None) -> list[v2.Transform]:
    """Tasks with boxes or masks: detect, segment, instance, panoptic."""
    steps: list[v2.Transform] = [Letterbox(S)] if S else []
    if preset == "none":
        return steps
    steps.append(RandomHorizontalFlip(0.5))
    if preset == "light":
        return steps + [RandomScaleTranslate(0.2, 0.05, p=0.5), RandomHSV(0.01, 0.3, 0.2, p=0.5)]
    if preset == "standard":
        steps.append(RandomScaleTranslate(0.5, 0.1))
        if task == "segment":
            steps.append(ElasticDeform(10.0, p=0.2))
        return steps + [RandomHSV(0.015, 0.7, 0.4), RandomGrayscale(0.01), GaussianNoise(p=0.2),
                        Blur(3.0, p=0.05), JPEG(p=0.05)]
    steps += [RandomAffine(10, 0.1, (0.5, 1.5), 5, p=0.7), RandomPerspective(0.1, p=0.2)]
    if task == "segment":
        steps.append(ElasticDeform(12.0, p=0.3))
    return steps + _heavy_pixels(occlusion=task == "detect", cutout=0.3, grid=0.1)
