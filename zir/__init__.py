"""zir: computer vision on PyTorch, from the lecture to real, fast software."""

__version__ = "0.1.0"
