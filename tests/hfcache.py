"""Build Hugging Face hub caches on disk, laid out exactly as huggingface_hub writes them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

TINY_REPO = "clipsearch-test/tiny-clip"
TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}


def add_repo_file(cache: Path, repo: str, filename: str, data: bytes, commit: str = "0" * 40) -> Path:
    """Store ``data`` as ``filename`` of ``repo`` at ``commit``, and point refs/main at it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    digest = hashlib.sha256(data).hexdigest()
    blob = folder / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return link


def random_weights(model_cfg: dict[str, object], seed: int = 0) -> bytes:
    """Safetensors bytes of a randomly initialised open_clip CLIP with this config."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save

    torch.manual_seed(seed)
    model = CLIP(**model_cfg)  # type: ignore[arg-type]
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def add_tiny_model(cache: Path, repo: str = TINY_REPO, seed: int = 0) -> None:
    """A tiny random open_clip model reachable as ``hf-hub:<repo>``."""
    add_repo_file(cache, repo, "open_clip_config.json", json.dumps(TINY_CONFIG).encode())
    add_repo_file(cache, repo, "open_clip_model.safetensors", random_weights(TINY_CONFIG["model_cfg"], seed))


def add_vit_b_32(cache: Path) -> None:
    """Random weights of the real ViT-B-32 architecture under laion2b_s34b_b79k's repo and file name."""
    import open_clip

    cfg = open_clip.get_model_config("ViT-B-32")
    repo_file = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"]
    repo, _ = os.path.split(repo_file)  # "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/" -> the repo
    add_repo_file(cache, repo, "open_clip_model.safetensors", random_weights(cfg))
