"""An int8 image tower (ONNX Runtime, dynamic quantisation: u8 activations x s8 weights, the VNNI
kernels) against torch fp32 and bf16 (issue #20): fidelity and images/s, in one run.

    python benchmarks/int8_tower.py                    # about 3 min on 2 busy cores
    python benchmarks/int8_tower.py --rounds 2 --shapes 120

For each model (ViT-B-32 with random weights from an offline Hugging Face cache, and the trained
``shapes`` model) the image tower is exported to ONNX (fp32) and quantised with
``onnxruntime.quantization.quantize_dynamic`` (per-channel s8 weights, MatMul and Gemm; the
shapes CNN's convolutions too). Printed:

- cosine of each embedding to torch fp32's, on the generated camera photos and the shapes set;
- top-10 on the shapes set (the shapes model's text queries): queries whose top 10 is the same set as
  fp32's, and whose top 10 holds as many right answers;
- images/s of one batch (``--batch``) through torch fp32, torch bf16, ORT fp32 and ORT int8, on
  every core, rounds interleaved (median of ``--rounds``), with ``uptime`` beside.

Random weights say little about quantisation error (trained weights and activations have outliers
that random ones lack): the trained shapes model is the fidelity check that counts here, and a
trained ViT-B-32 should be measured before int8 becomes anyone's default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import ensure_photos, jpeg_files


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def uptime() -> str:
    return os.popen("uptime").read().strip()


def export_tower(encoder: Any, path: Path) -> None:
    """The fp32 image tower, (n, 3, H, W) -> (n, d) unnormalised, as ONNX with a dynamic batch."""
    import contextlib
    import warnings

    import torch

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = encoder.model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(pixels)

    example = torch.zeros(2, 3, *encoder.image_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Tower().eval(),
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["embeddings"],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}},
            dynamo=True,
            external_data=False,
        )


def quantise(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = source.with_name(source.stem + "-pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing is an optimisation: quantise the raw graph then
        log(f"quant_pre_process failed ({exc}); quantising the graph as exported")
        prepared = source
    quantize_dynamic(
        str(prepared),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
    )


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unit(rows: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def run_ort(sess: Any, pixels: npt.NDArray[np.float32], batch: int = 32) -> npt.NDArray[np.float32]:
    out = [sess.run(None, {"pixels": pixels[i : i + batch]})[0] for i in range(0, len(pixels), batch)]
    return unit(np.concatenate(out))


def crops(encoder: Any, files: list[Path]) -> npt.NDArray[np.float32]:
    from clipsearch.encoders.images import open_image

    transform = encoder.pixel_transform
    side = int(1.5 * min(encoder.image_size))
    return transform.normalize(np.stack([transform.resize_crop(open_image(p, min_side=side)) for p in files]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=32, help="generated 1-MP photos for the cosine check")
    parser.add_argument("--shapes", type=int, default=400, help="shapes-world JPEGs for top-10")
    parser.add_argument("--batch", type=int, default=32, help="images per timed batch")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (interleaved)")
    parser.add_argument("--hf-cache", type=Path, default=Path.home() / ".cache" / "clipsearch-bench" / "hf")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_CACHE", str(args.hf_cache))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from decode_scale import shapes_jpegs

    from clipsearch.encoders.loading import load_encoder
    from clipsearch.shapes.evaluate import color_shape_queries, position_queries

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clipsearch-int8-"))
    log(f"work in {work}; {uptime()}")
    ensure_photos(work / "photos-1mp", args.photos, (1152, 864), 0)
    photos = jpeg_files(work / "photos-1mp")
    shape_files, scenes = shapes_jpegs(work / "shapes", args.shapes, 0)
    queries = {**color_shape_queries(), **position_queries()}
    relevant = [np.array([s.matches(**attrs) for s in scenes]) for attrs in queries.values()]

    models = (("shapes", ("shapes", None)), ("ViT-B-32 (random)", ("ViT-B-32", "laion2b_s34b_b79k")))
    for name, spec in models:
        fp32 = load_encoder(*spec, precision="fp32")
        bf16 = load_encoder(*spec, precision="bf16")
        fp32_path, int8_path = work / f"{spec[0]}-fp32.onnx", work / f"{spec[0]}-int8.onnx"
        started = time.monotonic()
        export_tower(fp32, fp32_path)
        quantise(fp32_path, int8_path)
        log(f"{name}: exported and quantised in {time.monotonic() - started:.0f} s")
        ort32, ort8 = session(fp32_path, threads), session(int8_path, threads)
        print(f"\n## {name} (input {fp32.image_size[0]} px)  [{uptime()}]")
        print("| set | path | cosine to torch fp32: mean | min | same top-10 | as many right in top 10 |")
        print("|---|---|---:|---:|---:|---:|")
        for set_name, files in (("camera 1 MP", photos), ("shapes", shape_files)):
            pixels = crops(fp32, files)
            reference = fp32.encode_pixels(pixels)
            paths = {
                "torch bf16": bf16.encode_pixels(pixels),
                "ORT fp32": run_ort(ort32, pixels),
                "ORT int8": run_ort(ort8, pixels),
            }
            for path_name, vectors in paths.items():
                cosine = np.sum(vectors * reference, axis=1)
                same = right = "–"
                if set_name == "shapes" and name == "shapes":
                    text = fp32.encode_texts(list(queries))
                    ref_top = np.argsort(-(text @ reference.T), axis=1, kind="stable")[:, :10]
                    top = np.argsort(-(text @ vectors.T), axis=1, kind="stable")[:, :10]
                    same_n = sum(set(a) == set(b) for a, b in zip(top, ref_top, strict=True))
                    right_n = sum(
                        int(rel[a].sum()) == int(rel[b].sum())
                        for rel, a, b in zip(relevant, top, ref_top, strict=True)
                    )
                    same, right = f"{same_n}/{len(top)}", f"{right_n}/{len(top)}"
                elif set_name == "shapes":  # image queries: each fp32 vector against the others
                    ref_top = np.argsort(-(reference @ reference.T), axis=1, kind="stable")[:, 1:11]
                    top = np.argsort(-(reference @ vectors.T), axis=1, kind="stable")[:, 1:11]
                    same = f"{sum(set(a) == set(b) for a, b in zip(top, ref_top, strict=True))}/{len(top)}"
                cosines = f"{cosine.mean():.5f} | {cosine.min():.5f}"
                print(f"| {set_name} | {path_name} | {cosines} | {same} | {right} |")
        batch = crops(fp32, (photos * ((args.batch // len(photos)) + 1))[: args.batch])
        runs: dict[str, Any] = {
            "torch fp32": partial(fp32.encode_pixels, batch),
            "torch bf16": partial(bf16.encode_pixels, batch),
            "ORT fp32": partial(run_ort, ort32, batch, args.batch),
            "ORT int8": partial(run_ort, ort8, batch, args.batch),
        }
        for run in runs.values():
            run()  # warm
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(args.rounds):
            for key, run in runs.items():
                started = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - started)
        print(f"\nimages/s, batch {args.batch}, {threads} threads, median of {args.rounds}  [{uptime()}]")
        print("| path | img/s | rounds (s) |")
        print("|---|---:|---|")
        for key, seconds in times.items():
            print(
                f"| {key} | {args.batch / statistics.median(seconds):.1f} | "
                f"{', '.join(f'{s:.2f}' for s in seconds)} |"
            )


if __name__ == "__main__":
    main()
