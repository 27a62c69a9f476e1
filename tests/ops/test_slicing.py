"""Sliced-inference geometry against hand-computed grids, shifts and merges."""

import pytest
import torch

from zir.ops.slicing import ios, merge_detections, paste_tile_masks, shift_boxes, tile_grid, tile_starts


def test_tile_starts_step_then_last_tile_moved_back_to_the_border():
    # 512 px tiles, overlap 0.2 -> int(102.4) = 102 px shared, step 410; 1230 + 512 = 1742 < 2000, so one
    # more tile ending on the border: 2000 - 512 = 1488 (sahi's get_slice_bboxes gives the same).
    assert tile_starts(2000, 512, 410) == [0, 410, 820, 1230, 1488]
    assert tile_starts(1024, 512, 512) == [0, 512]  # exact fit: no extra tile
    assert tile_starts(100, 512, 410) == [0]  # shorter than a tile: one (short) tile
    assert tile_starts(512, 512, 410) == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 0, 1)


def test_tile_grid_rows_then_columns_clipped_to_the_image():
    tiles = tile_grid((600, 1000), 512, 0.2)
    # ys: 0, then 0 + 512 < 600 -> 600 - 512 = 88; xs: 0, 410, then 922 < 1000 -> 488
    assert tiles.tolist() == [[0, 0, 512, 512], [410, 0, 922, 512], [488, 0, 1000, 512],
                              [0, 88, 512, 600], [410, 88, 922, 600], [488, 88, 1000, 600]]
    assert tile_grid((100, 50), 64, 0.5).tolist() == [[0, 0, 50, 64], [0, 32, 50, 96], [0, 36, 50, 100]]
    assert tile_grid((100, 50), (40, 64), 0.0).tolist() == [[0, 0, 50, 40], [0, 40, 50, 80], [0, 60, 50, 100]]
    with pytest.raises(ValueError):
        tile_grid((100, 100), 64, 1.0)


@pytest.mark.parametrize("hw,size,overlap", [((2000, 2000), 320, 0.2), ((333, 517), 128, 0.25), ((50, 700), 96, 0)])
def test_tile_grid_covers_every_pixel_with_full_size_tiles(hw, size, overlap):
    covered = torch.zeros(hw, dtype=torch.bool)
    for x1, y1, x2, y2 in tile_grid(hw, size, overlap).tolist():
        assert (y2 - y1, x2 - x1) == (min(size, hw[0]), min(size, hw[1]))
        covered[y1:y2, x1:x2] = True
    assert covered.all()


def test_shift_boxes_and_paste_masks_into_the_image():
    tile = torch.tensor([10, 20, 14, 23])
    assert shift_boxes(torch.tensor([[1.0, 2.0, 3.0, 3.0]]), tile).tolist() == [[11.0, 22.0, 13.0, 23.0]]
    assert shift_boxes(torch.zeros(0, 4), tile).shape == (0, 4)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = True
    full = paste_tile_masks(mask, tile, (30, 40))
    assert full.shape == (1, 30, 40) and full.sum() == 1 and full[0, 21, 12]


def test_ios_is_intersection_over_the_smaller_box():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [2.0, 2, 4, 4], [20.0, 20, 30, 30], [3.0, 3, 3, 9]])
    # 50 / 100; inside -> 1; apart -> 0; an empty box -> 0
    assert ios(a, b).tolist() == [[0.5, 1.0, 0.0, 0.0]]


def _merge(boxes, scores, labels, **kw):
    b, s, lab, _ = merge_detections(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels), **kw)
    return b.tolist(), [round(x, 3) for x in s.tolist()], lab.tolist()


def test_an_object_cut_by_a_tile_edge_is_merged_whole_by_nmm_and_kept_cut_by_nms():
    half, whole = [90.0, 10, 100, 20], [90.0, 10, 110, 20]  # IoS = 100 / 100 = 1, IoU = 0.5
    assert _merge([half, whole], [0.9, 0.6], [0, 0]) == ([whole], [0.9], [0])
    assert _merge([half, whole], [0.9, 0.6], [0, 0], method="nms") == ([half], [0.9], [0])
    # with IoU 0.5 > 0.6 they are two objects
    assert _merge([half, whole], [0.9, 0.6], [0, 0], metric="iou", threshold=0.6) == \
        ([half, whole], [0.9, 0.6], [0, 0])


def test_other_classes_are_not_merged_unless_class_agnostic():
    boxes, scores = [[0.0, 0, 10, 10], [1.0, 1, 10, 10]], [0.8, 0.7]
    assert _merge(boxes, scores, [0, 1])[2] == [0, 1]
    assert _merge(boxes, scores, [0, 1], class_agnostic=True) == ([[0.0, 0, 10, 10]], [0.8], [0])


def test_nmm_merges_each_box_only_if_it_still_matches_the_merged_box():
    # K = [0,0,10,10] keeps X = [0,0,10,20] (IoU 0.5) and Y = [0,-5,10,10] (IoU 100/150 = 0.67). After K
    # absorbs X it is [0,0,10,20], whose IoU with Y is 100/250 = 0.4 < 0.5: Y is dropped, not merged
    # (sahi's GreedyNMMPostprocess does the same re-check).
    out = _merge([[0.0, 0, 10, 10], [0.0, 0, 10, 20], [0.0, -5, 10, 10], [50.0, 50, 60, 60]],
                 [0.9, 0.8, 0.7, 0.95], [0, 0, 0, 0], metric="iou")
    assert out == ([[50.0, 50, 60, 60], [0.0, 0, 10, 20]], [0.95, 0.9], [0, 0])


def test_nmm_takes_the_union_of_masks_and_the_highest_score():
    masks = torch.zeros(3, 4, 6, dtype=torch.bool)
    masks[0, :, :3] = True
    masks[1, :, 2:5] = True
    masks[2, 0, 5] = True
    boxes = torch.tensor([[0.0, 0, 3, 4], [2.0, 0, 5, 4], [5.0, 0, 6, 1]])
    b, s, lab, m = merge_detections(boxes, torch.tensor([0.5, 0.7, 0.9]), torch.tensor([1, 1, 1]), masks,
                                    metric="iou", threshold=0.2)
    # [0,0,3,4] and [2,0,5,4]: IoU 4 / 20 = 0.2 -> merged; [5,0,6,1] touches neither
    assert b.tolist() == [[5.0, 0, 6, 1], [0.0, 0, 5, 4]] and s.tolist() == pytest.approx([0.9, 0.7])
    assert m[1].equal(masks[0] | masks[1]) and m[0].equal(masks[2])


def test_merge_of_nothing_is_nothing():
    b, s, lab, m = merge_detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert b.shape == (0, 4) and s.shape == (0,) and m is None
