"""histoseek_export: converting trained CGD models to ONNX and TensorRT, with parity checks.

Installed as the package `histoseek_export` from the repository's top-level `export/` folder;
`histoseek export` imports it only when run.
"""
