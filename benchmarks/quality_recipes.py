"""Recipe search on validation only: train named recipes, pick one by validation, test only it.

Each recipe (RECIPES below: configurations as data) is trained on crc-polyps5/train minus a
stratified validation split (crc-polyps5 records no patients or slides, so the split cannot be
group-aware; validation is therefore more optimistic than test). The validation split also
picks each run's best epoch, as `histoseek train --val-dir` does. Each recipe is scored on
validation only: R@1 and mMV@5 of validation → (train minus validation). The recipe with the
best mean of the two among those that trained within --max-train-minutes and embed an image
with at most --max-embed-cost times the built-in model's work (multiply-accumulates, times 8
with --tta) is then evaluated, alone, on crc-polyps5 test → train (all 2,000 train images as
the gallery).

    python benchmarks/quality_recipes.py [--recipes NAME,...] [--budget-minutes M] [--quick]
        [--out FILE.json]

--budget-minutes stops starting new training runs once that much time has passed (recipes are
tried in the order given; those not reached are listed as skipped), then chooses among the
recipes done and tests the choice. The JSON is rewritten after every recipe, so an
interrupted search keeps what it measured.

--quick checks the machinery: 1 epoch on 200 images (40 per class; 160 fit, 40 validation)
and a test of 100 images against those 200. Recipes that differ only in how they are
evaluated (--tta, the test size) share one training run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

from machine import machine_record
from rich.console import Console
from rich.table import Table

from histoseek.data.colour_groups import clusters_per_class, colour_groups
from histoseek.data.folder import LabelledImages, scan_labelled_folder
from histoseek.data.split import stratified_group_split
from histoseek.embedder import ImageEmbedder, embedder_for_model
from histoseek.evaluate import check_evaluation_set, evaluate
from histoseek.inference.embed_files import DIHEDRAL_VIEWS
from histoseek.metrics import selection_score
from histoseek.model.backbones import get_backbone_spec
from histoseek.model.cgd import ModelConfig, build_model, builtin_config
from histoseek.model.checkpoint import load_model
from histoseek.model.summary import summarize
from histoseek.train import train
from histoseek.train_config import TrainConfig

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "crc-polyps5"
RESULTS = Path(__file__).resolve().parent / "results"
VAL_FRACTION = 0.2
# A default recipe's cost is paid on every image a user embeds, and the speed targets were set
# for the built-in model (Lite0 at 224 px): no recipe embedding more than this many times its
# work (multiply-accumulates per image, times the views --tta embeds) is chosen.
MAX_EMBED_COST = 2.0


@dataclass(frozen=True)
class Recipe:
    """A training configuration (TrainConfig overrides) and how its model is evaluated."""

    name: str
    tries: str
    train: dict = field(default_factory=dict)
    tta: bool = False
    # Evaluate at another input size than the model was trained at (None: the same).
    test_size: int | None = None

    def training_key(self) -> str:
        """Recipes with the same key share one training run."""
        return json.dumps(self.train, sort_keys=True)


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    """The recipe trained with another training seed (0, the default, is the recipe itself)."""
    if seed == 0:
        return recipe
    return replace(
        recipe,
        name=f"{recipe.name}-seed{seed}",
        tries=f"{recipe.tries}, training seed {seed}",
        train={**recipe.train, "seed": seed},
    )


# Every recipe names each setting the search has changed the default of (CHOSEN_SETTINGS), so
# it means the same whatever TrainConfig's defaults are (they are the recipe this search
# chose last). The first rounds ran at the defaults of then.
FIRST_DEFAULTS = {
    "lr": 1e-3,
    "backbone_lr_scale": 0.1,
    "gd_config": "SMG",
    "epochs": 12,
    "temperature": 0.5,
    "crop_scale": 0.5,
    "stain_jitter": 0.2,
    "freeze_stages": 5,
}
CHOSEN_SETTINGS = frozenset({"backbone", "image_size", *FIRST_DEFAULTS})
LITE0 = {"backbone": "efficientnet_lite0", "image_size": 224, **FIRST_DEFAULTS}
LITE1 = {"backbone": "efficientnet_lite1", "image_size": 240, **FIRST_DEFAULTS}
LITE2 = {"backbone": "efficientnet_lite2", "image_size": 260, **FIRST_DEFAULTS}
# The second colour-split round's winner (the defaults until the fourth), the base of the third.
LITE0_LR3E3 = {**LITE0, "lr": 3e-3}
# The built-in model's descriptor as the trained model's starting point.
FROM_BUILTIN = {**LITE0, "gd_config": "S", "dim": 1280, "power": 0.5, "identity_init": True}
MULTI_SCALE = {**LITE0, "train_sizes": [192, 224, 256]}
# The fourth round's winner, the base of the fifth (whose winner adds GeM alone).
LITE0_BB1 = {**LITE0_LR3E3, "backbone_lr_scale": 1.0}
# The fifth round's winner, the base of the seventh; the seventh's, the base of the eighth;
# and the eighth's, the base of the ninth (whose winner adds stain jitter 0.5).
LITE0_BB1_G = {**LITE0_BB1, "gd_config": "G"}
LITE0_BB1_G_20EP = {**LITE0_BB1_G, "epochs": 20}
LITE0_BB1_G_20EP_TEMP_CROP = {**LITE0_BB1_G_20EP, "temperature": 0.2, "crop_scale": 0.8}
# The ninth round's winner, the defaults of the tenth to fourteenth rounds (whose winner
# freezes 4 stages: with_frozen_stages(4)).
LITE0_BB1_G_20EP_STAIN = {**LITE0_BB1_G_20EP_TEMP_CROP, "stain_jitter": 0.5}
LITE0_BB1_G_30EP_STAIN = {**LITE0_BB1_G_20EP_STAIN, "epochs": 30}


def with_stain_jitter(strength: float) -> Recipe:
    """The eighth round's choice with another stain jitter (0.5: the defaults since the ninth)."""
    return Recipe(
        f"lite0-bb1-g-20ep-temp0.2-crop0.8-stain{strength}",
        f"the eighth round's choice with stain jitter {strength}",
        {**LITE0_BB1_G_20EP_TEMP_CROP, "stain_jitter": strength},
    )


def with_frozen_stages(frozen: int) -> Recipe:
    """The ninth round's winner with another number of frozen trunk stages than its 5 (4: the
    defaults since the fourteenth round)."""
    return Recipe(
        f"lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze{frozen}",
        f"the defaults with {frozen} stages frozen instead of 5",
        {**LITE0_BB1_G_20EP_STAIN, "freeze_stages": frozen},
    )


def with_blur(blur: float) -> Recipe:
    """The defaults (the fourteenth round's choice) with each training image blurred by a
    Gaussian of standard deviation drawn from 0 to `blur` px."""
    return Recipe(
        f"lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze4-blur{blur:g}",
        f"the defaults with a Gaussian blur of up to {blur:g} px per training image",
        {**with_frozen_stages(4).train, "blur": blur},
    )


def with_hsv_jitter(strength: float) -> Recipe:
    """The defaults (the fourteenth round's choice) with hue/saturation jitter `strength`."""
    return Recipe(
        f"lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze4-hsv{strength:g}",
        f"the defaults with hue/saturation jitter {strength:g}",
        {**with_frozen_stages(4).train, "hsv_jitter": strength},
    )


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "lite0", "Lite0 224 px, 5 stages frozen, SMG 1536, 12 epochs (the former defaults)", LITE0
    ),
    Recipe("lite0-tta", "Lite0, embedded with --tta", LITE0, tta=True),
    Recipe("lite0-freeze3", "fewer frozen stages", {**LITE0, "freeze_stages": 3}),
    Recipe("lite0-freeze7", "more frozen stages", {**LITE0, "freeze_stages": 7}),
    Recipe("lite0-lr3e-4", "lower learning rate", {**LITE0, "lr": 3e-4}),
    Recipe("lite0-lr3e-3", "higher learning rate", LITE0_LR3E3),
    Recipe("lite0-lr1e-2", "higher still", {**LITE0, "lr": 1e-2}),
    Recipe(
        "lite0-lr3e-3-from-builtin",
        "lr 3e-3, starting from the built-in model",
        {**FROM_BUILTIN, "lr": 3e-3},
    ),
    Recipe(
        "lite0-lr3e-3-bb0.3",
        "lr 3e-3, the trunk's learning rate 0.3× the head's (not 0.1×)",
        {**LITE0_LR3E3, "backbone_lr_scale": 0.3},
    ),
    Recipe("lite0-lr3e-3-sg", "lr 3e-3, SPoC + GeM", {**LITE0_LR3E3, "gd_config": "SG"}),
    Recipe(
        "lite0-lr3e-3-stain0.1",
        "lr 3e-3, weaker stain jitter",
        {**LITE0_LR3E3, "stain_jitter": 0.1},
    ),
    Recipe("lite0-lr3e-3-20ep", "lr 3e-3, 20 epochs", {**LITE0_LR3E3, "epochs": 20}),
    Recipe("lite0-lr3e-3-bb1", "lr 3e-3, the trunk at the head's learning rate", LITE0_BB1),
    Recipe(
        "lite0-lr3e-3-bb0.3-freeze3",
        "lr 3e-3, trunk at 0.3×, 3 stages frozen (not 5)",
        {**LITE0_LR3E3, "backbone_lr_scale": 0.3, "freeze_stages": 3},
    ),
    Recipe(
        "lite0-lr3e-3-bb0.3-20ep",
        "lr 3e-3, trunk at 0.3×, 20 epochs",
        {**LITE0_LR3E3, "backbone_lr_scale": 0.3, "epochs": 20},
    ),
    Recipe(
        "lite0-bb1-stain0.1",
        "lr 3e-3 for head and trunk, weaker stain jitter",
        {**LITE0_BB1, "stain_jitter": 0.1},
    ),
    Recipe("lite0-bb1-20ep", "lr 3e-3 for head and trunk, 20 epochs", {**LITE0_BB1, "epochs": 20}),
    Recipe(
        "lite1-240-bb1",
        "Lite1 at 240 px, lr 3e-3 for head and trunk",
        {**LITE0_BB1, "backbone": "efficientnet_lite1", "image_size": 240},
    ),
    Recipe(
        "lite0-bb1-256",
        "lr 3e-3 for head and trunk, train and test at 256 px",
        {**LITE0_BB1, "image_size": 256},
    ),
    Recipe("lite0-bb1-g", "lr 3e-3 for head and trunk, GeM alone", LITE0_BB1_G),
    Recipe(
        "lite0-bb1-dim384",
        "lr 3e-3 for head and trunk, a 384-d embedding",
        {**LITE0_BB1, "dim": 384},
    ),
    Recipe(
        "lite0-bb1-g-256",
        "lr 3e-3 for head and trunk, GeM alone, train and test at 256 px",
        {**LITE0_BB1_G, "image_size": 256},
    ),
    Recipe(
        "lite0-bb1-g-margin0.3", "GeM alone, triplet margin 0.3", {**LITE0_BB1_G, "margin": 0.3}
    ),
    Recipe(
        "lite0-bb1-g-ls0", "GeM alone, no label smoothing", {**LITE0_BB1_G, "label_smoothing": 0.0}
    ),
    Recipe(
        "lite0-bb1-g-temp0.2",
        "GeM alone, classification temperature 0.2",
        {**LITE0_BB1_G, "temperature": 0.2},
    ),
    Recipe("lite0-bb1-g-20ep", "GeM alone, 20 epochs", LITE0_BB1_G_20EP),
    Recipe(
        "lite0-bb1-g-crop0.8",
        "GeM alone, crops of 80-100% area",
        {**LITE0_BB1_G, "crop_scale": 0.8},
    ),
    Recipe(
        "lite0-bb1-g-wd1e-3", "GeM alone, weight decay 1e-3", {**LITE0_BB1_G, "weight_decay": 1e-3}
    ),
    # The seventh round's spread between training seeds, on the same split.
    *(
        with_seed(Recipe(base, tries, train), seed)
        for seed in (1, 2)
        for base, tries, train in (
            ("lite0-bb1-g", "GeM alone", LITE0_BB1_G),
            ("lite0-bb1-g-20ep", "GeM alone, 20 epochs", LITE0_BB1_G_20EP),
        )
    ),
    # The eighth round: the defaults against 30 epochs, the seventh round's two near-ties
    # together (temperature 0.2, crops of 80-100%) and testing at 256 px, each over training
    # seeds 0, 1 and 2 (seed 0 of the defaults is lite0-bb1-g-20ep itself).
    *(
        with_seed(Recipe(base, tries, train, test_size=test_size), seed)
        for seed in (0, 1, 2)
        for base, tries, train, test_size in (
            (
                "lite0-bb1-g-20ep-test256",
                "GeM alone, 20 epochs, test at 256 px",
                LITE0_BB1_G_20EP,
                256,
            ),
            ("lite0-bb1-g-30ep", "GeM alone, 30 epochs", {**LITE0_BB1_G, "epochs": 30}, None),
            (
                "lite0-bb1-g-20ep-temp0.2-crop0.8",
                "GeM alone, 20 epochs, temperature 0.2, crops of 80-100% area",
                LITE0_BB1_G_20EP_TEMP_CROP,
                None,
            ),
        )
    ),
    # The ninth round: the defaults against stronger stain jitter (0.35 and 0.5 instead of 0.2),
    # each over training seeds 0, 1 and 2 (the defaults' are the eighth round's recipes,
    # trained again in the same run). The tenth: its choice (0.5) against 0.75 and 1.0, the
    # same way.
    *(
        with_seed(with_stain_jitter(strength), seed)
        for seed in (0, 1, 2)
        for strength in (0.35, 0.5, 0.75, 1.0)
    ),
    # The eleventh round: the tenth round's defaults trained for 30 epochs, and those models
    # tested at 256 px (one training run for both), each over training seeds 0, 1 and 2.
    *(
        with_seed(Recipe(base, tries, LITE0_BB1_G_30EP_STAIN, test_size=test_size), seed)
        for seed in (0, 1, 2)
        for base, tries, test_size in (
            ("lite0-bb1-g-30ep-temp0.2-crop0.8-stain0.5", "the defaults, 30 epochs", None),
            (
                "lite0-bb1-g-30ep-temp0.2-crop0.8-stain0.5-test256",
                "the defaults, 30 epochs, test at 256 px",
                256,
            ),
        )
    ),
    # The twelfth: the defaults with a moving average of the weights over about 2 epochs,
    # over training seeds 0, 1 and 2.
    *(
        with_seed(
            Recipe(
                "lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-ema2",
                "the defaults, weights averaged over about 2 epochs",
                {**LITE0_BB1_G_20EP_STAIN, "ema_epochs": 2.0},
            ),
            seed,
        )
        for seed in (0, 1, 2)
    ),
    # The thirteenth: the defaults with one stage fewer frozen (4: the trunk also learns its
    # 80-channel stage) and one more (6: only the last two block stages and the head learn),
    # over training seeds 0, 1 and 2.
    *(with_seed(with_frozen_stages(frozen), seed) for seed in (0, 1, 2) for frozen in (4, 6)),
    # The fourteenth (fixed before it ran): training seeds 3 and 4 of the defaults and of the
    # thirteenth round's nearest challenger, 4 frozen stages.
    *(
        with_seed(recipe, seed)
        for seed in (3, 4)
        for recipe in (with_stain_jitter(0.5), with_frozen_stages(4))
    ),
    # The seventeenth (fixed before it ran): the defaults with a Gaussian blur of up to 1 px
    # per training image, over training seeds 0, 1 and 2.
    *(with_seed(with_blur(1.0), seed) for seed in (0, 1, 2)),
    # The eighteenth (fixed before it ran): the defaults with hue/saturation jitter 0.3 (hue
    # shifted by up to ±0.03 of a turn, saturation scaled by 0.7 to 1.3), over training
    # seeds 0, 1 and 2.
    *(with_seed(with_hsv_jitter(0.3), seed) for seed in (0, 1, 2)),
    Recipe("lite0-sg", "descriptors SPoC + GeM", {**LITE0, "gd_config": "SG"}),
    Recipe("lite0-g", "GeM alone", {**LITE0, "gd_config": "G"}),
    Recipe(
        "lite0-dim384",
        "a 384-d embedding (the README's choice for large indexes)",
        {**LITE0, "dim": 384},
    ),
    Recipe("lite0-20ep", "20 epochs", {**LITE0, "epochs": 20}),
    Recipe(
        "lite0-from-builtin",
        "start from the built-in model (√ average pooling, identity projection), then train",
        FROM_BUILTIN,
    ),
    Recipe("lite0-from-builtin-tta", "that, embedded with --tta", FROM_BUILTIN, tta=True),
    Recipe("lite0-stain0.1", "weaker stain jitter", {**LITE0, "stain_jitter": 0.1}),
    Recipe("lite0-stain0.4", "stronger stain jitter", {**LITE0, "stain_jitter": 0.4}),
    Recipe("lite0-256", "train and test at 256 px", {**LITE0, "image_size": 256}),
    Recipe("lite0-ms", "multi-scale training (192/224/256 px per batch), test at 224", MULTI_SCALE),
    Recipe("lite0-ms-test256", "multi-scale training, test at 256", MULTI_SCALE, test_size=256),
    Recipe("lite1-240", "EfficientNet-Lite1 at its native 240 px", LITE1),
    Recipe("lite1-240-tta", "Lite1 at 240 px, embedded with --tta", LITE1, tta=True),
    Recipe(
        "lite1-240-stain0.4",
        "Lite1 at 240 px, stronger stain jitter",
        {**LITE1, "stain_jitter": 0.4},
    ),
    Recipe("lite2-260", "EfficientNet-Lite2 at its native 260 px", LITE2),
    Recipe("lite2-260-tta", "Lite2 at 260 px, embedded with --tta", LITE2, tta=True),
)
RECIPES_BY_NAME = {recipe.name: recipe for recipe in RECIPES}
#: What split a work folder's runs were trained on (kept beside them).
SPLIT_RECORD = "split.json"


def pick_recipes(text: str | None) -> list[Recipe]:
    """The recipes named in a comma-separated list (None: all), refusing unknown names."""
    if not text:
        return list(RECIPES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RECIPES_BY_NAME]
    if unknown:
        raise SystemExit(
            f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES_BY_NAME)}"
        )
    return [RECIPES_BY_NAME[name] for name in names]


def link_images(images: LabelledImages, keep: Sequence[int], target: Path) -> Path:
    """A folder target/<class>/<file> of symbolic links to the kept images."""
    for index in keep:
        path = images.paths[index]
        folder = target / images.class_names[images.labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).symlink_to(path.resolve())
    return target


def stratified_sample(images: LabelledImages, per_class: int, seed: int) -> list[int]:
    """`per_class` images of each class, drawn with a seeded shuffle."""
    rng = random.Random(seed)
    keep = []
    for label in sorted(set(images.labels)):
        members = [i for i, lab in enumerate(images.labels) if lab == label]
        keep += sorted(rng.sample(members, min(per_class, len(members))))
    return keep


def validation_split(
    train_dir: Path, work: Path, quick: bool, val_groups: str = "none", seed: int = 0
) -> tuple[Path, Path, Path]:
    """(fit folder, validation folder, full gallery folder) as folders of links under `work`.

    crc-polyps5 records no patients. With `val_groups` "none" every image is its own group (a
    stratified random split); with "colour", whole colour clusters within each class are held
    out, as stand-ins for patients.
    """
    images = scan_labelled_folder(train_dir)
    pool = stratified_sample(images, 40, seed) if quick else list(range(len(images)))
    labels = [images.labels[i] for i in pool]
    groups: list = pool
    if val_groups == "colour":
        paths = [images.paths[i] for i in pool]
        groups = colour_groups(paths, labels, clusters_per_class(VAL_FRACTION), seed)
    assignment = stratified_group_split(labels, groups, [1 - VAL_FRACTION, VAL_FRACTION], seed)
    fit = [i for i, part in zip(pool, assignment, strict=True) if part == 0]
    val = [i for i, part in zip(pool, assignment, strict=True) if part == 1]
    return (
        link_images(images, fit, work / "fit"),
        link_images(images, val, work / "val"),
        link_images(images, pool, work / "gallery"),
    )


def prepare_work_dir(work: Path, data: Path, val_groups: str) -> None:
    """Make `work` ready for a search: the runs of earlier searches stay (quality_posthoc.py
    scores them, and a later search may add to them) if they were trained on the same split;
    a folder of runs on another split is refused rather than mixed with or wiped."""
    split = {"data": str(data.resolve()), "val_groups": val_groups}
    record = work / SPLIT_RECORD
    if (work / "runs").exists():
        try:
            found = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != split:
            raise SystemExit(
                f"{work} holds runs trained on another split ({found or 'not recorded'}, not "
                f"{split}): give another --work-dir, or remove that one"
            )
    # The split is rebuilt from its seed, the same as the runs were trained on.
    shutil.rmtree(work / "split", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(split) + "\n", encoding="utf-8")


def train_recipe(
    recipe: Recipe, fit_dir: Path, val_dir: Path | None, run_dir: Path, quick: bool, workers: int
) -> tuple[Path, float]:
    """Train a recipe; returns (best checkpoint, training minutes)."""
    overrides = dict(recipe.train)
    if quick:
        overrides["epochs"] = 1
    config = TrainConfig(
        data_dir=str(fit_dir),
        run_dir=str(run_dir),
        val_dir=str(val_dir) if val_dir else None,
        val_fraction=0.0,
        workers=workers,
        **overrides,
    )
    started = time.perf_counter()
    train(config, overwrite=True)
    return run_dir / "model.pt", (time.perf_counter() - started) / 60


def recipe_embedder(checkpoint: Path, recipe: Recipe, workers: int) -> ImageEmbedder:
    """The trained model on the fastest backend, evaluated as the recipe says."""
    network, class_names, reference = load_model(checkpoint)
    if recipe.test_size is not None:
        network.config = replace(network.config, image_size=recipe.test_size)
    return embedder_for_model(
        network,
        reference,
        class_names,
        batch_size=64,
        workers=workers,
        notify=lambda line: None,
        tta=recipe.tta,
    )


@cache
def _macs(backbone: str, gd_config: str, dim: int, size: int) -> float:
    config = ModelConfig(backbone=backbone, gd_config=gd_config, dim=dim, image_size=size)
    return summarize(build_model(config), size).flops


def embed_cost(recipe: Recipe) -> float:
    """Work to embed one image as the recipe does, relative to the built-in model's."""
    config = TrainConfig(data_dir="", run_dir="", **recipe.train)
    size = recipe.test_size or config.image_size or get_backbone_spec(config.backbone).native_size
    views = DIHEDRAL_VIEWS if recipe.tta else 1
    builtin = builtin_config()
    reference = _macs(builtin.backbone, builtin.gd_config, builtin.dim, builtin.image_size)
    return views * _macs(config.backbone, config.gd_config, config.dim, size) / reference


def eligible(row: dict, max_minutes: float, max_cost: float) -> bool:
    """Whether a recipe trained within the time budget and embeds within the cost cap."""
    return row["train_minutes"] <= max_minutes and row["embed_cost"] <= max_cost


def choose(rows: list[dict], max_minutes: float, max_cost: float) -> dict:
    """The best validation score among eligible recipes (ties: faster to train), or among all
    where none is."""
    within = [row for row in rows if eligible(row, max_minutes, max_cost)] or rows
    return max(within, key=lambda row: (row["val_score"], -row["train_minutes"]))


def budget_spent(started: float, budget_minutes: float | None, now: float) -> bool:
    """Whether a search begun at `started` (perf_counter seconds) has used its budget."""
    return budget_minutes is not None and (now - started) / 60 >= budget_minutes


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the search, print the table and write its JSON; returns the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", help="comma-separated recipe names [default: all]")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 200 images")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-train-minutes", type=float, default=30.0)
    parser.add_argument(
        "--max-embed-cost",
        type=float,
        default=MAX_EMBED_COST,
        help="largest embedding work per image a chosen recipe may have, × the built-in model's",
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=None, help="start no training run after this"
    )
    parser.add_argument(
        "--val-groups",
        choices=("none", "colour"),
        default="none",
        help="hold out single images (none) or whole colour clusters per class (colour)",
    )
    parser.add_argument(
        "--skip-test",
        action="store_true",
        help="choose on validation and stop: the test set is not read (the runs are kept)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=RESULTS / "quality-recipes")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_recipes.json")
    args = parser.parse_args(argv)
    recipes = pick_recipes(args.recipes)
    if not (args.data / "train").is_dir():
        raise SystemExit(f"crc-polyps5 not found at {args.data}: the benchmark needs it")
    console = Console(width=150)
    work = args.work_dir / ("quick" if args.quick else "full")
    prepare_work_dir(work, args.data, args.val_groups)
    # Exports made on the fly for evaluation stay with the runs, out of the user's cache.
    os.environ.setdefault("HISTOSEEK_CACHE", str(work / "onnx-cache"))
    fit_dir, val_dir, gallery_dir = validation_split(
        args.data / "train", work / "split", args.quick, args.val_groups
    )
    started = time.perf_counter()

    runs: dict[str, tuple[Path, float]] = {}
    rows: list[dict] = []
    skipped: list[str] = []
    document = {
        "benchmark": "quality_recipes",
        "quick": args.quick,
        "machine": machine_record(),
        "split": {
            "val_fraction": VAL_FRACTION,
            "val_groups": args.val_groups,
            "fit_images": len(scan_labelled_folder(fit_dir).paths),
            "val_images": len(scan_labelled_folder(val_dir).paths),
        },
        "max_train_minutes": args.max_train_minutes,
        "max_embed_cost": args.max_embed_cost,
        "budget_minutes": args.budget_minutes,
        "rows": rows,
        "skipped": skipped,
        "partial": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for recipe in recipes:
        key = recipe.training_key()
        if key not in runs:
            if budget_spent(started, args.budget_minutes, time.perf_counter()):
                skipped.append(recipe.name)
                continue
            console.print(f"training {recipe.name} …")
            run_dir = work / "runs" / recipe.name
            runs[key] = train_recipe(recipe, fit_dir, val_dir, run_dir, args.quick, args.workers)
        checkpoint, minutes = runs[key]
        embedder = recipe_embedder(checkpoint, recipe, args.workers)
        metrics = evaluate(embedder, check_evaluation_set(fit_dir, val_dir)).metrics
        rows.append(
            {
                "recipe": recipe.name,
                "tries": recipe.tries,
                "train_minutes": minutes,
                "embed_cost": embed_cost(recipe),
                "val": metrics,
                "val_score": selection_score(metrics),
                "definition": asdict(recipe),
            }
        )
        console.print(
            f"{recipe.name}: val R@1 {metrics['recall@1']:.3f}, mMV@5 {metrics['mmv@5']:.3f}, "
            f"{minutes:.1f} min training"
        )
        args.out.write_text(json.dumps(document, indent=2))

    if not rows:
        raise SystemExit(f"no recipe was trained within --budget-minutes {args.budget_minutes:g}")
    chosen = choose(rows, args.max_train_minutes, args.max_embed_cost)
    recipe = RECIPES_BY_NAME[chosen["recipe"]]
    checkpoint = runs[recipe.training_key()][0]
    test = None
    if not args.skip_test:
        test_dir = args.data / "test"
        if args.quick:
            test_images = scan_labelled_folder(test_dir)
            keep = stratified_sample(test_images, 20, seed=1)
            test_dir = link_images(test_images, keep, work / "split" / "test")
        test_set = check_evaluation_set(gallery_dir, test_dir)
        test = evaluate(recipe_embedder(checkpoint, recipe, args.workers), test_set)
        chosen["test"] = test.metrics
    seconds = time.perf_counter() - started

    table = Table(title="recipe search on crc-polyps5 (validation only; test for the choice)")
    for column in (
        "recipe",
        "tries",
        "val R@1",
        "val mMV@5",
        "train min",
        "embed cost",
        "test R@1",
        "test mMV@5",
    ):
        table.add_column(column, justify="left" if column in ("recipe", "tries") else "right")
    for row in rows:
        tested = "test" in row
        table.add_row(
            f"[bold]{row['recipe']}[/bold] (chosen)" if row is chosen else row["recipe"],
            row["tries"],
            f"{row['val']['recall@1']:.3f}",
            f"{row['val']['mmv@5']:.3f}",
            f"{row['train_minutes']:.1f}",
            f"{row['embed_cost']:.2f}×",
            f"{row['test']['recall@1']:.3f}" if tested else "",
            f"{row['test']['mmv@5']:.3f}" if tested else "",
        )
    console.print(table)
    tested_on = (
        "test not read (--skip-test)"
        if test is None
        else f"test = crc-polyps5/test → train, {test.query_size} queries against "
        f"{test.gallery_size}"
    )
    console.print(
        f"chosen by validation (mean of R@1 and mMV@5, training ≤ {args.max_train_minutes:g} "
        f"min, embedding ≤ {args.max_embed_cost:g}× the built-in model's work): "
        f"{chosen['recipe']}; {tested_on}; total {seconds / 60:.1f} min"
    )
    if skipped:
        console.print(f"not reached within --budget-minutes: {', '.join(skipped)}")
    if not eligible(chosen, args.max_train_minutes, args.max_embed_cost):
        console.print(
            f"no recipe trained within {args.max_train_minutes:g} min (a busy CPU slows "
            f"training) and embeds within {args.max_embed_cost:g}×: the choice is the best of all"
        )
    document.update(chosen=chosen["recipe"], seconds=seconds, partial=False)
    args.out.write_text(json.dumps(document, indent=2))
    console.print(f"wrote {args.out}")
    return document


if __name__ == "__main__":
    main()
