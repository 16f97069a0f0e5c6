"""Embedding backends (torch, ONNX Runtime FP32 and INT8, TensorRT) behind one interface."""

# Kept here, free of heavy imports, so the CLI can offer the choices without loading torch.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
#: Images per inference batch when embedding files.
DEFAULT_BATCH_SIZE = 32
