"""Detection, in the lecture's order: sliding windows, OverFeat, YOLO v1, R-CNN, Fast R-CNN, Faster R-CNN.

One file per architecture; the parts two-stage detectors share (``rpn``, ``roi_heads``, selective
search ``proposals``) have their own files, and so does what every detector shares: the input path
(``transform``: resize, normalise, pad, unpad, map results back) and the ground truth in the working
frame (``structures``)."""
