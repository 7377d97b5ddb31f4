"""The paper recipes' training transforms on real CIFAR-10 images (../shared/data): RandAugment's posterize
at 0 bits, which Pillow 13 refuses and older Pillow turned into a black image (issue 19 §1)."""
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from spikingformer.data import EpochSampler, build_data
from spikingformer.train.config import load_config
from spikingformer.train.engine import resolve_img_size

from ..real_data import cifar_jpeg_tree

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
# every shipped recipe with RandAugment magnitude noise on an increasing posterize
RECIPES = ("cifar10", "cifar100", "cifar10_jpeg", "imagenet_8_512", "imagenet_8_768", "imagenet_v2_8_512",
           "imagenet_v2_finetune")
PER_CLASS = 30

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    """The first 30 images of each class of the real CIFAR-10 JPEG copy, as ``train/<class>/NNNN.jpg``."""
    if not DATA.exists():
        pytest.skip("../shared/data/cifar10-train-jpeg.tar.gz (beside the repository) is not available")
    return cifar_jpeg_tree(tmp_path_factory.mktemp("cifar10-jpeg"), PER_CLASS)  # the tarball is read once a session


def _old_pillow_posterize(img: Image.Image, bits: int) -> Image.Image:
    """``ImageOps.posterize`` of Pillow 12 and before, which took any number of bits."""
    lut = [i & ~(2 ** (8 - bits) - 1) for i in range(256)]
    return img.point(lut * len(img.getbands()))


def test_posterize_keeps_what_pillow_12_gave_for_every_bit_count(cifar):
    from spikingformer.data.transforms import posterize_zero_bits_black

    img = Image.open(cifar / "train" / "cat" / "0000.jpg").convert("RGB")
    for mode in ("RGB", "L"):
        im = img.convert(mode)
        for bits in range(9):
            assert posterize_zero_bits_black(im, bits).tobytes() == _old_pillow_posterize(im, bits).tobytes(), bits
        assert posterize_zero_bits_black(im, 0).getbbox() is None  # all black


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_training_transform_runs_its_strongest_posterize_on_real_images(recipe, cifar):
    """The transform training builds for ``recipe`` (``build_data`` on the real images, as a class folder):
    10,000 seeded draws of its posterize op, which reach 0 bits (all black, where Pillow 13 raised) tens of
    times; then one seeded epoch of the whole transform over the 290 training images."""
    cfg = load_config(recipe, [f"data_dir={cifar}", "dataset=folder", "val_split=holdout", "holdout=10"])
    data = build_data(cfg, resolve_img_size(cfg))
    (randaugment,) = [t for t in data.train.transform.transforms if hasattr(t, "ops")]
    (posterize,) = [op for op in randaugment.ops if op.name.startswith("Posterize")]
    img = Image.open(cifar / "train" / "ship" / "0003.jpg").convert("RGB")
    assert max(hi for _, hi in img.getextrema()) >= 128  # one bit or more keeps some of it: only 0 bits is black
    black = 0
    for seed in range(10_000):
        random.seed(seed)
        black += posterize(img).getbbox() is None
    assert black >= 20, black  # mstd 0.4 at m9: P(m >= 10) = 0.6 %, the op runs half the time

    size = data.img_size
    for key in EpochSampler(len(data.train), 1, cfg.seed):
        x, _ = data.train[key]
        assert x.shape == (3, size, size) and torch.isfinite(x).all()
