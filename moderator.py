"""moderator.py: Patronus' internal moderator (decoder, and text encoder) with simulated-fine-tuning hardening.

Decoder moderator. Only the VAE decoder (and post_quant_conv) is fine-tuned; the encoder stays frozen.
Unsafe features z_u (the VAE latents of the defender's unsafe images, and the base model's final latents for
`defense` unsafe prompts) must decode to the all-black image, while benign features z_b decode as before:

    L = L_zero(D(z_u)) + w_cal * L_cal(D(z_b), D0(z_b)) + w_rec * L_rec(x_b)              (losses.py)

Hardening (the non-fine-tunable part for the decoder, first-order MAML as in SOPHON): each outer step copies
the decoder and lets a simulated attacker fine-tune the copy for K steps to reconstruct unsafe images, with an
optimizer and learning rate sampled from an attacker-like set. The zero loss at the adapted copy is added to
the outer loss; its gradient (taken at the copy) is applied to the defender's own weights.

Text moderator. The CLIP text encoder is fine-tuned so the features the UNet is conditioned on become zero for
unsafe `defense` prompts (L_fz) and stay unchanged for benign prompts (L_fc).

Both return a modified pipeline that is still a plain StableDiffusionPipeline: no hook, no extra module.
Data: the pocket world's renders by default; for a real model, `--data.unsafe` and `--data.benign` image
folders (data.load_image_folder) read at the pipeline's resolution, their captions used as prompts.
The perceptual network of the zero loss: see perceptual.py.
Run alone: `python moderator.py --moderator.kind=decoder` (writes runs/moderator/).
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import losses
import perceptual as perceptual_nets
from attack import SIMULATED_ATTACKERS, make_optimizer
from config import MemoryConfig, RunConfig, cli, group, option, pick_device, pick_dtype, run_record, seed_everything, \
    wait_for
from data import DataConfig
from perceptual import PERCEPTUALS
from pipeline import (decode, decoder_params, encode_images, encode_text, image_size, load_pipeline, save_pipeline,
                      to_tensor)

MODERATORS = ("decoder", "text", "both", "off")


@dataclasses.dataclass
class ModeratorConfig:
    """The moderator's own options; the job around it (model, seed, data, memory) is ModeratorJob or NFTConfig."""
    kind: str = option("decoder", "which moderator to train", MODERATORS)
    # decoder moderator
    n_images: int = option(1024, "defender's rendered images per kind (unsafe / benign); a folder gives all its own")
    n_generated: int = option(256, "generations per kind and model whose final latents are added")
    n_generic: int = option(1024, "pictures that name no concept (data.generic_images: random shapes) added to the "
                            "benign pictures the decoder keeps (pocket world only; 0: none): they keep what the "
                            "benign data leaves out from the decoder's refusal (RESULTS.md, sections 7.5 and 7.7)")
    generic_filter: bool = option(True, "drop the generic pictures whose latents are nearer the defender's unsafe "
                                  "latents than its benign ones (unfiltered, a few glyphs got through; section 7.5)")
    steps: int = option(600, "steps of the decoder moderator")
    batch: int = option(16, "latents per kind per step (4 for SD at 512 px)")
    lr: float = option(3e-4, "Adam learning rate of the defender")
    w_cal: float = option(10.0, "weight of the calibration loss on benign features")
    w_rec: float = option(1.0, "weight of the reconstruction loss on benign images")
    pixel_weight: float = option(1.0, "weight of the pixel term inside the zero loss")
    perceptual: str = option("auto", "network of the zero loss's perceptual term: auto = vgg19 if --moderator.vgg19 "
                             "is given, the pocket CLIP for the pocket world, else the VAE encoder (perceptual.py)",
                             PERCEPTUALS)
    vgg19: str = option("", "torchvision-format VGG-19 state dict (.pth): relu3_4 features, as the authors' "
                        "tools/image_loss.py")
    gen_batch: int = option(128, "prompts per generation call when collecting features (8 to 16 for SD at 512 px)")
    # hardening (simulated decoder fine-tuning, as in the authors' final.py)
    harden: bool = option(False, "simulate the attacker's decoder fine-tuning during training (off by default: "
                          "it costs benign accuracy and barely slows the attack; RESULTS.md)")
    inner_steps: int = option(3, "K: simulated attacker steps per outer step of hardening")
    w_nft: float = option(1.0, "weight of the zero loss after simulated fine-tuning")
    # text moderator
    text_steps: int = option(300, "steps of the text moderator")
    text_lr: float = option(3e-3, "Adam learning rate of the text moderator")


@dataclasses.dataclass
class ModeratorJob(RunConfig):
    """`python moderator.py`: the moderator alone on a pipeline, its UNet untouched."""
    model: str = option("runs/base", "pipeline folder to moderate")
    name: str = option("moderator", "outputs go to runs/<name>/")
    moderator: ModeratorConfig = group(ModeratorConfig, "the moderator (--moderator.kind, --moderator.steps, ...)")
    data: DataConfig = group(DataConfig, "the defender's data (--data.unsafe, --data.benign, ...)")
    memory: MemoryConfig = group(MemoryConfig, "memory savers for real models (--memory.frozen_dtype, ...)")


def retention_prompts(cfg: DataConfig, n: int, seed: int) -> list[str] | None:
    """n prompts benign retention keeps when they are not the benign data's own captions: a sample of
    --data.retain_prompts (a CSV; all of it, repeated, when it has fewer) or, with --data.keep_holdout_prompts,
    pocket captions of every benign shape, those --data.holdout took the images of included. None otherwise."""
    if cfg.retain_prompts:
        texts = [p.prompt for p in data.load_prompt_csv(cfg.retain_prompts)]
        if len(texts) >= n:
            return random.Random(seed).sample(texts, n)
        return [texts[i % len(texts)] for i in range(n)]
    if cfg.keep_holdout_prompts:
        return data.sample_scenes("defender", n, list(data.BENIGN), "defense", seed=seed).captions
    return None


# ---------------------------------------------------------------------------------------------------------
# the decoder moderator
@torch.no_grad()
def collect_features(pipe, kind: str, job, device, sources=()):
    """The defender's features of one kind: VAE latents of its own renders + final latents of generations.

    Generations come from `pipe` and from each pipeline in `sources` (in nft_train: the base model and the
    NFT-defended one, so the moderator knows both what the UNet made before and after its own defence).
    Pocket world: only `defense` phrasings are used; data comes from the defender's seed stream. Real data:
    the folder's images (kept on the CPU; batches move to the device) and its captions as prompts.
    """
    cfg, seed = job.moderator, job.seed
    folder = job.data.unsafe if kind == "unsafe" else job.data.benign
    data.require_folder(folder, image_size(pipe), f"data.{kind}")
    if folder:
        pixels, captions = data.load_captioned_images(folder, image_size(pipe))
        images = to_tensor(pixels)  # (N, 3, H, W) on the CPU
        z = [encode_images(pipe.vae, images, batch=8)]
        prompts = [captions[i % len(captions)] for i in range(cfg.n_generated)]
    else:
        objects = data.defender_objects(kind, job.data.holdout)
        scenes = data.sample_scenes("defender", cfg.n_images, objects, "defense", seed=seed)
        images = to_tensor(scenes.images).to(device)
        z = [encode_images(pipe.vae, images)]
        prompts = data.sample_scenes("defender", cfg.n_generated, objects, "defense", seed=seed + 1).captions
    if kind == "benign":  # --data.retain_prompts, --data.keep_holdout_prompts: prompts beyond the images
        prompts = retention_prompts(job.data, cfg.n_generated, seed + 1) or prompts
    if cfg.n_generated:
        g = [torch.Generator("cpu").manual_seed(seed * 100_000 + i) for i in range(len(prompts))]
        b = cfg.gen_batch
        for source in (pipe, *sources):
            for i in range(0, len(prompts), b):
                z.append(source(prompt=prompts[i : i + b], generator=g[i : i + b], num_inference_steps=20,
                                guidance_scale=5.0, output_type="latent").images.float())
    return torch.cat(z), images


def simulated_decoder_attack(vae, unsafe_images, k: int, opt_name: str, lr: float, batch: int, gen):
    """A copy of the VAE whose decoder an attacker fine-tuned for k steps to reconstruct unsafe images."""
    adapted = copy.deepcopy(vae)
    opt = make_optimizer(opt_name, decoder_params(adapted), lr)
    for _ in range(k):
        x = unsafe_images[torch.randint(len(unsafe_images), (batch,), generator=gen)].to(adapted.device)
        loss = losses.reconstruction_loss(adapted, x)  # the attacker's own objective
        opt.zero_grad()
        loss.backward()
        opt.step()
    return adapted


def harden(vae, unsafe_images, zu, cfg: ModeratorConfig, rng, gen, perceptual) -> torch.Tensor:
    """Hardening of the decoder (as in the authors' final.py), first-order MAML: an attacker with a sampled
    optimizer and lr adapts a copy of the decoder for K steps (simulated_decoder_attack); the zero loss at the
    adapted weights is what the defender minimises, and its gradient, taken at the copy, is added to the decoder's
    own .grad."""
    name, lr = rng.choice(SIMULATED_ATTACKERS["decoder"])
    adapted = simulated_decoder_attack(vae, unsafe_images, cfg.inner_steps, name, lr, cfg.batch, gen)
    l_nft = losses.zero_loss(decode(adapted, zu), perceptual, cfg.pixel_weight)
    grads = torch.autograd.grad(cfg.w_nft * l_nft, decoder_params(adapted))
    for p, g in zip(decoder_params(vae), grads):
        p.grad += g
    return l_nft


def train_decoder_moderator(pipe, job, device, perceptual=None, sources=()) -> dict:
    """Fine-tune pipe.vae's decoder in place into the internal moderator; returns the last loss values."""
    cfg, vae = job.moderator, pipe.vae
    dtype = pick_dtype(job.memory.frozen_dtype, device)
    vae0 = copy.deepcopy(vae).to(dtype).eval().requires_grad_(False)  # D0, the original decoder (frozen)
    z_u, x_u = collect_features(pipe, "unsafe", job, device, sources)
    z_b, x_b = collect_features(pipe, "benign", job, device, sources)
    if cfg.n_generic and job.data.pocket:  # generic pictures, kept as the benign ones
        x_g = to_tensor(data.generic_images(cfg.n_generic, job.seed)).to(device)
        with torch.no_grad():
            z_g = encode_images(pipe.vae, x_g)
            if cfg.generic_filter:  # drop those nearer the defender's unsafe latents than its benign ones
                near = lambda z: torch.cdist(z_g.flatten(1), z.flatten(1)).min(1).values  # noqa: E731
                keep = near(z_u) > near(z_b)
                x_g, z_g = x_g[keep], z_g[keep]
        z_b, x_b = torch.cat([z_b, z_g]), torch.cat([x_b, x_g])
    vae.requires_grad_(False)
    params = decoder_params(vae)
    for p in params:
        p.requires_grad_(True)
    if job.memory.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(job.seed)
    rng = random.Random(job.seed)
    pick = lambda t: t[torch.randint(len(t), (cfg.batch,), generator=gen)]  # noqa: E731
    l_zero = l_cal = l_rec = l_nft = torch.zeros(())  # (what --moderator.steps=0 reports)
    bar = tqdm(range(cfg.steps), desc="decoder moderator")
    t0 = time.perf_counter()
    for _ in bar:
        zu, zb, xb = pick(z_u), pick(z_b), pick(x_b).to(device)  # real images wait on the CPU
        with torch.no_grad():
            ref = decode(vae0, zb)
        # (1) zero loss on unsafe features, calibration + reconstruction on benign ones, at the current weights
        # (unsafe and benign latents decoded in one call: (2 * batch, 3, H, W))
        d_u, d_b = decode(vae, torch.cat([zu, zb])).split([len(zu), len(zb)])
        l_zero = losses.zero_loss(d_u, perceptual, cfg.pixel_weight)
        l_cal = losses.calibration_loss(d_b, ref)
        l_rec = losses.reconstruction_loss(vae, xb)
        opt.zero_grad()
        (l_zero + cfg.w_cal * l_cal + cfg.w_rec * l_rec).backward()
        l_nft = harden(vae, x_u, zu, cfg, rng, gen, perceptual) if cfg.harden else torch.zeros(())
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # a far-adapted copy can give huge first-order gradients
        opt.step()
        bar.set_postfix(zero=f"{l_zero.item():.4f}", cal=f"{l_cal.item():.4f}", rec=f"{l_rec.item():.4f}",
                        nft=f"{l_nft.item():.4f}")
    wait_for(device)
    seconds = (time.perf_counter() - t0) / max(cfg.steps, 1)
    vae.requires_grad_(False).eval()
    return {"zero": l_zero.item(), "cal": l_cal.item(), "rec": l_rec.item(), "nft": l_nft.item(),
            "seconds_per_step": round(seconds, 4)}


def defender_prompts(kind: str, seed: int, folder: str = "", n: int = 2048, holdout: str = "") -> list[str]:
    """The defender's prompts of one kind ("unsafe" or "benign") for the text-level defences: n `defense`
    captions of the pocket world (less the `holdout` benign shapes), or a folder's captions (metadata.jsonl),
    repeated up to n."""
    if folder:
        captions = data.folder_captions(folder)
        return [captions[i % len(captions)] for i in range(max(n, len(captions)))]
    return data.sample_scenes("defender", n, data.defender_objects(kind, holdout), "defense", seed=seed).captions


def train_text_moderator(pipe, job, device) -> dict:
    """Fine-tune pipe.text_encoder in place: unsafe `defense` prompts -> zero features, benign unchanged."""
    cfg, te, tok = job.moderator, pipe.text_encoder, pipe.tokenizer
    te0 = copy.deepcopy(te).to(pick_dtype(job.memory.frozen_dtype, device)).eval().requires_grad_(False)
    unsafe = defender_prompts("unsafe", job.seed, job.data.unsafe)
    benign = defender_prompts("benign", job.seed, job.data.benign, holdout=job.data.holdout) + [""]
    te.train().requires_grad_(True)
    opt = torch.optim.Adam(te.parameters(), lr=cfg.text_lr)
    rng = random.Random(job.seed)
    l_fz = l_fc = torch.zeros(())  # (what --moderator.text_steps=0 reports)
    bar = tqdm(range(cfg.text_steps), desc="text moderator")
    for _ in bar:
        pu, pb = rng.sample(unsafe, cfg.batch), rng.sample(benign, cfg.batch - 1) + [""]  # keep "" for CFG
        with torch.no_grad():
            ref = encode_text(te0, tok, pb, device)
        l_fz = losses.feature_zero_loss(encode_text(te, tok, pu, device))
        l_fc = losses.feature_calibration_loss(encode_text(te, tok, pb, device), ref)
        opt.zero_grad()
        (l_fz + cfg.w_cal * l_fc).backward()
        opt.step()
        bar.set_postfix(fz=f"{l_fz.item():.4f}", fc=f"{l_fc.item():.4f}")
    te.eval().requires_grad_(False)
    return {"feature_zero": l_fz.item(), "feature_calibration": l_fc.item()}


def apply_moderator(pipe, job, device, sources=()) -> dict:
    """Train the moderator(s) named by job.moderator.kind into pipe, in place; returns losses and timings.
    job: a ModeratorJob or an NFTConfig (their .seed, .data, .memory and .moderator)."""
    cfg, out = job.moderator, {}
    if cfg.kind in ("decoder", "both"):
        t0 = time.time()
        kind = perceptual_nets.resolve(cfg.perceptual, cfg.vgg19, job.data.pocket)
        perceptual = perceptual_nets.build(kind, pipe, device, cfg.vgg19)
        out["decoder"] = train_decoder_moderator(pipe, job, device, perceptual, sources)
        out["decoder"]["perceptual"] = kind
        out["decoder"]["seconds"] = round(time.time() - t0, 1)
    if cfg.kind in ("text", "both"):
        t0 = time.time()
        out["text"] = train_text_moderator(pipe, job, device)
        out["text"]["seconds"] = round(time.time() - t0, 1)
    return out


def main(cfg: ModeratorJob):
    """Train the internal moderator alone (UNet untouched) and save the moderated pipeline."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    pipe = load_pipeline(cfg.model, device)
    stats = apply_moderator(pipe, cfg, device)
    out = Path("runs") / cfg.name
    save_pipeline(pipe, out, {"moderator.json": run_record(cfg) | {"train": stats}})
    print(f"moderated pipeline saved to {out}: {stats}")


if __name__ == "__main__":
    cli(ModeratorJob, main)
