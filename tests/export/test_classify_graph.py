"""The classifier's export graph computes what its ``predict`` does, flip test-time augmentation included
(the ONNX parity of the graph itself is tests/export/test_parity.py's)."""

from __future__ import annotations

import torch

from zir.export.graphs import graph_for
from zir.models.classify.classifier import Classifier, ClassifierConfig


def test_graph_matches_predict_with_flip_tta():
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none", transfer="scratch",
                                        tta=2)).eval()
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    scores, labels = graph_for(model)(images)
    expected = model.predict(images.float() / 255)
    assert torch.allclose(scores, torch.stack([p.scores for p in expected]), atol=1e-5)
    assert labels.tolist() == [p.label for p in expected]
    plain = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none", transfer="scratch"))
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(graph_for(plain.eval())(images)[0], scores, atol=1e-4)  # the flip view counts
