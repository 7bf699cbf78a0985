"""attack.py: the white-box adversary. It holds the weights and fine-tunes them on its own unsafe data.

The attacker's unsafe image-caption pairs come from the `attacker` seed stream (disjoint from the defender's)
and use every phrasing. Attacks:
  finetune_unet     full UNet fine-tuning with the plain diffusion loss (SD's own training objective)
  finetune_decoder  the VAE decoder fine-tuned to reconstruct unsafe images (undoes a decoder moderator)
The unsafe rate is measured along the way, giving a resilience curve [[steps, unsafe_rate], ...].

Run: `python attack.py --model=runs/patronus --attack=finetune_unet` (writes attacks.json into the model folder).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import losses
from config import cli, option, pick_device, run_record, seed_everything, write_json

ATTACKS = ("finetune_unet", "finetune_decoder")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


@dataclasses.dataclass
class AttackConfig:
    model: str = option("runs/patronus", "pipeline folder to attack")
    attack: str = option("finetune_unet", "which attack", ATTACKS)
    optimizer: str = option("adam", "the attacker's optimizer", OPTIMIZERS)
    lr: float = option(1e-4, "the attacker's learning rate")
    steps: int = option(300, "fine-tuning steps")
    batch: int = option(16, "batch size")
    checkpoints: str = option("0,50,100,200,300", "steps at which the unsafe rate is measured")
    n_images: int = option(2048, "attacker's unsafe training images")
    eval_repeats: int = option(1, "images per unsafe evaluation prompt at each checkpoint")
    sample_steps: int = option(20, "DDIM steps when sampling for evaluation")
    evaluator: str = option("runs/evaluator", "the pocket evaluator's folder (trained if missing)")
    seed: int = option(0, "seeds the attacker's data and training")
    device: str = option("auto", "auto picks cuda, then mps, then cpu", ("auto", "cpu", "cuda", "mps"))


def attacker_data(pipe, n: int, seed: int, device):
    """The attacker's unsafe set: VAE latents (N, 4, 8, 8) and caption features (N, T, D), all phrasings."""
    from toy_sd import encode_images, encode_text, to_tensor

    scenes = data.sample_scenes("attacker", n, list(data.UNSAFE), "all", seed=seed)
    images = to_tensor(scenes.images).to(device)
    with torch.no_grad():
        return encode_images(pipe.vae, images), encode_text(pipe.text_encoder, pipe.tokenizer, scenes.captions, device), images


def make_optimizer(name: str, params, lr: float):
    from moderator import attacker_optimizer

    return attacker_optimizer(name, params, lr)


def unsafe_rate(pipe, evaluator, repeats: int, seed: int = 10_000, steps: int = 20) -> dict:
    """A quick unsafe-rate measurement on the unsafe evaluation prompts (both phrasings)."""
    from evaluate import EvalConfig, prompt_set, score
    from toy_sd import generate

    cfg = EvalConfig(unsafe_repeats=repeats, seed=seed, steps=steps)
    items = prompt_set(cfg, kinds=("unsafe",))
    images = generate(pipe, [it["prompt"] for it in items], [it["seed"] for it in items], cfg.steps, cfg.guidance)
    rep = score(items, images, evaluator, cfg.black_threshold)
    return rep["unsafe_rate"]


def run_attack(pipe, evaluator, cfg: AttackConfig, device) -> dict:
    """Fine-tune a copy of pipe's UNet or decoder on the attacker's data; returns the resilience curve."""
    pipe = copy.copy(pipe)  # a shallow copy: the attacked part is replaced by a deep copy below
    z, c, x = attacker_data(pipe, cfg.n_images, cfg.seed, device)
    if cfg.attack == "finetune_unet":
        pipe.unet = copy.deepcopy(pipe.unet).train().requires_grad_(True)
        params = list(pipe.unet.parameters())
    else:
        pipe.vae = copy.deepcopy(pipe.vae).requires_grad_(False)
        from moderator import decoder_params

        params = decoder_params(pipe.vae)
        for p in params:
            p.requires_grad_(True)
    from toy_sd import build_scheduler

    sched = build_scheduler("ddpm")
    opt = make_optimizer(cfg.optimizer, params, cfg.lr)
    marks = sorted(int(s) for s in cfg.checkpoints.split(","))
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, by_phrasing = [], {p: [] for p in data.PHRASINGS}

    def measure(step):  # one point of the resilience curve, overall and per phrasing split
        ur = unsafe_rate(pipe, evaluator, cfg.eval_repeats, steps=cfg.sample_steps)
        curve.append([step, ur["all"]])
        for p in data.PHRASINGS:
            by_phrasing[p].append([step, ur[p]])

    if 0 in marks:
        measure(0)
    bar = tqdm(range(1, cfg.steps + 1), desc=f"attack {cfg.attack} {cfg.optimizer} lr={cfg.lr:g}")
    train_seconds = 0.0  # time spent in fine-tuning steps only (not in measuring the curve)
    for step in bar:
        t0 = time.perf_counter()
        idx = torch.randint(len(z), (cfg.batch,), generator=gen)
        if cfg.attack == "finetune_unet":
            loss = losses.diffusion_loss(pipe.unet, sched, z[idx], c[idx], generator=gen)
        else:
            loss = losses.reconstruction_loss(pipe.vae, x[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_seconds += time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step in marks:
            pipe.unet.eval()
            measure(step)
            bar.set_postfix(loss=f"{loss.item():.4f}", ur=f"{curve[-1][1]:.2f}")
            pipe.unet.train()
    pipe.unet.eval().requires_grad_(False)
    pipe.vae.eval().requires_grad_(False)
    return {"attack": cfg.attack, "optimizer": cfg.optimizer, "lr": cfg.lr, "batch": cfg.batch, "seed": cfg.seed,
            "curve": curve, "curve_by_phrasing": by_phrasing,
            "seconds_per_step": round(train_seconds / max(cfg.steps, 1), 4), "attacked_pipe": pipe}


def main(cfg: AttackConfig):
    """Attack one pipeline and append the result to attacks.json in its folder."""
    from evaluate import EvalConfig, ensure_evaluator, evaluate_pipeline
    from toy_sd import load_pipeline

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    evaluator = ensure_evaluator(cfg.evaluator, device=device)
    pipe = load_pipeline(cfg.model, device)
    t0 = time.time()
    res = run_attack(pipe, evaluator, cfg, device)
    attacked = res.pop("attacked_pipe")
    rep, _, _ = evaluate_pipeline(attacked, evaluator, EvalConfig(unsafe_repeats=1, benign_repeats=1,
                                                                  steps=cfg.sample_steps))
    res["benign_accuracy_after"] = rep["benign_accuracy"]
    res["seconds"] = round(time.time() - t0, 1)
    res["run"] = run_record(cfg)
    path = Path(cfg.model) / "attacks.json"
    import json

    old = json.loads(path.read_text()) if path.is_file() else []
    write_json(path, old + [res])
    print(f"{cfg.attack}: curve {res['curve']}, benign accuracy after {res['benign_accuracy_after']:.3f}")
    print(f"appended to {path}")


if __name__ == "__main__":
    cli(AttackConfig, main)
