"""Where a model runs: ``cpu``, ``cuda``, or ``auto`` (CUDA when torch sees a GPU, else the CPU).

``resolve_device`` answers without importing torch where no NVIDIA device is present (most
machines): torch's import costs seconds that a sync spends decoding instead.
"""

from __future__ import annotations

import glob
import os
from typing import Literal, cast, get_args

from clipsearch.errors import BadValueError, DeviceUnavailableError

#: A device as asked for.
Device = Literal["auto", "cpu", "cuda"]


def parse_device(value: str) -> Device:
    """Validate a device given as text (``auto``, ``cpu`` or ``cuda``; ``cuda:N`` is ``cuda``)."""
    base = value.split(":", 1)[0] if value.startswith("cuda:") else value
    if base not in get_args(Device):
        raise BadValueError("device", value, "choose auto, cpu or cuda")
    return cast(Device, base)


def nvidia_present() -> bool:
    """Whether the kernel shows an NVIDIA GPU (cheap: no torch, no CUDA initialisation)."""
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg"):  # dxg: a GPU under WSL2
        return True
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def cuda_problem() -> str | None:
    """Why torch cannot run on CUDA here, or None when it can."""
    if not nvidia_present():
        return "no NVIDIA GPU is present on this machine"
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "torch sees no usable CUDA GPU (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
    return None


def resolve_device(device: str) -> str:
    """The torch device to run on: ``cpu`` or ``cuda``.

    Raises:
        BadValueError: not auto, cpu or cuda.
        DeviceUnavailableError: ``cuda`` asked for where torch cannot use it.
    """
    asked = parse_device(device)
    if asked == "cpu":
        return "cpu"
    problem = cuda_problem()
    if problem is None:
        return "cuda"
    if asked == "auto":
        return "cpu"
    raise DeviceUnavailableError("CUDA", problem)


def describe_device(device: str) -> str:
    """The device in words, e.g. ``CUDA (NVIDIA H100 80GB HBM3)`` or ``the CPU``."""
    if device.startswith("cuda"):
        import torch

        return f"CUDA ({torch.cuda.get_device_name(torch.device(device))})"
    return "the CPU"
