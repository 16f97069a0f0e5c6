"""Index defaults, in a module light enough for the CLI to import before parsing options."""

from pathlib import Path

#: Where `histoseek index` writes and `histoseek query` looks when no folder is given.
DEFAULT_INDEX_DIR = Path("histoseek-index")
#: Annoy trees per index; chosen with benchmarks/index_search.py (see the README).
DEFAULT_TREES = 50
#: Seed of the Annoy build, so the same embeddings always give the same index file.
DEFAULT_SEED = 0
#: Annoy candidates inspected per query, at least (Annoy's own default, k × trees, finds only
#: about 80% of the true top 10 on histology embeddings; see the README's benchmark).
DEFAULT_SEARCH_K = 10_000
#: The most candidates Annoy can be asked to inspect (its search_k is a C int).
MAX_SEARCH_K = 2**31 - 1
