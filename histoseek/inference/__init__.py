"""Embedding backends (torch, ONNX Runtime, TensorRT) behind one interface."""

# Kept here, free of heavy imports, so the CLI can offer the choices without loading torch.
BACKENDS = ("auto", "torch", "onnx", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
#: Images per inference batch when embedding files.
DEFAULT_BATCH_SIZE = 32
