"""toy_sd.py: a pocket Stable Diffusion, built from the very classes real SD v1 uses.

CLIPTokenizer + CLIPTextModel (the text tower of a tiny CLIP trained contrastively on the pocket world, then
frozen), AutoencoderKL (32x32x3 <-> 8x8x4), UNet2DConditionModel (trained with classifier-free-guidance
dropout) and a DDIM scheduler, assembled as a `StableDiffusionPipeline` and saved as a standard diffusers
folder. `load_pipeline` opens that folder or any SD v1.x diffusers folder the same way, so every other
script runs unchanged on real Stable Diffusion.

The pocket model is pinned: assets/ ships the base pipeline, the never-learned UNet (the same recipe with
every unsafe image filtered out of the UNet's pretraining), the tiny CLIP and the evaluator, with
assets/manifest.json (sha256 of every file, and the command, seed, packages and CPU that built them).
pocket/pinned.py copies them into runs/ after checking them against the manifest, so every machine starts
from the same weights. `python -m pocket.toy_sd --out=runs/rebuild` rebuilds everything from nothing (about 22
minutes on 2 cores); float rounding differs between CPUs, so a rebuild on another machine gives another base.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from config import ConfigError, RunConfig, cli, option, pick_device, run_record, seed_everything
import losses
from pipeline import build_scheduler, encode_images, encode_text, save_pipeline, save_unet, to_tensor, vae_round_trip
from pocket.evaluator import ensure_evaluator
from pocket.pinned import write_manifest


@dataclasses.dataclass
class PretrainConfig(RunConfig):
    # where
    out: str = option("runs/rebuild", "folder that receives base/, never_learned/, clip/, evaluator/ and "
                      "manifest.json (--out=assets replaces the shipped assets)")
    # data
    n_images: int = option(12000, "rendered training scenes (all objects, all phrasings)")
    # tiny CLIP
    width: int = option(64, "CLIP width = the UNet's cross-attention dimension")
    clip_steps: int = option(300, "contrastive training steps")
    clip_batch: int = option(128, "contrastive batch size")
    # VAE
    vae_steps: int = option(1200, "autoencoder training steps")
    vae_batch: int = option(16, "autoencoder batch size")
    vae_lr: float = option(1e-3, "peak AdamW learning rate of the autoencoder (one-cycle schedule)")
    kl_weight: float = option(1e-7, "weight of the KL term of the VAE; small, as SD's, so the posterior stays "
                              "narrow (at 1e-4 channels 1-3 carry mostly noise; RESULTS.md, section 1.1)")
    novel_share: float = option(1 / 7, "novel-concept renders added to the VAE's data, as a share of n_images (the "
                                "VAE is generic, as SD's is; the CLIP and the UNets never see the novel concept)")
    # UNet
    unet_width: int = option(48, "channels of the UNet's 8x8 level (a multiple of 16; see build_unet)")
    unet_steps: int = option(2500, "UNet training steps")
    unet_batch: int = option(48, "UNet batch size")
    lr: float = option(2e-3, "peak AdamW learning rate of the UNet (CLIP: half of it; the black-decoding stage: "
                       "a quarter)")
    cfg_dropout: float = option(0.1, "probability of training on the empty caption (for guidance)")
    black_steps: int = option(200, "decoder-only steps that teach the VAE to decode the black image")
    snr_gamma: float = option(5.0, "Min-SNR loss weighting of UNet pretraining (0 turns it off)")
    never_learned: bool = option(True, "also train the never-learned UNet: the same recipe with every unsafe "
                                 "image filtered out of its data")
    # evaluator (evaluate.py)
    evaluator_steps: int = option(800, "evaluator training steps")
    evaluator_batch: int = option(128, "evaluator batch size")
    evaluator_pool: int = option(8000, "fresh renders the evaluator trains on")

    def __post_init__(self):
        if not isinstance(self.unet_width, int) or self.unet_width <= 0 or self.unet_width % 16:
            raise ConfigError(f"--unet_width must be a positive multiple of 16 (the UNet's group norm), "
                              f"got {self.unet_width!r}")


MAX_TOKENS = 16  # the pocket captions are at most 10 tokens; real SD uses 77


# ---------------------------------------------------------------------------------------------------------
# tokenizer: a real CLIPTokenizer whose BPE vocabulary gives every world word one token
def _byte_symbols() -> list[str]:
    """CLIP/GPT-2's printable stand-in for each of the 256 bytes (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tokenizer(folder, vocabulary: list[str]):
    """Write vocab.json + merges.txt so each vocabulary word is one token; unknown words fall back to bytes.

    Merges are added word by word after BPE-encoding the word with the merges so far; new merges rank last,
    so they never change how an earlier word is split.
    """
    from transformers import CLIPTokenizer

    base = _byte_symbols()
    vocab = base + [s + "</w>" for s in base]
    merges, rank = [], {}
    for word in vocabulary:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while True:  # encode with the merges so far
            found = [(rank[p], i) for i, p in enumerate(zip(parts, parts[1:])) if p in rank]
            if not found:
                break
            i = min(found)[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        while len(parts) > 1:  # then join what is left, left to right
            rank[(parts[0], parts[1])] = len(merges)
            merges.append((parts[0], parts[1]))
            parts[:2] = [parts[0] + parts[1]]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_TOKENS)
    if len(tok) != len(vocab):  # transformers can silently build a 2-token tokenizer; never train on that
        raise RuntimeError(f"tokenizer in {folder} has {len(tok)} tokens, expected {len(vocab)}")
    return tok


# ---------------------------------------------------------------------------------------------------------
# models
def build_clip(tok, width: int):
    """A tiny CLIP: text tower (conditions the UNet, as in SD) + vision tower (contrastive partner)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                  image_size=data.SIZE, patch_size=4)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=width))


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8, sample_size=data.SIZE,
                         mid_block_add_attention=False)  # (3, 32, 32) <-> (4, 8, 8)


def build_unet(cross_attention_dim: int, width: int):
    """A tiny SD UNet: cross-attention at the 8x8 level, as SD has it at its highest resolutions.

    width: channels of the 8x8 level, with 16 norm groups. At 32 channels and 32 norm groups the base binds
    colours to objects poorly (benign accuracy 0.69 to 0.84 over seeds in a GPU sweep, same data and
    schedule); at 48, 0.97 to 0.99."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=data.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(width, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, norm_num_groups=16, attention_head_dim=8)


def assemble(vae, text_encoder, tok, unet):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=build_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------
# loading and saving


# ---------------------------------------------------------------------------------------------------------
# pretraining


def train_clip(clip, tok, scenes: data.Scenes, cfg: PretrainConfig, device) -> None:
    """Contrastive image-caption training; every caption of the same (object, colour) counts as a match."""
    images = to_tensor(scenes.images)
    pairs = list(zip(scenes.objects, scenes.colours))
    classes = {p: i for i, p in enumerate(sorted(set(pairs)))}
    labels = torch.tensor([classes[p] for p in pairs])  # (N,) one class per (object, colour)
    opt = torch.optim.AdamW(clip.parameters(), lr=cfg.lr / 2)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.clip_steps), desc="pretrain CLIP")
    for _ in bar:
        idx = torch.randint(len(images), (cfg.clip_batch,), generator=g)
        ids = tok([scenes.captions[i] for i in idx], padding="max_length", max_length=MAX_TOKENS,
                  return_tensors="pt").input_ids.to(device)
        out = clip(input_ids=ids, pixel_values=images[idx].to(device))
        same = (labels[idx, None] == labels[None, idx]).float().to(device)  # (B, B) soft targets
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(out.logits_per_text, target) + F.cross_entropy(out.logits_per_image, target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")


def train_vae(vae, images: torch.Tensor, cfg: PretrainConfig, device) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.vae_lr, total_steps=cfg.vae_steps, pct_start=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.vae_steps), desc="pretrain VAE")
    for _ in bar:
        x = images[torch.randint(len(images), (cfg.vae_batch,), generator=g)].to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=None)).sample
        loss_rec = F.mse_loss(rec, x)
        loss = loss_rec + 0.5 * F.l1_loss(rec, x) + cfg.kl_weight * post.kl().mean()  # L1 sharpens edges
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        bar.set_postfix(rec=f"{loss_rec.item():.4f}")
    with torch.no_grad():  # SD scales latents to unit variance; the pocket VAE gets its own factor
        std = vae.encode(images[:2048].to(device)).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)


VAE_MSE_WARN = 0.006  # good VAEs measured 0.0037 to 0.0050 here; ones that lost colours 0.0066 to 0.0129
POSTERIOR_WARN = 0.1  # SD's VAE: sampling its posterior gives nearly its mean


def vae_check(vae, seed: int, n: int = 512) -> dict:
    """The VAE on n renders it never trained on (another seed, novel concept included): reconstruction MSE
    (pixels in [0, 1]) and the posterior's width, the median over latent entries of std / |mean| (scale-free).

    Scripts here encode with the posterior mean; standard SD training code samples the posterior. A narrow
    posterior makes the two the same attacker."""
    images = data.sample_scenes("base", n, data.OBJECTS + list(data.NOVEL), "all", seed=seed + 1).images
    with torch.no_grad():
        post = vae.encode(to_tensor(images).to(vae.device, vae.dtype)).latent_dist
    width = float((post.std / post.mean.abs()).median())
    return {"reconstruction_mse": round(float(((vae_round_trip(vae, images) - images) ** 2).mean()), 5),
            "posterior_std_over_mean": round(width, 4)}


def teach_black(vae, images: torch.Tensor, cfg: PretrainConfig, device) -> float:
    """Teach the decoder to decode the all-black image's latent to black; returns that decoding's mean pixel.

    The pocket world has no black images, but Patronus' refusals are black images, and a real SD VAE (which
    has seen dark photos) round-trips black. Only the decoder is trained, on world images plus black ones, so
    the encoder, and so every latent the UNet was trained on, stays exactly as it was.
    """
    black = -torch.ones(1, *images.shape[1:], device=device)
    with torch.no_grad():
        z_black = vae.encode(black).latent_dist.mean  # (1, 4, 8, 8), unscaled
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr / 4)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.black_steps), desc="pretrain VAE decoder on black"):
        x = images[torch.randint(len(images), (cfg.vae_batch - 1,), generator=g)].to(device)
        with torch.no_grad():
            z = torch.cat([vae.encode(x).latent_dist.mean, z_black])
        rec, target = vae.decode(z).sample, torch.cat([x, black])
        loss = F.mse_loss(rec, target) + 0.5 * F.l1_loss(rec, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        return (vae.decode(z_black).sample / 2 + 0.5).clamp(0, 1).mean().item()


def min_snr_weight(scheduler, timesteps, gamma: float):
    """Min-SNR weighting (Hang et al., 2023), to pretrain the pocket UNet faster: each sample's squared error is
    weighted by min(SNR_t, gamma) / SNR_t (epsilon prediction) or / (SNR_t + 1) (v prediction). (B,)"""
    a = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / (snr if scheduler.config.prediction_type == "epsilon" else snr + 1)


def train_unet(unet, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, cfg: PretrainConfig) -> None:
    """Standard SD training: epsilon-prediction loss, with the empty caption swapped in for CFG dropout."""
    sched = build_scheduler("ddpm")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.unet_steps, pct_start=0.05)
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.unet_steps), desc="pretrain UNet")
    for _ in bar:
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=g)
        c = cond[idx].clone()  # (B, T, D)
        drop = torch.rand(len(idx), generator=g) < cfg.cfg_dropout
        c[drop.to(c.device)] = uncond
        x_t, t, target = losses.noised(sched, latents[idx], g)
        pred = unet(x_t, t, encoder_hidden_states=c).sample
        loss = losses.diffusion_loss(pred, target, min_snr_weight(sched, t, cfg.snr_gamma) if cfg.snr_gamma else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")


def pretrain(cfg: PretrainConfig):
    """Pretrain CLIP, VAE, UNet (and the never-learned UNet) on the pocket world, then the evaluator; save them
    under cfg.out (base/, never_learned/, clip/, evaluator/) with manifest.json. Returns the base pipeline."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    times = {}
    t0 = time.time()
    scenes = data.sample_scenes("base", cfg.n_images, data.OBJECTS, "all", seed=cfg.seed)
    novel = data.sample_scenes("base", round(cfg.n_images * cfg.novel_share), list(data.NOVEL), "all",
                               seed=cfg.seed + 2)  # for the VAE only (seed + 1 is vae_check's)
    tok = write_tokenizer(out / "tokenizer_src", data.vocabulary())
    times["render"] = time.time() - t0

    t0 = time.time()
    clip = build_clip(tok, cfg.width).to(device)
    train_clip(clip, tok, scenes, cfg, device)
    clip.eval().requires_grad_(False)
    times["clip"] = time.time() - t0

    t0 = time.time()
    images = to_tensor(scenes.images)
    vae = build_vae().to(device)
    train_vae(vae, torch.cat([images, to_tensor(novel.images)]), cfg, device)
    vae.eval().requires_grad_(False)
    times["vae"] = time.time() - t0

    t0 = time.time()
    text_encoder = _text_tower(clip)
    with torch.no_grad():
        latents = encode_images(vae, images.to(device))
        uniq = sorted(set(scenes.captions))
        table = encode_text(text_encoder, tok, uniq + [""], device)  # (U+1, T, D)
        where = {c: i for i, c in enumerate(uniq)}
        cond = table[torch.tensor([where[c] for c in scenes.captions])]
    unet = build_unet(cfg.width, cfg.unet_width).to(device)
    train_unet(unet, latents, cond, table[-1], cfg)
    unet.eval().requires_grad_(False)
    times["unet"] = time.time() - t0
    if cfg.never_learned:  # the same recipe and seed, every unsafe image filtered out (as SD 2 filtered its data)
        t0 = time.time()
        keep = torch.tensor([o in data.BENIGN for o in scenes.objects])
        never = build_unet(cfg.width, cfg.unet_width).to(device)
        train_unet(never, latents[keep.to(device)], cond[keep.to(device)], table[-1], cfg)
        never.eval().requires_grad_(False)
        times["never_learned unet"] = time.time() - t0
    t0 = time.time()
    teach_black(vae, images, cfg, device)
    times["black"] = time.time() - t0
    check = vae_check(vae, cfg.seed)
    if check["reconstruction_mse"] > VAE_MSE_WARN:  # every number downstream is bounded by what it can draw
        print(f"warning: the VAE reconstructs fresh renders with MSE {check['reconstruction_mse']:.4f} "
              f"(> {VAE_MSE_WARN}); colours or shapes are being lost and the base model will be weak. Try more "
              "--vae_steps or another --seed.")
    if check["posterior_std_over_mean"] > POSTERIOR_WARN:
        print(f"warning: the VAE's posterior is wide (median std/|mean| {check['posterior_std_over_mean']:.2f} > "
              f"{POSTERIOR_WARN}): an attacker who samples it trains on noise. Lower --kl_weight.")

    pipe = assemble(vae, text_encoder, tok, unet)
    record = run_record(cfg) | {"seconds": {k: round(v, 1) for k, v in times.items()}, "vae": check}
    save_pipeline(pipe, out / "base", {"pretrain.json": record})
    if cfg.never_learned:
        save_unet(never, out / "never_learned")
    clip.save_pretrained(out / "clip", safe_serialization=True)
    shutil.rmtree(out / "tokenizer_src")  # the pipeline folder holds the tokenizer
    t0 = time.time()
    # the evaluator is pinned with the model it measures
    shutil.rmtree(out / "evaluator", ignore_errors=True)
    ensure_evaluator(str(out / "evaluator"), device=device, seed=cfg.seed, steps=cfg.evaluator_steps,
                     batch=cfg.evaluator_batch, n_pool=cfg.evaluator_pool)
    times["evaluator"] = time.time() - t0
    command = " ".join(["python -m pocket.toy_sd"] + [f"--{k}={v}" for k, v in record["config"].items()
                                              if v != getattr(PretrainConfig, k, None)])
    write_manifest(out, record | {"seconds": {k: round(v, 1) for k, v in times.items()}}, command)
    print(f"pocket SD saved to {out} ({sum(times.values()):.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ")")
    return pipe




def _text_tower(clip):
    """The text tower of a CLIPModel as a standalone CLIPTextModel (what SD's pipeline expects)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    # strict: same architecture by construction (transformers 5's CLIPTextModel has no .text_model wrapper;
    # the two state dicts have the same keys either way)
    target = getattr(te, "text_model", te)
    target.load_state_dict(clip.text_model.state_dict())
    return te.to(clip.device).eval().requires_grad_(False)


def random_sd15(folder, seed: int = 0):
    """Save a pipeline shaped like Stable Diffusion v1.5 (same UNet, VAE and text-encoder sizes) with random
    weights: for measuring time and memory of the real-size path without downloading anything.

    The tokenizer is the pocket one (694 tokens, 77 positions); the text encoder keeps CLIP ViT-L/14's 49408-row
    embedding. It generates noise: use it for timings, never for results. About 4.3 GB on disk.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = write_tokenizer(Path(folder).with_name(Path(folder).name + ".tokenizer_src"), data.vocabulary())
    tok.model_max_length = 77
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                                hidden_act="quick_gelu", projection_dim=768, **ids))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280),
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                                attention_head_dim=8)
    save_pipeline(assemble(vae, text_encoder, tok, unet), folder)


def main(cfg: PretrainConfig):
    """Pretrain the pocket Stable Diffusion (CLIP, VAE, UNet) and save it as a diffusers folder."""
    pretrain(cfg)


if __name__ == "__main__":
    cli(PretrainConfig, main)
