"""Preparation choices and defaults, light enough for the CLI to import before parsing."""

#: Source layouts `histoseek prepare` understands.
LAYOUTS = ("bach", "bracs", "crc", "folder")
#: Stain normalisation methods.
STAIN_METHODS = ("macenko", "reinhard")
DEFAULT_PATCH_SIZE = 224
DEFAULT_MIN_TISSUE = 0.5
DEFAULT_SPLIT = "0.7,0.15,0.15"
#: Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS), without importing Pillow.
DEFAULT_MAX_PIXELS = 89_478_485
