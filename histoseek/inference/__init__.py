"""Embedding backends (torch, ONNX Runtime, TensorRT) behind one interface."""

# Kept here, free of heavy imports, so the CLI can offer the choices without loading torch.
BACKENDS = ("auto", "torch", "onnx", "tensorrt")
