"""Service defaults and limits, light enough for the CLI to import before parsing options."""

#: Loopback only: anything else must be asked for explicitly (there is no authentication).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Largest accepted upload, in megabytes (10⁶ bytes).
DEFAULT_MAX_UPLOAD_MB = 20
#: The --max-upload-mb range: from one byte to 10 GB, an upload being held in memory whole.
MAX_UPLOAD_MB_RANGE = (1e-6, 10_000.0)
#: Longest wait of a forming batch for queries still being decoded (a lone one never waits).
DEFAULT_BATCH_WINDOW_MS = 5.0
#: The longest --batch-window-ms: beyond a second, waiting costs more than batching saves.
MAX_BATCH_WINDOW_MS = 1000.0
DEFAULT_K = 10
#: Most results one request may ask for.
MAX_K = 1000
#: Most Annoy candidates one request may ask to inspect.
MAX_SEARCH_K = 1_000_000
#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 192
#: Thumbnails kept in memory (about 10 KB each as JPEG).
THUMBNAIL_CACHE = 2048
#: Longest side of a slide overview (the slide's thumbnail with a tile's box), in pixels.
SLIDE_VIEW_SIZE = 640
#: Slide thumbnails kept in memory to draw boxes on (about 1 MB each decoded).
SLIDE_VIEW_CACHE = 16
