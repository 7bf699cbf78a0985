"""pinned.py: the pinned pocket assets, so that every machine starts from the same weights.

assets/ ships the pocket base pipeline (base/), the never-learned UNet (never_learned/: the base's recipe with
every unsafe image filtered out of the UNet's data), the tiny CLIP (clip/) and the evaluator (evaluator/), with
assets/manifest.json: the sha256 of every file, and the command, seed, packages and CPU that built them.
`restore_assets` copies them into runs/ after checking every file against the manifest; pipeline.load_pipeline
calls `ensure_base` for runs/base, and the evaluator and the perceptual CLIP restore theirs the same way.
`python -m pocket.toy_sd --out=DIR` rebuilds a set from nothing; float rounding differs between CPUs, so a
rebuild on another machine gives another base.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from config import atomic, write_json

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PARTS = ("base", "never_learned", "clip", "evaluator")  # the folders of an asset set, each copied to runs/<part>
REBUILD = ("rebuild everything from nothing with `python -m pocket.toy_sd --out=assets` (about 22 minutes on 2 "
           "cores, assets/manifest.json records each part's seconds; on another CPU it gives another base)")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cpu_name() -> str:
    """The CPU's model name and its widest vector unit (float rounding differs between AVX2 and AVX-512)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({vector}, {os.cpu_count()} cores)"


def write_manifest(folder: Path, record: dict, command: str) -> None:
    """folder/manifest.json: sha256 of every file of the asset set, and how it was built (record: the run
    record of the build, with its seconds and VAE check; command: the command line that built it)."""
    files = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    write_json(folder / "manifest.json", {"files": files, "command": command,
        "seed": record["config"]["seed"], "packages": record.get("versions"), "cpu": cpu_name(),
        "threads": torch.get_num_threads(), "seconds": record["seconds"], "vae": record["vae"]})


def verify_assets(folder: Path = ASSETS) -> dict:
    """Check every file of an asset set against its manifest; returns the manifest.

    Raises FileNotFoundError / ValueError naming the missing, corrupt, edited or unlisted file, and how to
    restore it."""
    manifest_path = Path(folder) / "manifest.json"
    restore = f"restore it with `git checkout -- {folder}` or {REBUILD}"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: {restore}")
    manifest = json.loads(manifest_path.read_text())
    for rel, digest in manifest["files"].items():
        path = Path(folder) / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the pinned assets: {restore}")
        if _sha256(path) != digest:
            raise ValueError(f"{path} does not match {manifest_path} (sha256 differs: corrupt or edited): {restore}")
    listed = set(manifest["files"])
    extra = [str(p.relative_to(folder)) for p in Path(folder).rglob("*")
             if p.is_file() and p.name != "manifest.json" and str(p.relative_to(folder)) not in listed]
    if extra:
        raise ValueError(f"{Path(folder) / extra[0]} is not in {manifest_path}: remove it, {restore}")
    return manifest


def restore_assets(runs: str = "runs", folder: Path = ASSETS) -> None:
    """Copy the pinned asset set into runs/ (each part that is missing there), after checking it. Two scripts
    started together each copy; the first to finish moves its copy into place, the other drops its own."""
    missing = [p for p in PARTS if not (Path(runs) / p).exists()]
    if not missing:
        return
    verify_assets(folder)
    for part in missing:
        with atomic(Path(runs) / part, replace=False) as tmp:
            shutil.copytree(Path(folder) / part, tmp)
    print(f"copied the pinned {', '.join(missing)} from {folder} into {runs}/ (checked against its manifest)")


def ensure_base(out: str = "runs/base") -> None:
    """The pocket base at its default path: the pinned one (assets/), copied into runs/ on first use; a note
    when the folder there holds another build."""
    runs = str(Path(out).parent)
    restore_assets(runs)
    base_manifest = json.loads((ASSETS / "manifest.json").read_text()) if (ASSETS / "manifest.json").is_file() else {}
    weights = Path(out) / "unet" / "diffusion_pytorch_model.safetensors"
    pinned = base_manifest.get("files", {}).get("base/unet/diffusion_pytorch_model.safetensors")
    if pinned and weights.is_file() and _sha256(weights) != pinned:
        print(f"note: {out} is not the pinned base of {ASSETS} (another build); remove {runs}/base, "
              f"{runs}/never_learned, {runs}/clip and {runs}/evaluator to use the pinned ones")


def load_clip(clip_dir: str = "runs/clip"):
    """The frozen tiny CLIP (both towers), for the moderator's perceptual loss; the pinned one at runs/clip."""
    from transformers import CLIPModel

    if Path(clip_dir) == Path("runs/clip"):
        restore_assets("runs")
    if not Path(clip_dir, "config.json").is_file():
        raise FileNotFoundError(f"{clip_dir} has no CLIP (config.json): remove the folder, and any script copies the "
                                f"pinned one from assets/ on its next run; or {REBUILD}")
    return CLIPModel.from_pretrained(clip_dir).eval().requires_grad_(False)
