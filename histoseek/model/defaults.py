"""Model names and defaults, in a module light enough for the CLI to import before parsing."""

#: Backbones histoseek can build (histoseek.model.backbones holds their specs under these names).
BACKBONE_NAMES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet50",
    "resnext50",
)
DEFAULT_BACKBONE = "efficientnet_lite0"
#: Global descriptors in order: S=SPoC, M=MAC, G=GeM; the first feeds the classifier.
DEFAULT_GD_CONFIG = "SMG"
DEFAULT_DIM = 1536
DEFAULT_IMAGE_SIZE = 224
#: Input sizes a model may have: far beyond any real one, to refuse nonsense before allocating.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096
