"""Geometry as pure functions: boxes, anchors, matching, box encodings, masks.

``zir.ops.boxes``, ``zir.ops.anchors``, ``zir.ops.matching``, ``zir.ops.coder`` and ``zir.ops.masks``
hold zir's own operations and re-export torchvision's where it already has them. The RoI operators
come straight from torchvision and are re-exported here. Boxes passed to them are zir's (exclusive
``x2, y2``, continuous pixel coordinates), which is ``aligned=True`` in ``roi_align``: pixel ``x``'s
value sits at ``x + 0.5``.
"""

from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

__all__ = ["MultiScaleRoIAlign", "roi_align", "roi_pool"]
