"""Classification: ConvNets ending in softmax with cross-entropy, and pretrained backbones used as
frozen feature extractors or fine-tuned (the lecture's transfer learning)."""
