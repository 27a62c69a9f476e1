"""Turning records into samples: the one ``torch.utils.data.Dataset`` every task trains on."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval.core import mask as mask_codec
from torchvision import tv_tensors

from zir.data.contract import IGNORE_INDEX, DatasetIndex, Record, Sample, _flags
from zir.data.image_io import read_image, read_label_png, read_panoptic_png
from zir.errors import DataError
from zir.ops.masks import masks_to_boxes


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to a uint8 ``(H, W)`` mask."""
    if segmentation is None or (isinstance(segmentation, list) and len(segmentation) == 0):
        return np.zeros((height, width), np.uint8)
    if isinstance(segmentation, list):  # polygons
        polys = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), np.uint8)
        rles = mask_codec.frPyObjects(polys, height, width)
        rle = mask_codec.merge(rles)
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_codec.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return np.asarray(mask_codec.decode(rle), dtype=np.uint8)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary ``(H, W)`` mask as compressed COCO RLE with a JSON-friendly ``str`` counts."""
    rle = mask_codec.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def load_sample(record: Record, index: DatasetIndex) -> Sample:
    """Read the pixels of one record and build a :class:`~zir.data.contract.Sample` for ``index.task``.

    Raises:
        DataError: naming the file when the image or a mask cannot be read or does not fit.
    """
    image = read_image(record.path)
    H, W = image.shape[-2:]
    sample: Sample = {"image": image, "image_id": record.image_id, "path": str(record.path)}
    task = index.task
    if task == "classify":
        if record.label is None:
            raise DataError(record.source, "no class label for this image")
        sample["label"] = int(record.label)
        return sample

    if task in ("detect", "instance"):
        sample["boxes"] = tv_tensors.BoundingBoxes(
            torch.from_numpy(record.boxes.copy()), format="XYXY", canvas_size=(H, W))
        sample["labels"] = torch.from_numpy(record.labels.copy())
        sample["iscrowd"] = torch.from_numpy(record.iscrowd.copy())
        # VOC "difficult": trained on as normal objects (as detectron2 does), left out of evaluation.
        # (Flags of another length than the boxes, from a record edited after reading, mean none are known.)
        sample["difficult"] = torch.from_numpy(_flags(record.difficult, len(record.boxes)).copy())
    if task == "instance":
        masks = _instance_masks(record, H, W)
        if record.mask_path is not None and not masks.any((1, 2)).all():
            keep = masks.any((1, 2))
            missing = [s["id"] for s, k in zip(record.segments, keep) if not k]
            warnings.warn(f"{record.mask_path}: object id(s) {missing} have no pixels in this PNG; those "
                          "objects are skipped (re-read the dataset if the PNG was changed)", stacklevel=2)
            masks = masks[keep]
            t_keep = torch.from_numpy(keep)
            sample["boxes"] = tv_tensors.wrap(sample["boxes"][t_keep], like=sample["boxes"])
            for k in ("labels", "iscrowd", "difficult"):
                sample[k] = sample[k][t_keep]
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
    elif task == "segment":
        sample["semantic"] = tv_tensors.Mask(torch.from_numpy(_semantic_map(record, index, H, W)))
    elif task == "panoptic":
        masks, labels, semantic = _panoptic(record, index, H, W)
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        sample["labels"] = torch.from_numpy(labels)
        boxes = masks_to_boxes_np(masks)
        sample["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(H, W))
        sample["iscrowd"] = torch.tensor([bool(s.get("iscrowd", 0)) for s in record.segments], dtype=torch.bool)
        sample["semantic"] = tv_tensors.Mask(torch.from_numpy(semantic))
    return sample


def masks_to_boxes_np(masks: np.ndarray) -> np.ndarray:
    """:func:`zir.ops.masks.masks_to_boxes` for numpy ``(N, H, W)`` masks -> float32 ``(N, 4)``."""
    return masks_to_boxes(torch.from_numpy(np.asarray(masks) != 0)).numpy().astype(np.float32)


def _check_size(arr: np.ndarray, H: int, W: int, path: Path | str, image: Path | str = "") -> None:
    if arr.shape[:2] != (H, W):
        of = f" {Path(image).name}" if image else ""
        raise DataError(path, f"mask is {arr.shape[1]}x{arr.shape[0]} (width x height) but its image{of} is "
                              f"{W}x{H}; masks must have the image's size: re-export the mask")


def _instance_masks(record: Record, H: int, W: int) -> np.ndarray:
    if record.mask_path is not None:  # object-id PNG: 0 = background, segment "id" values are objects
        ids = read_label_png(record.mask_path)
        _check_size(ids, H, W, record.mask_path, record.path)
        obj_ids = [s["id"] for s in record.segments]
        return np.stack([(ids == i) for i in obj_ids]).astype(np.uint8) if obj_ids else np.zeros((0, H, W), np.uint8)
    masks = np.zeros((record.num_objects, H, W), np.uint8)
    for i, seg in enumerate(record.segmentations[: record.num_objects]):
        if isinstance(seg, dict) and "size" in seg and tuple(seg["size"]) != (H, W):
            raise DataError(record.source, f"RLE size {seg['size']} differs from the image's {[H, W]}",
                            where=f"object {i}")
        try:
            masks[i] = decode_segmentation(seg, H, W)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeError) as e:
            raise DataError(record.source, f"cannot decode the segmentation ({e}); fix or drop the object",
                            where=f"object {i}") from None
    return masks


def _semantic_map(record: Record, index: DatasetIndex, H: int, W: int) -> np.ndarray:
    if record.mask_path is None:
        raise DataError(record.source, "no mask PNG for this image")
    values = read_label_png(record.mask_path)
    _check_size(values, H, W, record.mask_path, record.path)
    value_map = index.value_map
    C = len(index.classes)
    if value_map is None:
        known = (values >= 0) & (values < C)
        out = np.where(known, values, IGNORE_INDEX)
    else:
        lut_keys = np.array(sorted(value_map), dtype=np.int64)
        lut_vals = np.array([value_map[k] for k in lut_keys], dtype=np.int64)
        pos = np.clip(np.searchsorted(lut_keys, values), 0, len(lut_keys) - 1)
        known = lut_keys[pos] == values
        out = np.where(known, lut_vals[pos], IGNORE_INDEX)
    # 255 is "no label" by convention, mapped or not; any other value without a class is a mistake
    # that would silently drop those pixels from training, so it stops here.
    strange = np.unique(values[~known & (values != IGNORE_INDEX)])
    if len(strange):
        shown = ", ".join(map(str, strange[:10].tolist())) + (", ..." if len(strange) > 10 else "")
        if value_map is None:
            what = f"are not class ids 0..{C - 1} ({', '.join(index.classes)}) nor 255 (ignore)"
        else:
            what = f"are not in the 'values' of classes.yaml ({value_map})"
        yaml_path = Path(index.root) / "classes.yaml" if index.root else "classes.yaml"
        raise DataError(record.mask_path, f"pixel values {shown} {what}; map each to a class id in "
                                          f"{yaml_path} (values: {{{strange[0]}: CLASS_ID}}), or to 255 to "
                                          "ignore those pixels, or fix the mask")
    return out.astype(np.int64)


def _panoptic(record: Record, index: DatasetIndex, H: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks and labels of every segment (things and stuff), and the semantic map they make."""
    if record.mask_path is None:
        raise DataError(record.source, "no panoptic PNG for this image")
    ids = read_panoptic_png(record.mask_path)
    _check_size(ids, H, W, record.mask_path)
    semantic = np.full((H, W), IGNORE_INDEX, np.int64)
    masks, labels = [], []
    for s in record.segments:
        m = ids == s["id"]
        semantic[m] = s["category_id"]
        masks.append(m)
        labels.append(s["category_id"])
    masks_arr = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, H, W), np.uint8)
    return masks_arr, np.asarray(labels, np.int64), semantic


class ZirDataset(torch.utils.data.Dataset):
    """Samples of a :class:`DatasetIndex`, optionally transformed (torchvision transforms v2).

    Args:
        index: records and classes from a reader (``zir.data.open_dataset``).
        transform: called on the sample dict; v2 transforms move boxes and masks with the image.
        skip_bad: when a sample cannot be loaded, return ``None`` (the collate function drops it and the
            trainer reports it once) instead of raising :class:`DataError`.
    """

    def __init__(self, index: DatasetIndex, transform: Callable[[Sample], Sample] | None = None,
                 skip_bad: bool = False, records: list[Record] | None = None) -> None:
        self.index = index
        self.records = index.records if records is None else records
        self.classes = index.classes
        self.task = index.task
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample | dict[str, str]:
        record = self.records[i]
        try:
            sample = load_sample(record, self.index)
        except DataError as e:
            if self.skip_bad:
                return {"bad": str(e)}
            raise
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def subset(self, ids: list[int]) -> ZirDataset:
        """A dataset over some of this one's records (same index, classes and transform)."""
        return ZirDataset(self.index, self.transform, self.skip_bad, [self.records[i] for i in ids])
