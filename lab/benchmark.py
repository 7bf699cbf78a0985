"""benchmark.py: time and memory of the real-size path, on a Stable Diffusion v1.5-shaped pipeline.

What it measures, each with its peak GPU memory (on cuda):
  plain         one step of the attacker's plain UNet fine-tuning (diffusion loss, Adam): the unit of cost
  nft_deepcopy  one outer step of the NFT min-max loop (nft_train.train_unet), the attacker adapting a copy
  nft_inplace   the same with --memory.simulated_copy=inplace (weights and gradients set aside in CPU memory)
  nft_inplace_gc  the same plus --gradient_checkpointing
  moderator     one step of the decoder moderator at full resolution (moderator.train_decoder_moderator;
                its mean over the steps: the first is not set apart)
  moderator_gc  the same with --gradient_checkpointing
The NFT steps run the real loop, not a copy of it. The weights are random (toy_sd.random_sd15) and the images
are noise: only the seconds and the bytes mean anything. Meant for one GPU; on a CPU it runs (slowly, and the
tests use it on a tiny pipeline) but reports no memory.

    python -m lab.benchmark                   # builds runs/sd15_random (4.3 GB) when missing
    python -m lab.benchmark --model=<SD v1.x folder> --batch=1 --cases=plain,nft_inplace_gc

Writes runs/<name>/benchmark.json (every step's seconds, the run record) and benchmark.md (the table).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import data
import losses
import nft_train
import perceptual
from config import (ConfigError, RunConfig, atomic, build, cli, option, pick_device, pick_dtype, run_record,
                    seed_everything, wait_for, write_json)
from moderator import ModeratorJob, train_decoder_moderator
from pipeline import build_scheduler, image_size, load_pipeline
from pocket.toy_sd import random_sd15

CASES = ("plain", "nft_deepcopy", "nft_inplace", "nft_inplace_gc", "moderator", "moderator_gc")
WORDS = ["a", "red", "blue", "circle", "square", "on", "grass", "sand"]  # captions from the pocket vocabulary


@dataclasses.dataclass
class BenchConfig(RunConfig):
    model: str = option("runs/sd15_random", "pipeline folder; the default is built (random SD v1.5 shape) if missing")
    name: str = option("benchmark", "outputs go to runs/<name>/")
    cases: str = option(",".join(CASES), f"comma-separated, from: {', '.join(CASES)}")
    steps: int = option(4, "timed steps per case; the first is reported apart (warm-up) when there are more")
    batch: int = option(4, "batch of every term (the UNet's and the moderator's)")
    inner_steps: int = option(3, "K of the NFT loop")
    images: int = option(16, "noise images per folder (defender's unsafe and benign)")

    def __post_init__(self):
        unknown = [c for c in self.cases.split(",") if c not in CASES]
        if unknown:
            raise ConfigError(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
        if isinstance(self.steps, int) and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")


def noise_folder(folder: Path, n: int, size: int, seed: int) -> Path:
    """An image folder (metadata.jsonl + PNGs) of n noise images with pocket-vocabulary captions."""
    from PIL import Image

    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        caption = " ".join(rng.choice(WORDS, size=5))
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def summary(seconds: list[float], device) -> dict:
    """Median seconds per step (the first step apart when there are several), peak GPU memory."""
    steady = seconds[1:] or seconds
    out = {"seconds_per_step": round(statistics.median(steady), 4), "first_step_seconds": round(seconds[0], 4),
           "step_seconds": [round(s, 4) for s in seconds]}
    if device.type == "cuda":
        out["peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return out


def clean(pipe, device) -> None:
    """Forget gradients and cached blocks so the next case's peak memory is its own."""
    for part in (pipe.unet, pipe.vae):
        for p in part.parameters():
            p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def plain_steps(pipe, z, c, cfg: BenchConfig, device) -> list[float]:
    """The attacker's plain fine-tuning of the UNet, as attack.py does it (Adam, lr 1e-4)."""
    unet, sched = pipe.unet.train().requires_grad_(True), build_scheduler("ddpm")
    opt, gen, seconds = torch.optim.Adam(unet.parameters(), lr=1e-4), torch.Generator().manual_seed(cfg.seed), []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        i = torch.randint(len(z), (cfg.batch,), generator=gen)
        loss = losses.diffusion_loss(*losses.denoise(unet, sched, z[i], c[i], gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        wait_for(device)
        seconds.append(time.perf_counter() - t0)
    unet.eval().requires_grad_(False)
    return seconds


def moderator_steps(pipe, folder_u: Path, folder_b: Path, cfg: BenchConfig, device, checkpointing: bool) -> list[float]:
    """The decoder moderator's mean seconds per step over cfg.steps steps (collecting features not counted)."""
    job = build(ModeratorJob, {"model": cfg.model, "seed": cfg.seed, "moderator.steps": cfg.steps,
                               "moderator.batch": cfg.batch, "moderator.n_generated": 0, "data.unsafe": str(folder_u),
                               "data.benign": str(folder_b), "memory.gradient_checkpointing": checkpointing})
    seconds = [train_decoder_moderator(pipe, job, device, perceptual.build("vae", pipe, device))["seconds_per_step"]]
    pipe.vae.disable_gradient_checkpointing()
    return seconds


def main(cfg: BenchConfig):
    """Time one plain fine-tuning step, one NFT outer step (three memory settings) and one moderator step."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.model == "runs/sd15_random" and not (Path(cfg.model) / "model_index.json").is_file():
        print(f"building {cfg.model}: a random pipeline of SD v1.5's shape (4.3 GB)")
        random_sd15(cfg.model, cfg.seed)
    out = Path("runs") / cfg.name
    pipe = load_pipeline(cfg.model, device)
    base = load_pipeline(cfg.model, device, dtype=pick_dtype("auto", device))  # frozen, as nft_train loads it
    size = image_size(pipe)
    folder_u = noise_folder(out / "unsafe", cfg.images, size, cfg.seed)
    folder_b = noise_folder(out / "benign", cfg.images, size, cfg.seed + 1)
    results = {}
    for case in cfg.cases.split(","):
        clean(pipe, device)
        print(f"== {case}")
        if case == "plain":
            z, c = data.defender_data(base, "unsafe", cfg.images, cfg.seed, device, str(folder_u))
            seconds = plain_steps(pipe, z, c, cfg, device)
        elif case.startswith("moderator"):
            seconds = moderator_steps(pipe, folder_u, folder_b, cfg, device, checkpointing=case == "moderator_gc")
        else:
            ncfg = build(nft_train.NFTConfig, {
                "model": cfg.model, "data.unsafe": str(folder_u), "data.benign": str(folder_b), "steps": cfg.steps,
                "unlearn_steps": 0, "batch": cfg.batch, "inner_steps": cfg.inner_steps, "seed": cfg.seed, "moderator.kind": "off",
                "evaluate": False, "memory.simulated_copy": "deepcopy" if case == "nft_deepcopy" else "inplace",
                "memory.gradient_checkpointing": case == "nft_inplace_gc"})
            seconds = nft_train.train_unet(pipe, base, ncfg, device, ckpt=None)  # (switches checkpointing on)
            pipe.unet.disable_gradient_checkpointing()
        results[case] = summary(seconds, device)
        print(json.dumps(results[case]))
    report = {"cases": results, "batch": cfg.batch, "inner_steps": cfg.inner_steps, "image_size": size,
              "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()), "run": run_record(cfg)}
    write_json(out / "benchmark.json", report)
    with atomic(out / "benchmark.md") as tmp:
        tmp.write_text(table(report) + "\n")
    print(table(report))
    print(f"wrote {out}/benchmark.json and benchmark.md")
    return report


def table(report: dict) -> str:
    """Markdown: seconds per step, times a plain fine-tuning step, peak memory."""
    cases, hw = report["cases"], report["run"]["hardware"]
    plain = cases.get("plain", {}).get("seconds_per_step")
    rows = [f"{hw['cuda'] or 'CPU'}; UNet {report['unet_parameters'] / 1e6:.1f}M parameters, "
            f"{report['image_size']}x{report['image_size']} images, batch {report['batch']}, "
            f"K={report['inner_steps']}", "",
            "| case | seconds per step | first step | x plain step | peak GPU memory (GB) |", "|---|---|---|---|---|"]
    for case, r in cases.items():
        ratio = f"{r['seconds_per_step'] / plain:.1f}" if plain else "-"
        rows.append(f"| {case} | {r['seconds_per_step']:.3f} | {r['first_step_seconds']:.3f} | {ratio} | "
                    f"{r.get('peak_gb', '-')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    cli(BenchConfig, main)
