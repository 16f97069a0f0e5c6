"""Retrieval-metric defaults, light enough for the CLI to import before parsing."""

DEFAULT_RECALL_KS = (1, 2, 4, 8)
#: mAP@k's k.
DEFAULT_MAP_K = 5
#: Neighbours in the majority vote of mMV@k.
DEFAULT_VOTE_K = 5
DEFAULT_PRECISION_K = 10
