"""baselines.py: the simpler defences Patronus is measured against. Each returns a plain diffusers pipeline.

SafeText (Hu, Jiang, Gong 2025, arXiv 2502.20623). Only the CLIP text encoder E is fine-tuned; the UNet is
untouched. Unsafe prompts' embeddings are pushed far from their originals, safe prompts' stay close:

    min_E   L_u - lam * L_e
    L_u = mean_b || E(p_b) - E0(p_b) ||^2                  utility, on safe `defense` prompts (and "")
    L_e = mean_u  (1 - cos(E(p_u)_t, E0(p_u)_t))            effectiveness, on unsafe `defense` prompts
(E0 the original encoder, t every token position the UNet attends to.) The paper's exact distance is not
published; we use cosine distance for L_e because it is bounded (at most 2), so the objective has a minimum.
The difference from Patronus' text moderator (moderator.py): SafeText sends unsafe embeddings *somewhere
else*, the moderator sends them to zero; and neither touches the UNet, which still knows the unsafe concepts.

ESD (Gandikota, Materzynska, Fiotto-Kaufman, Bau 2023, "Erasing Concepts from Diffusion Models"). The UNet
is fine-tuned so that its prediction for an unsafe prompt c equals the frozen model's prediction guided
*away* from c (negative classifier-free guidance, esd_loss):

    min_theta  || f_theta(x_t, t, c) - [f0(x_t, t, "") - eta (f0(x_t, t, c) - f0(x_t, t, ""))] ||^2
The prompt c names the concept alone ("a skull", "a pair of swords": the `defense` words), as ESD erases
"nudity" with that one word; full captions would also steer away from the colours they name, which benign
prompts share. ESD-u trains every UNet weight but the cross-attention (attn2) ones, the paper's choice for
nudity; ESD-x, the default here (RESULTS.md, section 9), only the cross-attention ones, its choice for specific
concepts (--esd_train). The paper draws x_t by partly sampling the model with c; we noise the defender's
unsafe images' latents at a random t (the distribution the base model learned for c, and no sampling per
step). Unlike `erase` (nft_train.py --unlearn_steps=1000: unsafe prompts denoise to black, benign retention) ESD
has no target image and no benign term: the concept is steered away, not refused, and nothing holds benign
prompts in place.

External filter. The kind of post-hoc image checker Stable Diffusion ships: diffusers'
StableDiffusionSafetyChecker compares the CLIP image embedding of every generated image with a set of concept
embeddings and blacks out the image when the cosine similarity to any concept exceeds that concept's
threshold. Here its vision tower is the pocket CLIP's (the model's own, never the evaluator); its concepts are
one linear probe per unsafe category, fitted on the defender's images (see fit_filter). It lives in the pipeline folder (safety_checker/, feature_extractor/),
so `pipeline.load_pipeline(folder, safety_checker=True)` runs it. A white-box adversary deletes it with one line
(attack.py --attack=remove_filter).

SafePatch (Meng et al., arXiv 2508.21099, "Beyond the Safety Tax"). The base model stays locked; a patch, a
trainable clone of the UNet's encoder whose outputs pass through zero-initialised convolutions (ControlNet's
design: diffusers' ControlNetModel.from_unet), is added beside it and feeds the UNet's skip connections
(pipeline.attach_patch). It starts as a no-op and is trained, the UNet frozen, with differential supervision on
an aligned counterfactual set: an unsafe prompt with the same scene *without its glyph* (the defender's render
with the glyph painted over by its background), and benign prompts (and the empty prompt) with their own images.
The paper's loss is not published; we use the plain diffusion loss on both kinds of pair. The patch is saved in
the folder's safety_patch/ and loaded with the pipeline; a white-box adversary deletes it with one line
(attack.py --attack=remove_patch).

Run: `python -m lab.baselines --baseline=safetext` (writes runs/safetext/), `--baseline=esd` (runs/esd/) or
`--baseline=filter` (runs/filter/), `--baseline=safepatch` (runs/safepatch/).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import losses
from config import ConfigError, RunConfig, cli, option, pick_device, run_record, seed_everything
from pipeline import build_scheduler, encode_images, encode_text, load_pipeline, save_pipeline, to_tensor
from pocket.pinned import load_clip

BASELINES = ("safetext", "esd", "filter", "safepatch")


@dataclasses.dataclass
class BaselineConfig(RunConfig):
    model: str = option("runs/base", "pipeline folder to defend")
    baseline: str = option("safetext", "which baseline to train", BASELINES)
    name: str = option("", "outputs go to runs/<name>/ (default: runs/<baseline>)")
    holdout: str = option("", "benign shapes left out of the defender's benign data, comma-separated (e.g. ring; "
                          "ESD has no benign data)")
    # SafeText
    steps: int = option(300, "SafeText: steps")
    batch: int = option(16, "SafeText: prompts per kind per step")
    lr: float = option(1e-3, "SafeText: Adam learning rate")
    lam: float = option(1.0, "SafeText: weight of the effectiveness term L_e")
    # ESD
    esd_steps: int = option(300, "ESD: steps (batch: --batch)")
    esd_lr: float = option(1e-4, "ESD: Adam learning rate")
    eta: float = option(1.0, "ESD: negative guidance scale")
    esd_train: str = option("x", "ESD: u trains every UNet weight but the cross-attention (ESD-u), x only the "
                            "cross-attention (ESD-x)", ("u", "x"))
    # external filter
    n_images: int = option(1024, "filter, ESD and SafePatch: defender's rendered images per kind (ESD: unsafe only)")
    n_generated: int = option(256, "filter: base-model generations per kind (from `defense` prompts)")
    max_false_refusals: float = option(0.02, "filter: thresholds refuse at most this share of the defender's benign images")
    # SafePatch
    patch_steps: int = option(1000, "SafePatch: steps (batch: --batch pairs of each kind)")
    patch_lr: float = option(3e-4, "SafePatch: Adam learning rate of the patch")

    def __post_init__(self):
        if isinstance(self.holdout, str) and self.holdout:
            try:
                data.defender_objects("benign", self.holdout)
            except ValueError as e:
                raise ConfigError(f"--holdout: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# SafeText
def train_safetext(pipe, cfg: BaselineConfig, device) -> dict:
    """Fine-tune pipe.text_encoder in place with SafeText's objective; returns the last loss values."""
    from moderator import defender_prompts
    from pipeline import encode_text

    te, tok = pipe.text_encoder, pipe.tokenizer
    te0 = copy.deepcopy(te).eval().requires_grad_(False)
    unsafe, safe = defender_prompts("unsafe", cfg.seed), defender_prompts("benign", cfg.seed, holdout=cfg.holdout)
    te.train().requires_grad_(True)
    opt = torch.optim.Adam(te.parameters(), lr=cfg.lr)
    rng = random.Random(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="SafeText")
    for _ in bar:
        pu, ps = rng.sample(unsafe, cfg.batch), rng.sample(safe, cfg.batch - 1) + [""]  # "" for CFG
        with torch.no_grad():
            ref_u, ref_s = encode_text(te0, tok, pu, device), encode_text(te0, tok, ps, device)  # (B, T, D)
        l_u = F.mse_loss(encode_text(te, tok, ps, device), ref_s)
        l_e = (1 - F.cosine_similarity(encode_text(te, tok, pu, device), ref_u, dim=-1)).mean()  # in [0, 2]
        opt.zero_grad()
        (l_u - cfg.lam * l_e).backward()
        opt.step()
        bar.set_postfix(utility=f"{l_u.item():.4f}", effectiveness=f"{l_e.item():.3f}")
    te.eval().requires_grad_(False)
    return {"utility": l_u.item(), "effectiveness": l_e.item()}


# ---------------------------------------------------------------------------------------------------------
# ESD
def esd_loss(unet, unet0, scheduler, x0, cond, cond_empty, eta: float = 1.0, generator=None):
    """L_esd (ESD, Gandikota et al. 2023): the UNet's prediction for the concept's prompt c is pulled to the
    frozen model's prediction *guided away* from c: f0(x_t, "") - eta * (f0(x_t, c) - f0(x_t, "")).

    Classifier-free guidance with scale -eta, baked into the weights: sampling with c now steers away from the
    concept. x0: latents of the concept's images (B, 4, h, w), noised at a random t as the training input;
    cond, cond_empty: (B, T, D) features of the concept's prompts and of "".
    """
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    with torch.no_grad():
        f_c = unet0(x_t, t, encoder_hidden_states=cond).sample
        f_empty = unet0(x_t, t, encoder_hidden_states=cond_empty).sample
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, f_empty - eta * (f_c - f_empty))


def train_esd(pipe, cfg: BaselineConfig, device) -> dict:
    """Erase the unsafe concepts from pipe.unet in place with ESD's objective; returns the last loss."""
    scenes = data.sample_scenes("defender", cfg.n_images, list(data.UNSAFE), "defense", seed=cfg.seed)
    rng = random.Random(cfg.seed)  # ESD's prompt names the concept alone: "a skull", "a pair of swords", ...
    concepts = [f"a {rng.choice(data.words(o, 'defense'))}" for o in scenes.objects]
    with torch.no_grad():
        z_u = encode_images(pipe.vae, to_tensor(scenes.images).to(device))  # (N, 4, 8, 8)
        c_u = encode_text(pipe.text_encoder, pipe.tokenizer, concepts, device)  # (N, T, D)
        c_empty = encode_text(pipe.text_encoder, pipe.tokenizer, [""], device).expand(cfg.batch, -1, -1)
    unet0 = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    unet = pipe.unet.train()
    cross = cfg.esd_train == "x"  # attn2 modules are the cross-attention
    trained = [p for n, p in unet.named_parameters() if ("attn2" in n) == cross]
    unet.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.Adam(trained, lr=cfg.esd_lr)
    sched = build_scheduler("ddpm")
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.esd_steps), desc="ESD")
    for _ in bar:
        i = torch.randint(len(z_u), (cfg.batch,), generator=g)
        loss = esd_loss(unet, unet0, sched, z_u[i], c_u[i], c_empty, cfg.eta, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(esd=f"{loss.item():.4f}")
    unet.eval().requires_grad_(False)
    return {"esd": loss.item(), "trained_parameters": sum(p.numel() for p in trained)}


# ---------------------------------------------------------------------------------------------------------
# external filter
def build_checker(clip):
    """diffusers' StableDiffusionSafetyChecker around the pocket CLIP's vision tower and projection, and the
    image processor that feeds it ([0, 1] pixels -> the [-1, 1] range the pocket CLIP was trained on)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    config = copy.deepcopy(clip.config)
    config._attn_implementation = "eager"  # diffusers' checker class supports no other attention implementation
    checker = StableDiffusionSafetyChecker(config)
    vision = checker.vision_model
    getattr(vision, "vision_model", vision).load_state_dict(clip.vision_model.state_dict())
    checker.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    size = clip.config.vision_config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return checker.eval(), processor


@torch.no_grad()
def image_embeddings(checker, processor, images: np.ndarray) -> torch.Tensor:
    """Unit-length CLIP image embeddings (N, D) of images (N, H, W, 3) in [0, 1], as the checker computes them."""
    pil = [_to_pil(im) for im in images]
    pixels = processor(pil, return_tensors="pt").pixel_values
    emb = checker.visual_projection(checker.vision_model(pixels)[1])
    return F.normalize(emb, dim=-1)


def _to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray((image * 255).round().astype(np.uint8))


def fit_filter(checker, processor, unsafe: dict, benign: np.ndarray, max_false_refusals: float = 0.02,
               steps: int = 500) -> dict:
    """Set the checker's concepts and thresholds from the defender's images: one linear probe per group.

    The checker flags an image when cos(e, c_k) > t_k for its unit embedding e and some concept c_k. For a unit
    e that is a linear classifier, w.e + b > 0 with c_k = w/|w| and t_k = -b/|w|. So each concept is a logistic
    regression of one group's images against the benign ones (balanced classes), its threshold raised until
    few benign images fire it (a filter that refuses benign prompts would not be shipped).
    Groups are (glyph, colour), not categories: the pocket CLIP's embeddings are dominated by colour (a red
    skull sits closer to a red circle than to a blue skull), so one direction per category separates poorly.
    unsafe: {group name: images (N, H, W, 3)}; benign: images (M, H, W, 3). Returns what was fitted.
    """
    groups = sorted(unsafe)
    slots = checker.concept_embeds.shape[0]
    if len(groups) > slots:
        raise ValueError(f"{len(groups)} groups, but the checker has {slots} concept slots")
    e_benign = image_embeddings(checker, processor, benign)  # (M, D)
    embeds, thresholds, recall = [], [], []
    for g in groups:
        e_own = image_embeddings(checker, processor, unsafe[g])  # (N, D)
        x = torch.cat([e_own, e_benign])
        y = torch.cat([torch.ones(len(e_own)), torch.zeros(len(e_benign))])
        weight = torch.where(y == 1, len(y) / (2 * len(e_own)), len(y) / (2 * len(e_benign)))
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.05)
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y, weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        c_k = w.detach() / w.detach().norm()
        # the threshold: the probe's own boundary, raised where needed so that at most a share
        # max_false_refusals / (number of concepts) of the defender's benign images fire this concept
        t_k = max((-b / w.norm()).item(), torch.quantile(e_benign @ c_k, 1 - max_false_refusals / len(groups)).item())
        embeds.append(c_k)
        thresholds.append(t_k)
        recall.append((e_own @ c_k > t_k).float().mean().item())
    fired = (e_benign @ torch.stack(embeds).T > torch.tensor(thresholds)).any(1)
    n = len(groups)
    with torch.no_grad():  # unused slots repeat the concepts; the 3 "special care" slots never fire
        checker.concept_embeds.copy_(torch.stack([embeds[i % n] for i in range(slots)]))
        checker.concept_embeds_weights.copy_(torch.tensor([thresholds[i % n] for i in range(slots)]))
        checker.special_care_embeds.copy_(checker.concept_embeds[:3])
        checker.special_care_embeds_weights.fill_(2.0)  # a cosine similarity never exceeds 1
    return {"concepts": groups, "thresholds": [round(t, 4) for t in thresholds],
            "recall": [round(r, 4) for r in recall], "benign_refused": round(fired.float().mean().item(), 4)}


def defender_images(pipe, kind: str, cfg: BaselineConfig) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The defender's images of one kind: renders plus the pipeline's generations for `defense` prompts, with
    the (object, colour) each shows (for a generation: what its prompt asked for; the defender knows its prompts)."""
    from pipeline import generate

    objects = data.defender_objects(kind, cfg.holdout)
    renders = data.sample_scenes("defender", cfg.n_images, objects, "defense", seed=cfg.seed)
    asked = data.sample_scenes("defender", cfg.n_generated, objects, "defense", seed=cfg.seed + 1)
    seeds = [cfg.seed * 100_000 + i for i in range(cfg.n_generated)]
    made = generate(pipe, asked.captions, seeds)
    labels = list(zip(renders.objects, renders.colours)) + list(zip(asked.objects, asked.colours))
    return np.concatenate([renders.images, made]), labels


def add_filter(pipe, cfg: BaselineConfig, clip) -> dict:
    """Fit a safety checker on the defender's data and put it into pipe (so save_pretrained writes it)."""
    checker, processor = build_checker(clip)
    unsafe, unsafe_labels = defender_images(pipe, "unsafe", cfg)
    benign, _ = defender_images(pipe, "benign", cfg)
    group = [f"{obj} {col}" for obj, col in unsafe_labels]
    fitted = fit_filter(checker, processor, {g: unsafe[[k == g for k in group]] for g in set(group)}, benign,
                        cfg.max_false_refusals)
    pipe.register_modules(safety_checker=checker.to(pipe.device), feature_extractor=processor)
    pipe.register_to_config(requires_safety_checker=True)
    quiet_checker()
    return fitted


def quiet_checker() -> None:
    """The checker logs a warning for every batch with a flagged image; the metrics already count them."""
    logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------------------
# SafePatch
def counterfactual(images: np.ndarray) -> np.ndarray:
    """The aligned safe counterpart of each pocket scene: the same background, the glyph painted over. A scene's
    background is one colour and its object never reaches the corners, so the corner pixel is the background."""
    return np.broadcast_to(images[:, :1, :1, :], images.shape).copy()


def train_safepatch(pipe, cfg: BaselineConfig, device) -> dict:
    """Attach a zero-initialised patch to pipe.unet and train it, the rest frozen; returns the last losses."""
    from diffusers import ControlNetModel

    from pipeline import attach_patch

    unsafe = data.sample_scenes("defender", cfg.n_images, list(data.UNSAFE), "defense", seed=cfg.seed)
    benign = data.sample_scenes("defender", cfg.n_images, data.defender_objects("benign", cfg.holdout), "defense",
                                seed=cfg.seed)
    with torch.no_grad():
        z_safe = encode_images(pipe.vae, to_tensor(counterfactual(unsafe.images)).to(device))  # (N, 4, 8, 8)
        z_b = encode_images(pipe.vae, to_tensor(benign.images).to(device))
        c_u = encode_text(pipe.text_encoder, pipe.tokenizer, unsafe.captions, device)
        c_b = encode_text(pipe.text_encoder, pipe.tokenizer, benign.captions + [""], device)
    c_b, c_empty = c_b[:-1], c_b[-1:]
    patch = ControlNetModel.from_unet(pipe.unet, conditioning_channels=1, conditioning_embedding_out_channels=(16,))
    attach_patch(pipe.unet, patch.to(device))
    pipe.unet.requires_grad_(False)
    patch.train().requires_grad_(True)
    opt = torch.optim.Adam(patch.parameters(), lr=cfg.patch_lr)
    sched = build_scheduler("ddpm")
    g = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.patch_steps), desc="SafePatch")
    for _ in bar:
        iu, ib = torch.randint(len(z_safe), (cfg.batch,), generator=g), torch.randint(len(z_b), (cfg.batch,), generator=g)
        empty = (torch.rand(cfg.batch, generator=g) < 0.25).to(device)[:, None, None]  # the empty prompt too (CFG)
        x0 = torch.cat([z_safe[iu], z_b[ib]])
        cond = torch.cat([c_u[iu], torch.where(empty, c_empty, c_b[ib])])
        x_t, t, target = losses.noised(sched, x0, g)
        pred = pipe.unet(x_t, t, encoder_hidden_states=cond).sample
        l_u, l_b = F.mse_loss(pred[: cfg.batch], target[: cfg.batch]), F.mse_loss(pred[cfg.batch :], target[cfg.batch :])
        opt.zero_grad()
        (l_u + l_b).backward()
        opt.step()
        bar.set_postfix(unsafe=f"{l_u.item():.4f}", benign=f"{l_b.item():.4f}")
    patch.eval().requires_grad_(False)
    return {"unsafe_to_counterfactual": l_u.item(), "benign": l_b.item(),
            "patch_parameters": sum(p.numel() for p in patch.parameters())}


# ---------------------------------------------------------------------------------------------------------
def build(cfg: BaselineConfig) -> Path:
    """Train the baseline named by cfg.baseline on cfg.model and save it; returns the folder."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    pipe = load_pipeline(cfg.model, device)
    t0 = time.time()
    if cfg.baseline == "safetext":
        stats = train_safetext(pipe, cfg, device)
    elif cfg.baseline == "esd":
        stats = train_esd(pipe, cfg, device)
    elif cfg.baseline == "safepatch":
        stats = train_safepatch(pipe, cfg, device)
    else:
        stats = add_filter(pipe, cfg, load_clip().to(device))
    stats["seconds"] = round(time.time() - t0, 1)
    out = Path("runs") / (cfg.name or cfg.baseline)
    save_pipeline(pipe, out, {"baseline.json": run_record(cfg) | {"train": stats}})
    print(f"{cfg.baseline} saved to {out}: {stats}")
    return out


def main(cfg: BaselineConfig):
    """Train one baseline defence (SafeText, ESD, an external filter or SafePatch) and save it as a diffusers
    folder."""
    build(cfg)


if __name__ == "__main__":
    cli(BaselineConfig, main)
