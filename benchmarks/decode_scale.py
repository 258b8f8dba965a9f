"""The JPEG decode-scale trade (issue #20): fidelity and time of decoding at >= 2x, 1.5x or 1x the
model's input, against decoding every pixel.

    python benchmarks/decode_scale.py                  # about 4 min on 2 busy cores
    python benchmarks/decode_scale.py --large 4 --medium 8 --shapes 100 --skip-vit   # a quick look
    python benchmarks/decode_scale.py --json | jq .

JPEGs are decoded with Pillow's ``draft`` at the largest DCT reduction (1/2, 1/4, 1/8) whose shorter
side stays at least ``scale`` times the model's input; then the model's own resize and crop
(``PixelTransform``). The reference is the same path on the fully decoded image. For each image set,
model and scale it prints:

- cosine of each image's fp32 embedding to its full-decode embedding (mean and minimum),
- top-10 agreement: for each query, whether its top-10 in the gallery embedded at that scale is the
  same set as in the full-decode gallery (text queries of the shapes model on the shapes set:
  colour + shape and colour + shape + position; image queries, each full-decode vector against
  the others, for the random ViT-B-32),
- decoding CPU per image (thread CPU time of decode + resize + crop; images interleaved over the
  scales, so drift hits all alike), and what it saves against today's 2x.

The image sets: scikit-image's own photos (as JPEGs, at their size: 300-1000 px), generated
camera photos (random crops of those, upscaled with grain: ``--large`` at 12 MP and ``--medium`` at
1 MP, as benchmarks/compare.py makes them), the fine-pattern case (12-MP JPEGs of 2-4 px stripes,
a checkerboard and a photo with striped cloth) and the shapes set (scenes of the shapes world
rendered at 600-1400 px, saved as JPEGs). The models: ViT-B-32 with random weights (from a Hugging
Face cache laid out offline, as compare.py does) and the trained ``shapes`` model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import ensure_photos, jpeg_files, sample_photos
from PIL import Image

SCALES = (2.0, 1.5, 1.0)  # 2.0: the decode scale of clipsearch <= 0.x, the reference of "saved"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- image sets


def skimage_jpegs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, base in enumerate(sample_photos()):
        paths.append(folder / f"skimage_{i}.jpg")
        Image.fromarray(base).save(paths[-1], quality=92)
    return paths


def fine_patterns(folder: Path, size: tuple[int, int] = (4000, 3000)) -> list[Path]:
    """12-MP JPEGs whose detail sits near the pixel: stripes of 2, 3 and 4 px (three directions), a
    2-px checkerboard, and a photo with a band of 3-px striped 'cloth' across it."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    out = []

    def save(name: str, pixels: npt.NDArray[Any]) -> None:
        out.append(folder / f"{name}.jpg")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out[-1], quality=92)

    for period in (2, 3, 4):
        for direction, coord in (("v", xs), ("h", ys), ("d", xs + ys)):
            on = (coord // max(1, period // 2)) % 2 if period != 3 else (coord % 3 == 0)
            tint = np.array([40 * period, 120, 250 - 40 * period], dtype=np.float32)
            save(f"stripes{period}{direction}", on[..., None] * tint + (1 - on[..., None]) * 235)
    save("checker2", (((xs // 2) + (ys // 2)) % 2 * 255)[..., None].repeat(3, axis=2))
    base = np.asarray(Image.fromarray(sample_photos()[0]).resize(size, Image.Resampling.BICUBIC))
    cloth = base.astype(np.float32)
    band = slice(height // 3, 2 * height // 3)
    cloth[band] = np.where((xs[band] % 3 == 0)[..., None], 30.0, 220.0) * [1.0, 0.3, 0.3]
    save("photo_cloth", cloth)
    return out


def shapes_jpegs(folder: Path, count: int, seed: int) -> tuple[list[Path], list[Any]]:
    """Balanced single-shape scenes of the shapes world at 600-1400 px, as JPEGs; paths and scenes."""
    from clipsearch.shapes import world
    from clipsearch.shapes.evaluate import balanced_scenes

    folder.mkdir(parents=True, exist_ok=True)
    scenes = balanced_scenes(seed, copies=max(1, -(-count // 400)))
    rng = np.random.default_rng(seed)
    picked = [scenes[i] for i in sorted(rng.choice(len(scenes), size=min(count, len(scenes)), replace=False))]
    paths = []
    for i, scene in enumerate(picked):
        image = world.render(scene, rng, world.sample_image_size(rng, (600, 1400)))
        paths.append(folder / f"shape_{i:04d}.jpg")
        image.save(paths[-1], quality=int(rng.integers(80, 96)))
    return paths, picked


# ---------------------------------------------------------------- decoding and encoding


@dataclass
class Path_:
    """One decode path over a set: the uint8 crops and the decoding CPU seconds per image."""

    pixels: list[npt.NDArray[np.uint8]]
    seconds: list[float]
    sizes: list[tuple[int, int]]


def decode_all(files: list[Path], transform: Any, image_size: tuple[int, int]) -> dict[str, Path_]:
    """Every file decoded in full and at every scale (interleaved per file)."""
    from clipsearch.encoders.facts import draft_side
    from clipsearch.encoders.images import open_image

    class _Size:
        pass

    model = _Size()
    model.image_size = image_size  # type: ignore[attr-defined]
    sides: dict[str, int | None] = {"full": None, **{f"{s:g}x": draft_side(model, s) for s in SCALES}}  # type: ignore[arg-type]
    out = {key: Path_([], [], []) for key in sides}
    for path in files:
        data = path.read_bytes()
        for key, side in sides.items():
            started = time.thread_time()
            image = open_image(data, min_side=side, max_pixels=200_000_000)
            size = image.size
            pixels = transform.resize_crop(image)
            out[key].seconds.append(time.thread_time() - started)
            out[key].pixels.append(pixels)
            out[key].sizes.append(size)
    return out


def embed(encoder: Any, pixels: list[npt.NDArray[np.uint8]], batch: int = 32) -> npt.NDArray[np.float32]:
    rows = []
    for start in range(0, len(pixels), batch):
        chunk = encoder.pixel_transform.normalize(np.stack(pixels[start : start + batch]))
        rows.append(encoder.encode_pixels(chunk))
    return np.concatenate(rows)


def top10(
    queries: npt.NDArray[np.float32], gallery: npt.NDArray[np.float32], skip_self: bool
) -> list[set[int]]:
    scores = queries @ gallery.T
    if skip_self:
        np.fill_diagonal(scores, -np.inf)
    return [set(row.tolist()) for row in np.argsort(-scores, axis=1, kind="stable")[:, :10]]


def compare(
    encoder: Any,
    decoded: dict[str, Path_],
    *,
    text_queries: list[str] | None = None,
    relevant: list[npt.NDArray[np.bool_]] | None = None,
) -> dict[str, Any]:
    full = embed(encoder, decoded["full"].pixels)
    if text_queries:
        queries, skip_self = encoder.encode_texts(text_queries), False
    else:
        queries, skip_self = full, True
    # top-10 of a gallery of 20 or fewer images says little (with 11, every image is in every top 10)
    reference = top10(queries, full, skip_self) if len(full) > 20 else None
    rows: dict[str, Any] = {}
    base = float(np.mean(decoded["2x"].seconds))
    for key, path in decoded.items():
        vectors = full if key == "full" else embed(encoder, path.pixels)
        cosine = np.sum(vectors * full, axis=1)
        row: dict[str, Any] = {
            "cosine_mean": round(float(cosine.mean()), 5),
            "cosine_min": round(float(cosine.min()), 5),
            "decode_ms": round(1000 * float(np.mean(path.seconds)), 2),
            "saved_vs_2x_ms": round(1000 * (base - float(np.mean(path.seconds))), 2),
            "decoded_side_median": int(np.median([min(s) for s in path.sizes])),
        }
        if reference is not None:
            mine = top10(queries, vectors, skip_self)
            row["top10_same"] = sum(a == b for a, b in zip(mine, reference, strict=True))
            row["top10_queries"] = len(reference)
            row["top10_overlap"] = round(
                float(np.mean([len(a & b) / 10 for a, b in zip(mine, reference, strict=True)])), 4
            )
            if relevant is not None:  # hits in the top 10: a swap between equally relevant images is no loss
                hits = [int(rel[sorted(top)].sum()) for rel, top in zip(relevant, mine, strict=True)]
                ref_hits = [int(rel[sorted(top)].sum()) for rel, top in zip(relevant, reference, strict=True)]
                row["p10"] = round(float(np.mean(hits)) / 10, 4)
                row["same_hits"] = sum(a == b for a, b in zip(hits, ref_hits, strict=True))
        rows[key] = row
    return rows


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", type=int, default=12, help="generated 12-MP photos")
    parser.add_argument("--medium", type=int, default=24, help="generated 1-MP photos")
    parser.add_argument("--shapes", type=int, default=400, help="shapes-world JPEGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-vit", action="store_true", help="leave out the random ViT-B-32")
    parser.add_argument(
        "--hf-cache",
        type=Path,
        default=Path.home() / ".cache" / "clipsearch-bench" / "hf",
        help="Hugging Face cache with (random) ViT-B-32 weights; written there when missing",
    )
    parser.add_argument("--workdir", type=Path, help="keep the generated images here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="one JSON object per set and model on stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_CACHE", str(args.hf_cache))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from clipsearch.encoders.loading import load_encoder
    from clipsearch.shapes.evaluate import color_shape_queries, position_queries

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clipsearch-decode-scale-"))
    log(f"images in {work}; uptime: {os.popen('uptime').read().strip()}")
    sets: dict[str, list[Path]] = {"skimage": skimage_jpegs(work / "skimage")}
    if args.large:
        ensure_photos(work / "photos-12mp", args.large, (4000, 3000), args.seed)
        sets["camera 12 MP"] = jpeg_files(work / "photos-12mp")
    if args.medium:
        ensure_photos(work / "photos-1mp", args.medium, (1152, 864), args.seed)
        sets["camera 1 MP"] = jpeg_files(work / "photos-1mp")
    sets["fine patterns 12 MP"] = fine_patterns(work / "fine")
    shape_paths, shape_scenes = (
        shapes_jpegs(work / "shapes", args.shapes, args.seed) if args.shapes else ([], [])
    )
    if shape_paths:
        sets["shapes"] = shape_paths

    models: dict[str, Any] = {"shapes": load_encoder("shapes")}
    if not args.skip_vit:
        if not any(
            args.hf_cache.glob("models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/*/*.safetensors")
        ):
            from _common import add_random_vit_b_32

            log(f"writing random ViT-B-32 weights to {args.hf_cache} ...")
            add_random_vit_b_32(args.hf_cache)
        models["ViT-B-32 (random)"] = load_encoder("ViT-B-32", "laion2b_s34b_b79k")
    query_attrs = {**color_shape_queries(), **position_queries()}
    texts = list(query_attrs)
    relevant = [
        np.array([scene.matches(**attrs) for scene in shape_scenes]) for attrs in query_attrs.values()
    ]
    results = []
    for model_name, encoder in models.items():
        for set_name, files in sets.items():
            started = time.monotonic()
            decoded = decode_all(files, encoder.pixel_transform, encoder.image_size)
            use_texts = texts if model_name == "shapes" and set_name == "shapes" else None
            rows = compare(encoder, decoded, text_queries=use_texts, relevant=relevant if use_texts else None)
            record = {
                "set": set_name,
                "images": len(files),
                "model": model_name,
                "input": encoder.image_size[0],
                "queries": "text (colour+shape, +position)" if use_texts else "image-to-image",
                "rows": rows,
                "seconds": round(time.monotonic() - started, 1),
                "uptime": os.popen("uptime").read().strip(),
            }
            results.append(record)
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                print_table(record)
    if not args.json:
        print_verdict(results)


def print_table(record: dict[str, Any]) -> None:
    print(
        f"\n{record['set']} ({record['images']} JPEGs), {record['model']} (input {record['input']} px), "
        f"top-10 by {record['queries']}  [{record['uptime']}]"
    )
    print(
        "| decode | side (median) | cosine mean | cosine min | same top-10 | top-10 overlap "
        "| same hits in top 10 | P@10 | decode ms | saved vs 2x |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, row in record["rows"].items():
        same = f"{row['top10_same']}/{row['top10_queries']}" if "top10_same" in row else "–"
        overlap = f"{row['top10_overlap']:.3f}" if "top10_overlap" in row else "–"
        hits = f"{row['same_hits']}/{row['top10_queries']}" if "same_hits" in row else "–"
        p10 = f"{row['p10']:.3f}" if "p10" in row else "–"
        print(
            f"| {key} | {row['decoded_side_median']} | {row['cosine_mean']:.5f} | {row['cosine_min']:.5f} | "
            f"{same} | {overlap} | {hits} | {p10} | {row['decode_ms']:.1f} | {row['saved_vs_2x_ms']:+.1f} |"
        )


def print_verdict(results: list[dict[str, Any]]) -> None:
    """The issue's rule: the fastest scale with cosine >= 0.995 everywhere and the same top-10 on the
    shapes set (shapes model, text queries)."""
    print("\nverdict (cosine min >= 0.995 on every set and model, same top-10 on the shapes set):")
    for scale in SCALES[1:]:
        key = f"{scale:g}x"
        worst = min(r["rows"][key]["cosine_min"] for r in results)
        worst_photo = min(r["rows"][key]["cosine_min"] for r in results if not r["set"].startswith("fine"))
        shapes = [r for r in results if r["set"] == "shapes" and r["model"] == "shapes"]
        same = [f"{r['rows'][key].get('top10_same')}/{r['rows'][key].get('top10_queries')}" for r in shapes]
        today = [f"{r['rows']['2x'].get('top10_same')}" for r in shapes]
        hits = [f"{r['rows'][key].get('same_hits')}/{r['rows'][key].get('top10_queries')}" for r in shapes]
        print(
            f"  {key}: worst cosine {worst:.4f} (photos and shapes: {worst_photo:.4f}); shapes set, queries "
            f"with the same top-10 as full decoding: {', '.join(same)} (2x: {', '.join(today)}), with "
            f"as many right answers in it: {', '.join(hits)}"
        )


if __name__ == "__main__":
    main()
