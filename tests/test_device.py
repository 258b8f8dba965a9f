"""--device auto|cpu|cuda: auto runs on CUDA where torch sees a GPU, else on the CPU (and says so); cuda
without a GPU is a usage error that names the way out. These machines have no GPU: the fallback and
the error are tested here; the GPU path's arithmetic (normalising uint8 crops on the device) is
checked on the CPU against the numpy path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.encoders.device import cuda_problem, parse_device, resolve_device
from clipsearch.encoders.loading import load_encoder
from clipsearch.encoders.spec import resolve_precision
from clipsearch.errors import BadValueError, DeviceUnavailableError
from clipsearch.ingest.sync import SyncOptions, gpu_workers

no_gpu = pytest.mark.skipif(cuda_problem() is None, reason="this machine has a GPU torch can use")


def pictures(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        Image.new("RGB", (120, 90), colour).save(folder / f"p{i}.jpg")
    return folder


def test_device_values() -> None:
    assert [parse_device(v) for v in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda"]
    with pytest.raises(BadValueError, match="choose auto, cpu or cuda"):
        parse_device("gpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(BadValueError, match="fp16 runs on a GPU only"):
        resolve_precision("fp16", "cpu")


@no_gpu
def test_auto_falls_back_to_the_cpu_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(DeviceUnavailableError) as caught:
        resolve_device("cuda")
    assert caught.value.device == "CUDA" and caught.value.reason == cuda_problem()
    assert "--" not in str(caught.value)  # the library names no flag


@no_gpu
def test_python_api_loads_on_the_cpu_for_auto_and_refuses_cuda(tmp_path: Path, tiny_model: str) -> None:
    assert load_encoder(tiny_model, device="auto").device == "cpu"
    with pytest.raises(DeviceUnavailableError):
        load_encoder(tiny_model, device="cuda")
    from clipsearch.encoders.spec import ModelSpec

    with pytest.raises(DeviceUnavailableError):
        Index.open_for_write(tmp_path / "idx", spec=ModelSpec.parse(tiny_model, None), device="cuda")


@no_gpu
def test_cli_says_where_it_encodes_and_refuses_cuda(tmp_path: Path, tiny_model: str) -> None:
    runner = CliRunner()
    folder, index = pictures(tmp_path / "pics"), ["--index", str(tmp_path / "idx")]
    refused = runner.invoke(app, ["index", str(folder), *index, "--model", tiny_model, "--device", "cuda"])
    assert refused.exit_code == 2, refused.output
    assert "--device cuda:" in refused.stderr and "--device cpu" in refused.stderr
    assert "Traceback" not in refused.output and not (tmp_path / "idx").exists()  # before any work
    made = runner.invoke(app, ["index", str(folder), *index, "--model", tiny_model, "--device", "auto"])
    assert made.exit_code == 0, made.output
    assert "Encoding on the CPU (torch sees no GPU)" in made.stderr
    search = runner.invoke(app, ["search", "red", *index, "--device", "cuda"])
    assert search.exit_code == 2 and "--device cuda:" in search.stderr, search.output
    found = runner.invoke(app, ["search", "red", *index, "--device", "cpu", "--paths"])
    assert found.exit_code == 0 and len(found.stdout.split()) == 3, found.output
    bad = runner.invoke(app, ["index", *index, "--device", "tpu"])
    assert bad.exit_code == 2 and "--device 'tpu': choose auto, cpu or cuda" in bad.stderr


def test_uint8_crops_normalised_by_torch_match_the_numpy_path(tiny_encoder) -> None:
    """What a GPU sync does (crops normalised on the device), run here on the CPU."""
    transform = tiny_encoder.pixel_transform
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(5, *tiny_encoder.image_size, 3), dtype=np.uint8)
    expected = tiny_encoder.encode_pixels(transform.normalize(crops))
    np.testing.assert_allclose(tiny_encoder.encode_uint8(crops), expected, atol=1e-5)


def test_sync_options_for_a_gpu_feed_it_from_every_core() -> None:
    cpu = SyncOptions.for_device("cpu")
    assert (cpu.batch_size, cpu.encode_threads) == (32, None)
    gpu = SyncOptions.for_device("cuda")
    assert (gpu.workers, gpu.batch_size, gpu.encode_threads) == (gpu_workers(), 128, 1)
    assert SyncOptions.for_device("cuda", workers=3, batch_size=64).workers == 3
