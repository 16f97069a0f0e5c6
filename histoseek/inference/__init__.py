"""Embedding backends (torch, ONNX Runtime FP32 and INT8, TensorRT) behind one interface."""

# Kept here, free of heavy imports, so the CLI can offer the choices without loading torch.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
#: The number formats backends embed in. Embeddings of different ones are never mixed in an
#: index: INT8 and FP16 agree with FP32 only to a cosine of about 0.99.
EMBEDDING_PRECISIONS = ("fp32", "fp16", "int8")
#: Images per inference batch when embedding files.
DEFAULT_BATCH_SIZE = 32
