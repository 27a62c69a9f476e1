"""Selective search proposals: the OpenCV result in zir's units, the working-size mapping, the cache,
the missing-extra error."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from zir.errors import ConfigError
from zir.models.detect import proposals
from zir.models.detect.proposals import ProposalCache, SelectiveSearch, selective_search

cv2 = pytest.importorskip("cv2")
pytest.importorskip("cv2.ximgproc")


def scene(h: int = 48, w: int = 64) -> torch.Tensor:
    """A float (3, h, w) image: grey background, a red and a blue rectangle."""
    image = torch.full((3, h, w), 0.5)
    image[:, 5:20, 8:30] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    image[:, 25:h - 4, 35:w - 6] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]
    return image


def test_boxes_are_opencv_boxes_in_xyxy_inside_the_image():
    image = scene()
    boxes = selective_search(image, size=0)
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # oracle: OpenCV called directly, (x, y, w, h) -> (x1, y1, x2, y2) with exclusive edges
    bgr = np.ascontiguousarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[..., ::-1])
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    search.switchToSelectiveSearchFast()
    expected = {(x, y, x + w, y + h) for x, y, w, h in search.process().tolist() if w >= 2 and h >= 2}
    assert {tuple(b) for b in boxes.int().tolist()} == expected
    # the rectangles are found exactly
    assert [8, 5, 30, 20] in boxes.tolist() and [35, 25, 58, 44] in boxes.tolist()


def test_uint8_and_float_images_give_the_same_boxes():
    image = scene()
    as_uint8 = (image * 255).round().to(torch.uint8)
    torch.testing.assert_close(selective_search(image, size=0), selective_search(as_uint8, size=0))
    hwc = as_uint8.permute(1, 2, 0).numpy().copy()
    torch.testing.assert_close(selective_search(hwc, size=0), selective_search(as_uint8, size=0))


def test_repeated_calls_give_the_same_boxes_in_the_same_order():
    # OpenCV ranks regions at random: the order of its output changes from call to call, zir's does not
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    everything = selective_search(image, size=0)
    a, b = selective_search(image, size=0, max_proposals=5), selective_search(image, size=0, max_proposals=5)
    assert len(everything) > 5 and len(a) == 5
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(selective_search(image, size=0), everything)
    assert {tuple(x) for x in a.tolist()} <= {tuple(x) for x in everything.tolist()}


class FakeSearch:
    """Stands in for OpenCV's segmentation object: records the image it is given, returns fixed boxes."""

    seen: list[np.ndarray] = []

    def __init__(self, xywh):
        self.xywh = xywh

    def setBaseImage(self, image):  # noqa: N802 - OpenCV's name
        FakeSearch.seen.append(image)

    def switchToSelectiveSearchFast(self):  # noqa: N802
        pass

    def switchToSelectiveSearchQuality(self):  # noqa: N802
        pass

    def process(self):
        return np.array(self.xywh)


def test_search_runs_at_the_working_size_and_boxes_come_back_to_input_pixels(monkeypatch):
    xywh = [[0, 0, 10, 5], [4, 2, 20, 30]]  # in the 40 x 30 working copy

    class Module:
        createSelectiveSearchSegmentation = staticmethod(lambda: FakeSearch(xywh))  # noqa: N815

    FakeSearch.seen.clear()
    monkeypatch.setattr(proposals, "_cv2", lambda: Module)
    boxes = selective_search(torch.rand(3, 120, 160), size=40, min_size=0)
    assert FakeSearch.seen[0].shape == (30, 40, 3) and FakeSearch.seen[0].dtype == np.uint8
    # x scaled by 160 / 40, y by 120 / 30; the second box's bottom (32 * 4 = 128) clipped to the image
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 40, 20], [16, 8, 96, 120]]))


def test_no_region_gives_an_empty_tensor(monkeypatch):
    class Module:
        createSelectiveSearchSegmentation = staticmethod(lambda: FakeSearch(np.zeros((0, 4), np.int32)))  # noqa: N815

    monkeypatch.setattr(proposals, "_cv2", lambda: Module)
    boxes = selective_search(torch.rand(3, 20, 30))
    assert boxes.shape == (0, 4) and boxes.dtype == torch.float32


def test_missing_opencv_contrib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "zir\[rcnn\]"'):
        selective_search(torch.rand(3, 20, 30))


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="fast, quality"):
        selective_search(scene(), mode="best")


def test_cache_searches_each_image_once():
    calls = []

    def search(image):
        calls.append(image)
        return torch.tensor([[0.0, 0, float(image[0, 0, 0] * 10 + 1), 4]])

    cache = ProposalCache(search)  # type: ignore[arg-type]
    a, b = scene(), scene()
    b[0, 0, 0] = 0.7  # one pixel differs: another image
    first = cache(a)
    torch.testing.assert_close(cache(a.clone()), first)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert not torch.equal(cache(b), first) and len(calls) == 2


def test_selective_search_settings_object_calls_through():
    image = scene()
    torch.testing.assert_close(SelectiveSearch("fast", 0, 3)(image), selective_search(image, "fast", 0, 3))
