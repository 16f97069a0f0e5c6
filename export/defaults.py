"""Export choices and defaults, light enough for the CLI to import before parsing."""

DEFAULT_OPSET = 17
# ReduceMean/ReduceMax with axes attributes need 13; torch's TorchScript exporter stops at 20.
MIN_OPSET = 13
MAX_OPSET = 20
#: Largest batch a TensorRT engine accepts by default.
DEFAULT_MAX_BATCH = 256
#: Calibration images an INT8 export is quantised with by default.
DEFAULT_CALIBRATION_IMAGES = 192
