"""The fast paths stay faithful: numpy preprocessing, JPEG draft decoding and bf16 weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from clipsearch.encoders.facts import draft_side
from clipsearch.encoders.images import open_image
from clipsearch.encoders.loading import load_encoder
from clipsearch.encoders.spec import resolve_precision


def photos() -> list[Image.Image]:
    names = (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "camera",
        "coins",
        "hubble_deep_field",
        "immunohistochemistry",
    )
    out = []
    for name in names:
        try:
            out.append(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"))
        except Exception:  # a sample that needs a download: not available offline
            continue
    return out


def twelve_megapixel_jpegs(tmp: Path) -> list[Path]:
    paths = []
    for i, img in enumerate(photos()[:4]):
        big = img.resize((4000, 3000), Image.Resampling.BICUBIC)
        paths.append(tmp / f"big{i}.jpg")
        big.save(paths[-1], quality=92)
    return paths


@pytest.fixture(scope="module")
def vit(vit_b_32_cache: Path):
    return load_encoder("ViT-B-32", "laion2b_s34b_b79k")


def odd_sizes() -> list[Image.Image]:
    base = photos()[0]
    sizes = [(640, 480), (480, 640), (97, 301), (224, 224), (1000, 33), (33, 1000), (225, 224), (3000, 2000)]
    return [base.resize(s) for s in sizes] + [Image.new("RGB", (50, 40), "red")]


@pytest.mark.parametrize("which", ["tiny", pytest.param("vit", marks=pytest.mark.slow)])
def test_numpy_preprocessing_equals_open_clip(which: str, request: pytest.FixtureRequest) -> None:
    encoder = request.getfixturevalue("tiny_encoder" if which == "tiny" else "vit")
    assert encoder.pixel_transform is not None
    level = 1 / (255 * min(encoder.pixel_transform.std))  # one 8-bit step, normalised
    differing = total = 0
    for img in odd_sizes():
        ours = encoder.pixel_transform(img)
        theirs = encoder.preprocess(img).numpy()
        assert ours.shape == theirs.shape
        # shrinking resizes only the crop's box: Pillow's float weights may round a value one step apart
        np.testing.assert_allclose(ours, theirs, atol=level + 1e-5)
        differing += int(np.sum(np.abs(ours - theirs) > 1e-5))
        total += ours.size
    assert differing <= total / 2000, f"{differing} of {total} values differ"


@pytest.mark.slow
def test_draft_decoding_stays_close_to_full_decoding(vit, tmp_path: Path) -> None:
    paths = twelve_megapixel_jpegs(tmp_path)
    fast = vit.encode_images([open_image(p, min_side=draft_side(vit)) for p in paths])
    full = np.stack([vit.encode_images([Image.open(p).convert("RGB")])[0] for p in paths])
    same = np.sum(fast * full, axis=1)
    assert same.min() >= 0.99, same
    # the check can fail: different photos are further apart than the draft is from the original
    others = fast @ full.T
    assert (others[~np.eye(len(paths), dtype=bool)] < same.min()).all()
    assert max(Image.open(p).size[0] for p in paths) == 4000
    assert max(open_image(p, min_side=draft_side(vit)).size[0] for p in paths) <= 1000  # really reduced


@pytest.mark.slow
def test_bf16_embeddings_match_fp32(vit) -> None:
    if resolve_precision("auto") != "bf16":
        pytest.skip("this CPU has no native bfloat16; auto stays fp32")
    bf16 = load_encoder("ViT-B-32", "laion2b_s34b_b79k", precision="bf16")
    gallery = []
    for img in photos():
        for angle in (0, 90):
            buf = io.BytesIO()
            img.rotate(angle, expand=True).save(buf, format="JPEG", quality=90)
            gallery.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    fp32_vecs, bf16_vecs = vit.encode_images(gallery), bf16.encode_images(gallery)
    cosines = np.sum(fp32_vecs * bf16_vecs, axis=1)
    assert cosines.min() >= 0.999, cosines.min()
    texts = ["a cat", "a rocket", "coins", "a person in a space suit", "coffee", "a photo"]
    assert np.sum(vit.encode_texts(texts) * bf16.encode_texts(texts), axis=1).min() >= 0.999
    # the same top-10 for every image query (random weights score texts too evenly to rank them)
    for i in range(len(gallery)):
        top32 = set(np.argsort(-(fp32_vecs @ fp32_vecs[i]))[:10].tolist())
        top16 = set(np.argsort(-(bf16_vecs @ bf16_vecs[i]))[:10].tolist())
        assert top32 == top16, i


def test_encoding_with_fewer_threads_gives_the_same_vectors(tiny_encoder) -> None:
    import torch

    pixels = np.stack([tiny_encoder.pixel_transform(img) for img in odd_sizes()])
    before = torch.get_num_threads()
    one = tiny_encoder.encode_pixels(pixels, threads=1)
    assert torch.get_num_threads() == before  # restored
    np.testing.assert_allclose(one, tiny_encoder.encode_pixels(pixels), atol=1e-5)


def test_pixel_transform_halves_compose_to_the_whole(tiny_encoder) -> None:
    transform = tiny_encoder.pixel_transform
    images = odd_sizes()
    shipped = np.stack([transform.resize_crop(img) for img in images])
    assert shipped.dtype == np.uint8 and shipped.shape[1:] == (*tiny_encoder.image_size, 3)
    np.testing.assert_allclose(
        transform.normalize(shipped), np.stack([transform(img) for img in images]), atol=1e-6
    )


EXTREME_SCRIPT = """
import sys
from clipsearch.encoders.images import open_image
from clipsearch.encoders.pixels import PixelTransform

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

# ViT-B-32's transform: the shorter side resized to 224, then the centre 224 x 224
vit = PixelTransform(224, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bicubic", "shortest")
for path in sys.argv[1:]:
    image = open_image(path)
    before = peak()
    pixels = vit.resize_crop(image)
    print(*pixels.shape, *pixels[112, 112], peak() - before)
"""


def test_extreme_aspect_ratios_cost_the_crop_not_the_enlarged_image(tmp_path: Path) -> None:
    """A 1x300000 PNG enlarged whole would be 224 x 67,200,000 pixels (60 GB); 3000x1, 636 MB.

    Only the crop's box is resized, so memory is bounded by the model's input size. Run in a child
    limited to 2 GB of address space, so the old way fails fast instead of taking the machine.
    """
    import resource
    import subprocess
    import sys

    sizes = [(1, 300_000), (100_000, 1), (3000, 1)]
    paths = []
    for width, height in sizes:
        line = np.linspace(0, 255, max(width, height)).astype(np.uint8)
        img = Image.fromarray(line.reshape(height, width)).convert("RGB")
        paths.append(tmp_path / f"{width}x{height}.png")
        img.save(paths[-1])  # a few hundred bytes to a few KB on disk

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    out = subprocess.run(
        [sys.executable, "-c", EXTREME_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        height, width, channels, red, green, blue, grown = map(int, line.split())
        assert (height, width, channels) == (224, 224, 3)
        assert abs(red - 127.5) < 2 and red == green == blue  # the middle of the grey ramp: centred
        assert grown < 32 * 2**20  # the crop: 224 x 224 pixels, not the enlarged image
