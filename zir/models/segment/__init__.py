"""Segmentation: semantic (FCN, U-Net), instance (Mask R-CNN) and panoptic (Panoptic FPN).

Mask R-CNN and Panoptic FPN are two-stage detectors from ``zir.models.detect`` with extra heads; they
live here, with the task they solve, and import the detector's parts."""
