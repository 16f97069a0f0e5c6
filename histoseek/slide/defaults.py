"""Slide choices and defaults, light enough for the CLI to import before parsing."""

#: Target resolution of slide tiles, in microns per pixel (about a 20× objective).
DEFAULT_MPP = 0.5
#: Microns per pixel a microscope image can have; outside it, a recorded value is a default
#: (72 dpi is 352.8 µm/px) or a mistake, not a resolution.
MPP_RANGE = (0.05, 20.0)
#: Tissue tiles embedded for a whole-slide query, spread over the slide.
DEFAULT_MAX_TILES = 64
#: Synthetic slide classes: the synthetic tissue classes but "background" (blank glass).
SLIDE_CLASSES = ("adipose", "lymphocytes", "mucosa", "stroma")
#: Level-0 (width, height) of a synthetic slide, and how many of each class are drawn.
DEFAULT_SLIDE_SIZE = (8192, 6144)
DEFAULT_SLIDES_PER_CLASS = 2
#: What `histoseek query --by` ranks: gallery tiles (or patches), whole slides, or patients.
ANSWER_LEVELS = ("tile", "slide", "group")
#: What `--exclude` leaves out of the answers: the query's own slide, or its own patient.
EXCLUDE_CHOICES = ("same-slide", "same-group")
#: How tile hits become a slide's score: the sum over query tiles of each one's best
#: similarity to the slide (the default), or the count of hits (votes). See the README.
AGGREGATION_RULES = ("similarity", "votes")
#: Nearest gallery tiles of each query tile that count as evidence for their slides; chosen
#: with benchmarks/wsi.py (see the README).
DEFAULT_TILE_K = 5
