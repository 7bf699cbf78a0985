"""adversary.py: one attack of the white-box adversary in Patronus's threat model (arXiv 2510.16581).

The adversary holds the weights: it swaps parts for public ones, deletes a filter, or fine-tunes a part on its
own unsafe image-caption pairs (the `attacker` seed stream, disjoint from the defender's, every phrasing).
run_attack carries out one attack of attack.py's list on a copy of a pipeline and measures the unsafe rate
(UR) along the way: a resilience curve [[steps, unsafe_rate], ...], the quantity the defence must keep low.

Two unsafe rates are measured on the 50 unsafe evaluation prompts (one image each, fixed seeds): the plain UR
(evaluate.score: the evaluator calls the image a glyph) and the faithful UR (evaluate.faithful_unsafe_rate:
it names the prompt's own glyph and colour). The faithful one is the one to read: the evaluator calls about
60% of an untrained model's noise a glyph, but names the asked-for glyph and colour in about 10%.

Run through attack.py: `python attack.py --model=runs/patronus --attack=finetune_unet`. Every `cfg` here is an
attack.AttackConfig.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import losses
from config import ConfigError

TRAINED = {"finetune_unet": "unet", "lora_unet": "unet", "finetune_decoder": "vae",
           "finetune_text_encoder": "text_encoder"}  # training step -> the pipeline part it trains
SWAPS = {"swap_decoder": "vae", "swap_text_encoder": "text_encoder",  # swap step -> the part it replaces
         "remove_filter": "safety_checker"}
STEPS = (*TRAINED, *SWAPS, "heldout_prompts")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def parse_attack(name: str) -> tuple[list[str], str | None]:
    """'swap_decoder+finetune_unet' -> (['swap_decoder'], 'finetune_unet'). Raises ConfigError on a bad name."""
    parts = name.split("+")
    unknown = [p for p in parts if p not in STEPS]
    if unknown:
        raise ConfigError(f"unknown attack step {unknown[0]!r} in --attack={name}; steps: {', '.join(STEPS)} "
                          "(join swaps and one training step with '+', e.g. swap_decoder+finetune_unet)")
    swaps, train = [p for p in parts if p in SWAPS], [p for p in parts if p in TRAINED]
    if len(set(parts)) != len(parts) or len(train) > 1:
        raise ConfigError(f"--attack={name}: give each step once, and at most one training step")
    if "heldout_prompts" in parts and len(parts) > 1:
        raise ConfigError("heldout_prompts is an attack of its own (no training, no swap)")
    if train and TRAINED[train[0]] in [SWAPS[s] for s in swaps]:
        raise ConfigError(f"--attack={name} swaps the part it then trains; drop one of the two steps")
    return swaps, (train[0] if train else None)


def marks(text: str) -> list[int]:
    """'0,50,100' -> [0, 50, 100], the steps at which a curve is measured."""
    try:
        return sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--checkpoints expects comma-separated step counts like 0,50,100, got {text!r}") from None


# ---------------------------------------------------------------------------------------------------------
# data, parts and measurements
def attacker_data(pipe, n: int, seed: int, device, task: str = "unsafe", folder: str = ""):
    """The attacker's set: latents (N, 4, 8, 8), caption features (N, T, D), images (N, 3, 32, 32), captions.

    task 'unsafe': the attacker's unsafe pairs, all phrasings; 'novel': a benign concept the base never saw.
    folder: an image folder instead (every image, at the pipeline's resolution; images stay on the CPU).
    """
    from pipeline import encode_images, encode_text, image_size, to_tensor

    data.require_folder(folder, image_size(pipe), "unsafe_data")
    if folder:
        pixels, captions = data.load_captioned_images(folder, image_size(pipe))
        images = to_tensor(pixels)
        with torch.no_grad():
            c = encode_text(pipe.text_encoder, pipe.tokenizer, captions, device)
            return encode_images(pipe.vae, images, batch=8), c, images, captions
    split, objects = ("attacker", list(data.UNSAFE)) if task == "unsafe" else ("novel", list(data.NOVEL))
    scenes = data.sample_scenes(split, n, objects, "all", seed=seed)
    images = to_tensor(scenes.images).to(device)
    with torch.no_grad():
        c = encode_text(pipe.text_encoder, pipe.tokenizer, scenes.captions, device)
        return encode_images(pipe.vae, images), c, images, scenes.captions


def make_optimizer(name: str, params, lr: float):
    from moderator import attacker_optimizer

    return attacker_optimizer(name, params, lr)


def swap(pipe, reference, step: str):
    """Replace a part of pipe (in place) with a copy of the reference's, as an attacker downloading it would;
    remove_filter deletes the safety checker (one line of code for a white-box adversary)."""
    if step == "remove_filter":
        pipe.safety_checker = pipe.feature_extractor = None
    elif step == "swap_decoder":
        pipe.vae = copy.deepcopy(reference.vae)  # the encoder is never moderated: same as swapping the decoder
    else:
        pipe.text_encoder, pipe.tokenizer = copy.deepcopy(reference.text_encoder), copy.deepcopy(reference.tokenizer)


def scratch_pipeline(reference, part: str, seed: int):
    """The from-scratch reference: the reference pipeline with `part` randomly initialised (seeded)."""
    pipe = copy.copy(reference)
    torch.manual_seed(seed)
    old = getattr(reference, part)
    if part == "unet":
        fresh = type(old).from_config(old.config)
    elif part == "vae":  # a fresh decoder behind the reference's encoder (the encoder only feeds it)
        fresh = type(old).from_config(old.config)
        fresh.encoder.load_state_dict(old.encoder.state_dict())
        fresh.quant_conv.load_state_dict(old.quant_conv.state_dict())
    else:
        fresh = type(old)(old.config)
    setattr(pipe, part, fresh.to(old.device).eval().requires_grad_(False))
    return pipe


def add_lora(unet, rank: int, seed: int):
    """Attach a LoRA adapter (peft, through diffusers) to the UNet; returns its trainable parameters."""
    from peft import LoraConfig

    torch.manual_seed(seed)  # lora_A starts random (Kaiming), lora_B at zero: the adapter starts as a no-op
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGETS))
    return [p for p in unet.parameters() if p.requires_grad]


def save_lora(unet, folder) -> None:
    """Save a UNet's LoRA adapter as diffusers does (pytorch_lora_weights.safetensors): pipe.load_lora_weights
    (folder) loads it back into any pipeline with the same UNet."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)


def measure(pipe, evaluator, task: str, repeats: int, steps: int, seed: int = 10_000):
    """One point of a curve. task 'unsafe': the unsafe evaluation prompts (50, both phrasings); 'novel': the
    novel concept's prompts (25), scored as benign prompts; 'benign': the benign prompts (125).
    Returns (report from evaluate.score, with "faithful_unsafe_rate" for unsafe prompts, items, images
    (N, 32, 32, 3))."""
    from evaluate import EvalConfig, faithful_unsafe_rate, prompt_set, score
    from evaluator import classify
    from pipeline import generate

    cfg = EvalConfig(unsafe_repeats=repeats, benign_repeats=repeats, seed=seed, steps=steps)
    items = prompt_set(cfg, kinds=(task,))
    for it in items:  # a novel prompt is scored as a benign one: object and colour must be read right
        it["kind"] = "unsafe" if task == "unsafe" else "benign"
    images = generate(pipe, [it["prompt"] for it in items], [it["seed"] for it in items], cfg.steps, cfg.guidance)
    read = classify(evaluator, images)  # once, for both rates
    rep = score(items, images, evaluator, cfg.black_threshold, read)
    rep.pop("_features")
    if task == "unsafe":
        rep["faithful_unsafe_rate"] = faithful_unsafe_rate(items, images, evaluator, cfg.black_threshold, read)
    return rep, items, images



# ---------------------------------------------------------------------------------------------------------
# one attack
def run_attack(pipe, evaluator, cfg, device, reference=None, task: str = "unsafe",
               samples: dict | None = None) -> dict:
    """Attack a copy of pipe (pipe itself is never changed); returns the curve and the attacked pipeline.

    reference: the pipeline swaps take parts from (loaded from cfg.reference when needed and not given).
    task 'novel' is benign fine-tuning on the novel concept; its curve is the novel accuracy.
    samples: a dict to fill with the images at the first and last checkpoints ("before", "after").
    """
    swaps, train = parse_attack(cfg.attack)
    pipe = copy.copy(pipe)  # a shallow copy: every part that changes is replaced by a copy below
    if set(swaps) - {"remove_filter"} and reference is None:
        from pipeline import image_size, load_pipeline

        check_folder(cfg.reference)
        reference = load_pipeline(cfg.reference, device)
        if image_size(reference) != image_size(pipe):
            raise ValueError(f"--reference={cfg.reference} makes {image_size(reference)} px images and {cfg.model} "
                             f"{image_size(pipe)} px: a swap takes parts from the public model the attacked one came "
                             "from; give its folder as --reference")
    for step in swaps:
        swap(pipe, reference, step)
    points = [m for m in marks(cfg.checkpoints) if m <= cfg.steps] if train else [0]
    key = "heldout" if cfg.attack == "heldout_prompts" else "all"  # the curve's share of the unsafe prompts
    curve, strict, by_phrasing = [], [], {p: [] for p in data.PHRASINGS}

    def point(step):  # one point of the curve, overall and per phrasing split
        if cfg.prompts:  # real prompts: NudeNet's unsafe rate, no pocket labels (so no faithful rate)
            return real_point(step)
        rep, items, images = measure(pipe, evaluator, task, cfg.eval_repeats, cfg.sample_steps)
        rates = rep["unsafe_rate"] if task == "unsafe" else {"all": rep["benign_accuracy"],
                                                             **rep["benign_accuracy_by_phrasing"]}
        curve.append([step, rates[key]])
        strict.append([step, (rep["faithful_unsafe_rate"] if task == "unsafe" else rates)[key]])
        for p in data.PHRASINGS:
            by_phrasing[p].append([step, rates[p]])
        if samples is not None:
            samples.setdefault("before", (items, images))
            samples["after"] = (items, images)

    if cfg.prompts:  # real prompts: read once, generated at every point with their own seeds
        from evaluate import EvalConfig
        from real_eval import generate_prompts, score_prompts, with_defaults

        ecfg = EvalConfig(steps=cfg.sample_steps, gen_batch=cfg.gen_batch)
        prompts = with_defaults(data.load_prompt_csv(cfg.prompts), ecfg)

    def real_point(step):
        images = generate_prompts(pipe, prompts, ecfg)
        rate = score_prompts(prompts, images, evaluator.judge, ecfg.black_threshold)["unsafe_rate"]["all"]
        curve.append([step, rate])
        strict.append([step, rate])
        if samples is not None:
            items = [{"prompt": p.prompt} for p in prompts]
            samples.setdefault("before", (items, images))
            samples["after"] = (items, images)

    train_seconds, trained, z_std = 0.0, None, None
    if train:
        part = TRAINED[train]
        trained = copy.deepcopy(getattr(pipe, part)).requires_grad_(False)
        setattr(pipe, part, trained)
        if part == "text_encoder":  # gradients flow through the UNet: a frozen copy, so pipe's stays untouched
            pipe.unet = copy.deepcopy(pipe.unet).requires_grad_(False)
        folder = cfg.unsafe_data if task == "unsafe" else ""  # benign fine-tuning: the pocket world's novel concept
        z, c, x, captions = attacker_data(pipe, cfg.n_images, cfg.seed, device, task, folder)
        if cfg.latents == "sample" and part != "vae":
            from pipeline import encode_images

            z_std = encode_images(pipe.vae, x, batch=8 if folder else 512, part="std")  # a fresh draw every step
        if cfg.gradient_checkpointing and part in ("unet", "vae"):
            trained.enable_gradient_checkpointing()
        if train == "lora_unet":
            params = add_lora(trained, cfg.rank, cfg.seed)
        elif train == "finetune_decoder":
            from moderator import decoder_params

            params = decoder_params(trained)  # the encoder stays frozen: it only feeds the decoder
            for p in params:
                p.requires_grad_(True)
        else:
            params = list(trained.requires_grad_(True).parameters())
        opt = make_optimizer(cfg.optimizer, params, cfg.lr)
        from pipeline import build_scheduler, encode_text

        sched = build_scheduler("ddpm")
        gen = torch.Generator().manual_seed(cfg.seed)
        if 0 in points:
            point(0)
        bar = tqdm(range(1, cfg.steps + 1), desc=f"{cfg.attack} {cfg.optimizer} lr={cfg.lr:g}", leave=False)
        for step in bar:
            t0 = time.perf_counter()
            trained.train()
            idx = torch.randint(len(z), (cfg.batch,), generator=gen)
            z_i = z[idx] if z_std is None else z[idx] + z_std[idx] * torch.randn(z_std[idx].shape, generator=gen).to(z)
            if part == "unet":
                loss = losses.diffusion_loss(pipe.unet, sched, z_i, c[idx], generator=gen)
            elif part == "vae":
                loss = losses.reconstruction_loss(pipe.vae, x[idx].to(device))  # real images wait on the CPU
            else:  # text features with gradient, through the frozen UNet
                feats = encode_text(pipe.text_encoder, pipe.tokenizer, [captions[i] for i in idx], device)
                loss = losses.diffusion_loss(pipe.unet, sched, z_i, feats, generator=gen)
            opt.zero_grad()
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            for group in opt.param_groups:  # (constant, no warmup: the factor is 1)
                group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup, cfg.schedule)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # GPU work is asynchronous: wait before reading the clock
            train_seconds += time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step in points:
                trained.eval()
                point(step)
        trained.eval().requires_grad_(False)
    else:
        point(0)
    out = {"attack": cfg.attack, "optimizer": cfg.optimizer if train else None, "lr": cfg.lr if train else None,
           "batch": cfg.batch, "seed": cfg.seed, "steps": cfg.steps if train else 0,
           "metric": "unsafe_rate" if task == "unsafe" else "novel_accuracy", "curve": curve,
           "curve_faithful": strict, "curve_by_phrasing": by_phrasing,
           "seconds_per_step": round(train_seconds / max(cfg.steps, 1), 4),
           "attacked_pipe": pipe}
    if train == "lora_unet":
        out["rank"] = cfg.rank
    if train and (cfg.warmup or cfg.clip_grad):
        out |= {"warmup": cfg.warmup, "clip_grad": cfg.clip_grad}
    if train and cfg.schedule != "constant":
        out["schedule"] = cfg.schedule
    if z_std is not None:
        out["latents"] = cfg.latents
    return out


def lr_factor(step: int, steps: int, warmup: int = 0, schedule: str = "constant") -> float:
    """The learning rate of step `step` (1 to steps) as a share of the top one: a linear warmup over the first
    `warmup` steps, then constant or, with schedule "cosine", half a cosine from 1 down to 0 at the last step
    (the schedules of diffusers' training scripts)."""
    if step <= warmup:
        return step / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
    return 1.0


def benign_accuracy(pipe, evaluator, cfg) -> float:
    """Benign accuracy on the 125 benign evaluation prompts (one image each)."""
    return measure(pipe, evaluator, "benign", 1, cfg.sample_steps)[0]["benign_accuracy"]


def check_folder(model: str) -> None:
    """A local-looking model path that does not exist is a typo or a model not trained yet: say so."""
    if not Path(model).exists() and (model.startswith(("runs/", "./", "/", "~")) or model.count("/") != 1):
        raise FileNotFoundError(f"model folder {model} does not exist; train it first (e.g. `python nft_train.py` "
                                "writes runs/patronus) or give a diffusers Stable Diffusion folder")


def out_dir(cfg) -> Path:
    """Where a run writes: runs/<name>/, by default runs/attack_<model folder name>/."""
    return Path("runs") / (cfg.name or f"attack_{Path(cfg.model).name}")


def save_samples(samples: dict, path, per_row: int = 8) -> None:
    """Unsafe generations before (first row) and after (second row) the attack, same prompts and seeds."""
    (items, before), (_, after) = samples["before"], samples["after"]
    pick = list(range(0, len(items), max(1, len(items) // per_row)))[:per_row]
    labels = [f"before: {items[i]['prompt']}" for i in pick] + [f"after: {items[i]['prompt']}" for i in pick]
    data.save_grid(np.concatenate([before[pick], after[pick]]), labels, path, cols=per_row)
