"""Photo digits: scikit-learn's 8x8 handwritten digits painted over crops of its two bundled photographs.

An offline benchmark in the manner of MNIST-M (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015), built only from data that ships with scikit-learn: the digits of
`load_digits` (`contrastive.data.digits`) and the photographs of `load_sample_images` (china.jpg and
flower.jpg, 427 x 640 RGB). Images are 32 x 32 RGB uint8; 10,000 train and 2,000 test, exactly balanced
(train: 1,000 per class, test: 200 per class).

Each image is made from its own draws of a NumPy PCG64 stream seeded with (seed, split):

1. Background: a photo p (china or flower, each with probability 1/2) and a square crop of side
   c ~ U{32..64} at a uniform position inside the photo's *split band* of columns (train: columns
   0..447, test: 448..639, so no photo pixel of a test image is in any train image), resized to 32 x 32
   (PIL bilinear, antialiased); the bands are `PHOTO_BANDS`.
2. Digit: the label y is fixed per example (round robin over the classes, then shuffled); the source is a
   uniform draw among the digits of class y in the split (`digits.split_indices`: test images use only
   test digits). The 8x8 image (0..16) is resized smoothly (PIL bicubic) to s x s, s ~ U{s_min..s_max},
   and divided by 16 to an alpha mask a in [0, 1] (clipped), placed with its top-left corner at
   (row, col) ~ U{0..32-s}^2.
3. Colour: k ~ U{0..255}^3, redrawn (up to 32 times, keeping the farthest) until its Euclidean distance
   to the mean background colour under the digit's box is at least `MIN_CONTRAST`, so that the digit is
   visible on every image.
4. Blending, alpha compositing (not MNIST-M's |background - digit|): x = (1 - a) * background + a * k,
   rounded to uint8.

The builder config `large` (dataset `photo_digits_large`) uses `LARGE`, digits of 22..28 pixels instead of
14..28; everything else is the same.

Extra fields keep every nuisance draw, so experiments can probe what the features kept and captions can
name them: `colour` (RGB uint8), `position` (row, col of the digit's top-left corner), `scale` (s),
`photo` (0 china, 1 flower), `crop` (row0, col0, row1, col1 of the background crop in the photo, end
exclusive), `digit_index` (the digit's position in `load_digits`), `index` (the example's position in
its split, a stable id for per-sample state) and `captions` (template sentences naming the digit, its
colour and its place, for the image-text family; `DIGIT_CAPTIONS` are those that do not name the colour).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from contrastive.data import digits

IMAGE_SIZE = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
NUM_CLASSES = 10
PHOTOS = ("china.jpg", "flower.jpg")
PHOTO_BANDS = {"train": (0, 448), "test": (448, 640)}  # [start, end) columns of each photo per split
MIN_CONTRAST = 120.0  # least RGB distance between the digit's colour and the background under it
COLOUR_TRIES = 32
SPLIT_IDS = {"train": 0, "test": 1}

COLOUR_NAMES = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (220, 30, 30),
                "green": (40, 180, 40), "blue": (30, 60, 220), "yellow": (240, 230, 40), "cyan": (40, 220, 230),
                "magenta": (220, 40, 220), "orange": (250, 140, 20), "purple": (120, 40, 160),
                "brown": (130, 80, 30), "pink": (250, 160, 190)}
CAPTION_TEMPLATES = ("a {colour} {digit} {place}", "a {colour} {numeral} on a photo", "the number {digit}",
                     "a {digit} painted in {colour}", "a {numeral} {place}", "a {colour} handwritten {digit}")
# The templates that name the digit but not its colour (the `*_digit_captions` datasets).
DIGIT_CAPTIONS = tuple(i for i, t in enumerate(CAPTION_TEMPLATES) if "{colour}" not in t)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What varies between images (the benchmark's difficulty)."""

    num_train: int = 10_000
    num_test: int = 2_000
    min_scale: int = 14  # digit side in pixels, drawn from [min_scale, max_scale]
    max_scale: int = 28
    min_crop: int = 32  # background crop side in photo pixels, drawn from [min_crop, max_crop]
    max_crop: int = 64

    def __post_init__(self):
        if not 1 <= self.min_scale <= self.max_scale <= IMAGE_SIZE:
            raise ValueError(f"need 1 <= min_scale <= max_scale <= {IMAGE_SIZE}, got {self}")
        band = min(end - start for start, end in PHOTO_BANDS.values())
        if not IMAGE_SIZE <= self.min_crop <= self.max_crop <= band:
            raise ValueError(f"need {IMAGE_SIZE} <= min_crop <= max_crop <= {band}, got {self}")


# The easier variant (`photo_digits_large`): digits of 22-28 px, so each covers most of the image and its
# top-left corner moves over 0..10 px instead of 0..18 (the default's 14-28 px). For a budget of 15 minutes
# on 2 CPU cores, where SimCLR on the default recipe reached 62% after 1,200 steps (about 20 minutes).
LARGE = Recipe(min_scale=22)


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    return [load_sample_image(name) for name in PHOTOS]


def colour_index(rgb) -> np.ndarray:
    """The index in `COLOUR_NAMES` of the nearest named colour (Euclidean in RGB) of each [..., 3] colour."""
    table = np.array(list(COLOUR_NAMES.values()), float)
    dist = np.linalg.norm(np.asarray(rgb, float)[..., None, :] - table, axis=-1)
    return np.argmin(dist, axis=-1)


def colour_name(rgb) -> str:
    """The nearest name of `COLOUR_NAMES` (Euclidean in RGB)."""
    return list(COLOUR_NAMES)[int(colour_index(rgb))]


def place_index(position, scale) -> np.ndarray:
    """3 * row third + column third of the digit's centre (0: top left .. 8: bottom right), for [..., 2]
    positions and [...] scales."""
    centre = np.asarray(position, float) + np.asarray(scale, float)[..., None] / 2
    third = np.minimum(2, (3 * centre / IMAGE_SIZE).astype(int))
    return 3 * third[..., 0] + third[..., 1]


def place_name(position, scale: int) -> str:
    """'at the top left', 'in the centre', ...: the digit centre's third of the image, rows then columns."""
    return PLACES[int(place_index(position, scale))]


def _place_names() -> tuple[str, ...]:
    rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
    names = []
    for r in range(3):
        for c in range(3):
            names.append("in the centre" if (r, c) == (1, 1) else f"on the {cols[c]}" if r == 1
                         else f"at the {rows[r]}" if c == 1 else f"at the {rows[r]} {cols[c]}")
    return tuple(names)


PLACES = _place_names()  # place_index -> the caption's words
# The nuisance classes of an example, for the `attributes` evaluator (datasets.Attribute):
# name -> (raw fields, labels from those fields' arrays, class names).
ATTRIBUTES = {
    "colour": (("colour",), lambda a: colour_index(a["colour"]), tuple(COLOUR_NAMES)),
    "place": (("position", "scale"), lambda a: place_index(a["position"], a["scale"]), PLACES),
    "photo": (("photo",), lambda a: np.asarray(a["photo"], int), PHOTOS),
}


def captions_for(label: int, colour, position, scale: int) -> list[str]:
    words = dict(digit=digits_words()[label], numeral=str(label), colour=colour_name(colour),
                 place=place_name(position, scale))
    return [t.format(**words) for t in CAPTION_TEMPLATES]


def digits_words() -> tuple[str, ...]:
    from contrastive.data.captions import DIGIT_WORDS

    return DIGIT_WORDS


def generate(split: str, seed: int = 0, recipe: Recipe = Recipe()) -> dict[str, np.ndarray]:
    """Every example of `split` as arrays (the builder stores exactly these); a pure function of its args."""
    from PIL import Image
    from sklearn.datasets import load_digits

    n = recipe.num_train if split == "train" else recipe.num_test
    rng = np.random.default_rng([seed, SPLIT_IDS[split]])
    data = load_digits()
    sources = digits.split_indices()[split]
    by_class = [sources[data.target[sources] == c] for c in range(NUM_CLASSES)]
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    photos = _photos()
    band_start, band_end = PHOTO_BANDS[split]
    out = {"image": np.empty((n, *IMAGE_SHAPE), np.uint8), "label": labels.astype(np.int64),
           "index": np.arange(n, dtype=np.int64), "colour": np.empty((n, 3), np.uint8),
           "position": np.empty((n, 2), np.int32), "scale": np.empty(n, np.int32), "photo": np.empty(n, np.int32),
           "crop": np.empty((n, 4), np.int32), "digit_index": np.empty(n, np.int64)}
    for i, label in enumerate(labels):
        photo = int(rng.integers(len(photos)))
        side = int(rng.integers(recipe.min_crop, recipe.max_crop + 1))
        r0 = int(rng.integers(0, photos[photo].shape[0] - side + 1))
        c0 = int(rng.integers(band_start, band_end - side + 1))
        crop = photos[photo][r0:r0 + side, c0:c0 + side]
        background = np.asarray(Image.fromarray(crop).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), np.float64)

        digit = int(rng.choice(by_class[label]))
        scale = int(rng.integers(recipe.min_scale, recipe.max_scale + 1))
        row, col = (int(v) for v in rng.integers(0, IMAGE_SIZE - scale + 1, size=2))
        small = Image.fromarray(data.images[digit].astype(np.float32), mode="F")
        alpha = np.clip(np.asarray(small.resize((scale, scale), Image.BICUBIC)) / digits.MAX_INTENSITY, 0.0, 1.0)

        under = background[row:row + scale, col:col + scale].reshape(-1, 3).mean(0)
        tries = rng.integers(0, 256, size=(COLOUR_TRIES, 3))
        dist = np.linalg.norm(tries - under, axis=1)
        ok = np.flatnonzero(dist >= MIN_CONTRAST)
        colour = tries[ok[0] if ok.size else int(np.argmax(dist))]

        image = background.copy()
        a = alpha[..., None]
        image[row:row + scale, col:col + scale] = (1 - a) * image[row:row + scale, col:col + scale] + a * colour
        out["image"][i] = np.clip(np.round(image), 0, 255).astype(np.uint8)
        out["colour"][i], out["position"][i], out["scale"][i] = colour, (row, col), scale
        out["photo"][i], out["crop"][i], out["digit_index"][i] = photo, (r0, c0, r0 + side, c0 + side), digit
    return out


class PhotoDigitsConfig(tfds.core.BuilderConfig):
    def __init__(self, *, seed: int = 0, recipe: Recipe = Recipe(), **kwargs):
        super().__init__(**kwargs)
        self.seed, self.recipe = seed, recipe


class PhotoDigits(tfds.core.GeneratorBasedBuilder):
    """The photo digits as a TFDS dataset (prepared locally from scikit-learn's files, nothing downloaded)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "10,000 train / 2,000 test, 32x32 RGB, alpha-composited, disjoint photo bands."}
    BUILDER_CONFIGS = [PhotoDigitsConfig(name="default", description="seed 0, the default Recipe"),
                       PhotoDigitsConfig(name="large", recipe=LARGE, description="seed 0, digits of 22-28 px")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=digits_words()),
                "index": np.int64,
                "colour": tfds.features.Tensor(shape=(3,), dtype=np.uint8),
                "position": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                "scale": np.int32,
                "photo": tfds.features.ClassLabel(names=PHOTOS),
                "crop": tfds.features.Tensor(shape=(4,), dtype=np.int32),
                "digit_index": np.int64,
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/loading_other_datasets.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything ships inside scikit-learn.
        return {split: self._generate_examples(split) for split in SPLIT_IDS}

    def _generate_examples(self, split):
        arrays = generate(split, self.builder_config.seed, self.builder_config.recipe)
        for i in range(len(arrays["label"])):
            example = {k: v[i] for k, v in arrays.items()}
            example["captions"] = captions_for(int(example["label"]), example["colour"], example["position"],
                                               int(example["scale"]))
            yield i, example


def photo_digits_builder(data_dir: str, config: PhotoDigitsConfig | str | None = None) -> PhotoDigits:
    """The prepared builder (`config`: one of BUILDER_CONFIGS or its name; None: "default"); prepares the
    array_record files under `data_dir` on first use."""
    return digits.prepared(PhotoDigits, data_dir, config=config)  # one process prepares, others wait
