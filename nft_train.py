"""nft_train.py: Patronus end to end. The non-fine-tunable (NFT) UNet, then the internal moderator.

The NFT UNet is trained by a min-max loop (first-order MAML, as in SOPHON):
  1. suppression        black loss on unsafe `defense` prompts: the UNet denoises them toward the black image
  2. benign retention   diffusion loss on benign image-caption pairs + distillation toward the base UNet
  3. simulated fine-tuning (inner loop)  a copy of the UNet takes K steps of the attacker's own objective
                        (plain diffusion loss on unsafe pairs) with a sampled optimizer and learning rate;
                        the black loss at the adapted copy is what the defender minimises
  4. outer update       w_ret*(2) + w_sup*(1) + w_nft*(3); the gradient of (3), taken at the adapted copy,
                        is applied to the defender's own weights
(`--nft_loss=ascent` swaps step 3's black loss for SOPHON's suppression: the adapted copy's own denoising loss
on unsafe pairs is pushed up; experimental, measured in the README.)

`python nft_train.py` with no arguments is the full reproduction: it builds the pocket base model and the
evaluator if missing, trains the defence, evaluates base and defended models, attacks both with a short
fine-tuning attack, prints a table and writes runs/patronus/ (a diffusers folder with report.json).

Real Stable Diffusion: `--model=<SD v1.x folder> --unsafe_data=<folder> --benign_data=<folder>` (image
folders with a metadata.jsonl of captions); then evaluate with `evaluate.py --evaluator=nudenet`. Memory:
`--frozen_dtype` (the base UNet, VAE and text encoder in fp16 on cuda), `--gradient_checkpointing`,
`--grad_accum`, and `--simulated_copy=inplace` (step 3 without a second trainable UNet); see the README.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

import data
import losses
from config import DTYPES, ConfigError, cli, option, pick_device, pick_dtype, run_record, seed_everything, write_json
from pipeline import decode
from moderator import (MODERATORS, ModeratorConfig, apply_moderator, attacker_optimizer, check_holdout,
                       retention_prompts)
from perceptual import PERCEPTUALS

UNET_MODES = ("nft", "erase", "off")
NFT_LOSSES = ("black", "ascent")
# the simulated attacker: optimizers and learning rates sampled per outer step (over two decades, large included)
INNER_ATTACKERS = [("sgd", 1e-2), ("sgd", 1e-3), ("adam", 1e-3), ("adam", 1e-4), ("adamw", 1e-3), ("adamw", 1e-4)]


@dataclasses.dataclass
class NFTConfig:
    # what
    model: str = option("runs/base", "pipeline folder to defend (the pocket base is built if missing)")
    name: str = option("patronus", "outputs go to runs/<name>/")
    moderator: str = option("decoder", "internal moderator, trained after the UNet", MODERATORS)
    harden_decoder: bool = option(False, "harden the decoder moderator with simulated decoder fine-tuning")
    moderator_steps: int = option(600, "steps of the decoder moderator (900 in earlier versions)")
    unet: str = option("nft", "nft: min-max loop; erase: steps 1+2 only (an ESD-like baseline); off", UNET_MODES)
    seed: int = option(0, "one seed for data, sampling of simulated attackers and training")
    device: str = option("auto", "auto picks cuda, then mps, then cpu", ("auto", "cpu", "cuda", "mps"))
    # outer loop
    steps: int = option(1000, "outer steps (800 lost 2.8 more points of benign accuracy on the pinned base: README)")
    batch: int = option(16, "batch size of every term")
    lr: float = option(1e-4, "Adam learning rate of the defender")
    w_sup: float = option(1.0, "weight of suppression at the current weights (1)")
    w_ret: float = option(1.0, "weight of benign retention (2)")
    w_dst: float = option(4.0, "weight of distillation inside benign retention (2 in earlier versions: 1.2 points "
                          "of benign accuracy less on the pinned base; README)")
    w_uncond: float = option(1.0, "weight of distillation on the empty prompt (what classifier-free guidance subtracts)")
    w_nft: float = option(1.0, "weight of suppression after simulated fine-tuning (3)")
    nft_loss: str = option("black", "step 3's loss at the adapted weights: black (Patronus: unsafe prompts still "
                           "denoise toward black) or ascent (SOPHON: -log of the attacker's own diffusion loss on "
                           "unsafe pairs, pushed up; experimental)", NFT_LOSSES)
    unlearn_steps: int = option(0, "the first this many outer steps are steps 1+2 only (the authors' unlearn stage); "
                                "step 3 joins after them")
    # inner loop
    inner_steps: int = option(3, "K: simulated fine-tuning steps per outer step")
    nft_every: int = option(0, "step 3's black loss after every this many inner steps and the last, averaged (the "
                            "authors' code and TAR look along the trajectory); 0: after the last step only")
    inner_persist: int = option(0, "experimental: the simulated attacker's copy carries on across outer steps and "
                                "restarts from the defender's weights every this many, so step 3 looks up to this "
                                "x K attack steps deep at no extra cost; 0: a fresh copy every outer step (the paper)")
    n_images: int = option(2048, "defender's pocket images per kind (unsafe / benign); a folder gives all its own")
    checkpoint_every: int = option(100, "save a resumable checkpoint every this many outer steps (and at the end)")
    resume: bool = option(False, "continue from runs/<name>.checkpoint/ (e.g. after an interruption, or with more --steps)")
    # the reproduction's evaluation and attack
    evaluate: bool = option(True, "evaluate base and defended models and attack both")
    attack_steps: int = option(300, "steps of the default fine-tuning attack (Adam, lr 1e-4, batch 16)")
    eval_unsafe_repeats: int = option(4, "images per unsafe evaluation prompt")
    eval_benign_repeats: int = option(2, "images per benign evaluation prompt")
    sample_steps: int = option(20, "DDIM steps when sampling for evaluation")
    # real models (README: "Using real Stable Diffusion")
    unsafe_data: str = option("", "defender's unsafe image folder with metadata.jsonl ('' = the pocket world)")
    benign_data: str = option("", "defender's benign image folder with metadata.jsonl ('' = the pocket world)")
    benign_holdout: str = option("", "pocket benign shapes left out of the defender's benign data (UNet and "
                                 "moderator), comma-separated, e.g. ring: is retention kept for shapes it never saw?")
    keep_holdout_prompts: bool = option(False, "with --benign_holdout: leave out those shapes' images only; their "
                                        "prompts stay in the distillation and the moderator's benign generations "
                                        "(a broad prompt list, a narrow image set)")
    retain_prompts: str = option("", "a CSV of benign prompts ('prompt' column, e.g. COCO captions) for the "
                                 "distillation and the moderator's benign generations instead of the benign data's "
                                 "captions: retention needs prompts, not images (README)")
    perceptual: str = option("auto", "perceptual network of the moderator's zero loss (perceptual.py)", PERCEPTUALS)
    vgg19: str = option("", "torchvision-format VGG-19 state dict (.pth) for --perceptual=vgg19 (auto picks it)")
    moderator_batch: int = option(16, "latents per kind per step of the decoder moderator (4 for SD at 512 px)")
    moderator_generated: int = option(256, "generations per kind and model whose final latents the moderator learns")
    # memory
    frozen_dtype: str = option("auto", "dtype of the frozen base pipeline (distillation UNet, VAE and text encoder "
                               "that encode the data): auto = float16 on cuda, float32 elsewhere", DTYPES)
    gradient_checkpointing: bool = option(False, "recompute UNet (and moderator decoder) activations in backward")
    grad_accum: int = option(1, "micro-batches of --batch per outer update (effective batch = batch * grad_accum)")
    simulated_copy: str = option("deepcopy", "step 3: deepcopy adapts a copy of the UNet (two trainable UNets in "
                                 "memory); inplace backs the weights and gradients up on the CPU, adapts the UNet "
                                 "itself and restores it (same result, one UNet)", ("deepcopy", "inplace"))

    def __post_init__(self):
        if isinstance(self.grad_accum, int) and self.grad_accum < 1:
            raise ConfigError(f"--grad_accum must be at least 1, got {self.grad_accum}")
        if isinstance(self.nft_every, int) and self.nft_every < 0:
            raise ConfigError(f"--nft_every must be 0 (after the last inner step) or positive, got {self.nft_every}")
        if isinstance(self.inner_persist, int) and self.inner_persist < 0:
            raise ConfigError(f"--inner_persist must be 0 (off) or positive, got {self.inner_persist}")
        if self.inner_persist and self.simulated_copy != "deepcopy":
            raise ConfigError("--inner_persist keeps the attacker's copy between outer steps: it needs "
                              "--simulated_copy=deepcopy")
        check_holdout(self.benign_holdout, self.benign_data, self.keep_holdout_prompts, self.retain_prompts)


def defender_data(pipe, kind: str, n: int, seed: int, device, folder: str = "", holdout: str = ""):
    """The defender's data of one kind: latents (N, 4, h, w) and caption features (N, T, D), float32.

    folder '': n pocket scenes with `defense` phrasings (latents (N, 4, 8, 8)), less the `holdout` benign
    shapes; else every image of the folder at the pipeline's resolution, with its caption from metadata.jsonl.
    """
    from pipeline import encode_images, encode_text, image_size, to_tensor

    data.require_folder(folder, image_size(pipe), f"{kind}_data")
    if folder:
        pixels, captions = data.load_captioned_images(folder, image_size(pipe))
        with torch.no_grad():  # images stay on the CPU; the VAE takes them 8 at a time
            return encode_images(pipe.vae, to_tensor(pixels), batch=8), encode_text(pipe.text_encoder,
                                                                                    pipe.tokenizer, captions, device)
    scenes = data.sample_scenes("defender", n, data.defender_objects(kind, holdout), "defense", seed=seed)
    with torch.no_grad():
        z = encode_images(pipe.vae, to_tensor(scenes.images).to(device))
        c = encode_text(pipe.text_encoder, pipe.tokenizer, scenes.captions, device)
    return z, c


def simulated_fine_tuning(unet, sched, z_u, c_u, z_black, attacker, draw, cfg: NFTConfig, g,
                          carried: dict | None = None) -> torch.Tensor:
    """Step (3): K steps of the attacker's objective from the defender's weights, then the black loss (or, with
    --nft_loss=ascent, SOPHON's) at the adapted weights; its gradient is added to unet's .grad (first-order
    MAML). Returns that loss.

    deepcopy: the attacker adapts a copy, so a second trainable UNet and its gradients are in memory.
    inplace: the defender's weights and its gradient so far are set aside on the CPU (no autograd state), the
    attacker adapts `unet` itself, and the weights are copied back afterwards. The same computation in the
    same order, so the same result (tests/test_real_sd.py checks one outer step); one UNet in (GPU) memory.
    carried (--inner_persist): a non-empty dict holds the copy and optimizer of the attacker of earlier outer
    steps, which go on from where they were; an empty one is filled with a fresh copy.
    """
    name, lr = attacker
    if carried:  # --inner_persist: the attacker of earlier outer steps goes on from where it was
        adapted, inner = carried["unet"], carried["opt"]
    else:
        if cfg.simulated_copy == "deepcopy":
            adapted = copy.deepcopy(unet)
        else:
            saved = [(p.detach().to("cpu", copy=True), p.grad.to("cpu", copy=True)) for p in unet.parameters()]
            for p in unet.parameters():
                p.grad = None
            adapted = unet
        inner = attacker_optimizer(name, adapted.parameters(), lr)
        if carried is not None:  # an empty dict: this attacker is kept for the next outer steps
            carried.update(unet=adapted, opt=inner)
    # the defender wants the *adapted* model to still refuse: the black loss at the adapted weights (after the
    # last inner step, or along the way with --nft_every), its gradient (first-order MAML) set aside in
    # `gained` and added to the defender's own gradient at the end (zero_grad sets .grad to None, so holding the
    # tensor costs no copy)
    gained = [None for _ in adapted.parameters()]
    last = cfg.inner_steps
    checks = {k for k in range(1, last + 1) if k == last or (cfg.nft_every and k % cfg.nft_every == 0)}
    for k in range(1, last + 1):
        i = draw(len(z_u))
        inner.zero_grad()
        losses.diffusion_loss(adapted, sched, z_u[i], c_u[i], generator=g).backward()
        inner.step()
        if k not in checks:
            continue
        inner.zero_grad()
        for _ in range(cfg.grad_accum):
            j = draw(len(z_u))
            l_nft = (losses.black_loss(adapted, sched, z_black, c_u[j], generator=g) if cfg.nft_loss == "black"
                     else losses.ascent_loss(adapted, sched, z_u[j], c_u[j], generator=g))
            (cfg.w_nft * l_nft / (cfg.grad_accum * len(checks))).backward()
        with torch.no_grad():
            gained = [q.grad if acc is None else acc.add_(q.grad) for acc, q in zip(gained, adapted.parameters())]
    if cfg.simulated_copy == "deepcopy":
        for p, acc in zip(unet.parameters(), gained):
            p.grad += acc
    else:
        with torch.no_grad():
            for p, acc, (weight, grad) in zip(unet.parameters(), gained, saved):
                p.copy_(weight)  # back to the defender's weights, which the outer update applies to
                p.grad = grad.to(p.device) + acc
    return l_nft


def outer_losses(unet, unet0, sched, z_black, c_u, z_b, c_b, c_dst, c_empty, g):
    """Steps (1) and (2) at the current weights, in one call of the UNet (and one of the base UNet):
      (1) suppression   L_blk on unsafe prompts c_u: they denoise toward the black image's latent z_black
      (2) retention     L_ND on benign pairs (z_b, c_b), and L_dst toward the base UNet unet0 on benign latents
                        with prompts c_dst and with the empty prompt (sampling computes (1 + s) f(x, c) - s f(x, ""):
                        the unconditional half must not drift either)
    Each term is the mean over its own quarter of the batch, as four separate calls would give; one call of
    4B is cheaper than four of B (on 2 CPU cores about 1.3x). Returns l_sup, l_ret, (l_dst on c_dst, on "").
    """
    b = len(c_u)
    x0 = torch.cat([z_black.expand(b, *z_black.shape[1:]), z_b, z_b, z_b])  # (4B, 4, h, w)
    cond = torch.cat([c_u, c_b, c_dst, c_empty[:1].expand(b, -1, -1)])  # (4B, T, D)
    x_t, t, target = losses.noised(sched, x0, g)
    pred = unet(x_t, t, encoder_hidden_states=cond).sample.float().split(b)
    with torch.no_grad():  # unet0 may run in half precision (--frozen_dtype)
        ref = unet0(x_t[2 * b :].to(unet0.dtype), t[2 * b :],
                    encoder_hidden_states=cond[2 * b :].to(unet0.dtype)).sample.float().split(b)
    target = target.float().split(b)
    mse = torch.nn.functional.mse_loss
    return mse(pred[0], target[0]), mse(pred[1], target[1]), (mse(pred[2], ref[0]), mse(pred[3], ref[1]))


def train_unet(pipe, base, cfg: NFTConfig, device, ckpt: Path | None, start: int = 0, opt_state=None) -> list[float]:
    """The min-max loop. Trains pipe.unet in place from outer step `start`; checkpoints into ckpt (None: no
    checkpoints, for benchmark.py). Returns the seconds of each outer step (checkpointing not counted)."""
    from pipeline import build_scheduler, encode_images, encode_text, image_size, save_pipeline

    unet0 = base.unet.eval().requires_grad_(False)  # the base UNet (never the resumed one), for distillation
    sched = build_scheduler("ddpm")
    # Data is encoded with the *base* VAE encoder and text encoder (the moderators never change what the UNet
    # sees in training): the NFT UNet must refuse even if the attacker swaps the moderated parts back.
    z_u, c_u = defender_data(base, "unsafe", cfg.n_images, cfg.seed, device, cfg.unsafe_data)
    z_b, c_b = defender_data(base, "benign", cfg.n_images, cfg.seed, device, cfg.benign_data, cfg.benign_holdout)
    # distillation's prompts: the benign data's captions, or (--retain_prompts, --keep_holdout_prompts) prompts
    # of what it has no images of: distillation needs none
    c_d, prompts = None, retention_prompts(cfg, cfg.n_images, cfg.seed + 1)
    if prompts is not None:
        with torch.no_grad():
            c_d = encode_text(base.text_encoder, base.tokenizer, prompts, device)
    with torch.no_grad():  # the empty prompt's features, (B, T, D): the unconditional half of CFG
        c_empty = encode_text(base.text_encoder, base.tokenizer, [""], device).expand(cfg.batch, -1, -1)
    with torch.no_grad():  # z_black: the latent of the all-black image, (1, 4, 8, 8) in the pocket world
        size = image_size(base)
        z_black = encode_images(base.vae, -torch.ones(1, 3, size, size, device=device))
        black_mean = decode(base.vae, z_black).mean().item()
    if black_mean > 0.05:  # the black loss would teach the UNet to make whatever this latent decodes to
        print(f"warning: the VAE decodes the black image's latent to mean pixel {black_mean:.2f}, not black; "
              "suppression will not give black refusals")
    if device.type == "cuda":  # the peak memory of the min-max loop goes into nft_config.json
        torch.cuda.reset_peak_memory_stats(device)
    unet = pipe.unet.train().requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    bar = tqdm(range(start, cfg.steps), desc=f"UNet ({cfg.unet})", initial=start, total=cfg.steps)
    carried = None  # --inner_persist: the simulated attacker's copy and optimizer, kept between outer steps
    step_seconds = []  # time in outer steps only (not checkpointing), for the inner loop's cost
    for step in bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # per-step seeds make resume exact
        batch = lambda n: torch.randint(n, (cfg.batch,), generator=g)  # noqa: E731
        opt.zero_grad()
        for _ in range(cfg.grad_accum):  # micro-batches: their gradients add up before the one update
            iu, ib = batch(len(z_u)), batch(len(z_b))
            c_dst = c_b[ib] if c_d is None else c_d[batch(len(c_d))]  # on benign latents, whatever the prompt
            l_sup, l_ret, l_dst = outer_losses(unet, unet0, sched, z_black, c_u[iu], z_b[ib], c_b[ib], c_dst,
                                               c_empty, g)
            l_dst = l_dst[0] + cfg.w_uncond * l_dst[1]
            ((cfg.w_sup * l_sup + cfg.w_ret * (l_ret + cfg.w_dst * l_dst)) / cfg.grad_accum).backward()
        l_nft = torch.zeros(())
        if cfg.unet == "nft" and step >= cfg.unlearn_steps:
            # (3) simulated fine-tuning: the attacker's own objective, K steps, sampled optimizer/lr; the black
            # loss after it, its gradient added to ours (on a copy, or in place and restored: --simulated_copy)
            attacker = random.Random(cfg.seed * 1_000_003 + step).choice(INNER_ATTACKERS)
            if cfg.inner_persist:  # one attacker goes on for inner_persist outer steps, then a new one starts
                if carried is None or step % cfg.inner_persist == 0:
                    carried, episode = {}, attacker  # from the defender's current weights
                attacker = episode
            l_nft = simulated_fine_tuning(unet, sched, z_u, c_u, z_black, attacker, batch, cfg, g, carried)
        # (4) outer update
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # GPU work is asynchronous: wait for it before reading the clock
        step_seconds.append(time.perf_counter() - t0)
        bar.set_postfix(sup=f"{l_sup.item():.4f}", ret=f"{l_ret.item():.4f}", dst=f"{l_dst.item():.4f}",
                        nft=f"{l_nft.item():.4f}")
        if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            unet.eval()
            save_pipeline(pipe, ckpt, {"trainer_state.json": {"step": step + 1, "config": dataclasses.asdict(cfg)}})
            torch.save(opt.state_dict(), ckpt / "optimizer.pt")
            unet.train()
    unet.eval().requires_grad_(False)
    return step_seconds


def main(cfg: NFTConfig):
    """Train Patronus (NFT UNet, then the moderator), save the defended pipeline, evaluate and attack it."""
    from pipeline import load_pipeline, save_pipeline
    from toy_sd import ensure_base

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    out = Path("runs") / cfg.name
    ckpt = out.with_name(cfg.name + ".checkpoint")  # beside the output: the output folder is replaced atomically
    times = {}
    t0 = time.time()
    if cfg.model == "runs/base":
        ensure_base()
    times["base model"] = time.time() - t0
    base = load_pipeline(cfg.model, device, dtype=pick_dtype(cfg.frozen_dtype, device))  # frozen throughout
    start, opt_state, pipe = 0, None, None
    if cfg.resume and (ckpt / "trainer_state.json").is_file():
        saved = json.loads((ckpt / "trainer_state.json").read_text())
        if saved["config"]["unet"] != cfg.unet:
            raise ValueError(f"{ckpt} was written with --unet={saved['config']['unet']}; resume with the same options")
        start = saved["step"]
        pipe = load_pipeline(str(ckpt), device)
        opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        print(f"resuming from {ckpt} at outer step {start}")
    pipe = pipe or load_pipeline(cfg.model, device)
    # The UNet first, then the moderator: the moderator then learns the unsafe features of both the base UNet
    # (what an attacker who undoes the NFT gets back) and the defended UNet.
    t0 = time.time()
    step_seconds = train_unet(pipe, base, cfg, device, ckpt, start, opt_state) if cfg.unet != "off" else []
    seconds_per_step = sum(step_seconds) / len(step_seconds) if step_seconds else None
    unet_peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    times["unet"] = time.time() - t0
    t0 = time.time()
    mcfg = ModeratorConfig(model=cfg.model, moderator=cfg.moderator, harden=cfg.harden_decoder,
                           steps=cfg.moderator_steps, seed=cfg.seed, device=cfg.device, batch=cfg.moderator_batch,
                           n_generated=cfg.moderator_generated,
                           unsafe_data=cfg.unsafe_data, benign_data=cfg.benign_data,
                           benign_holdout=cfg.benign_holdout, keep_holdout_prompts=cfg.keep_holdout_prompts,
                           retain_prompts=cfg.retain_prompts, perceptual=cfg.perceptual,
                           vgg19=cfg.vgg19, frozen_dtype=cfg.frozen_dtype,
                           gradient_checkpointing=cfg.gradient_checkpointing)
    stats = apply_moderator(pipe, mcfg, device, sources=[base] if cfg.unet != "off" else [])
    times["moderator"] = time.time() - t0
    record = run_record(cfg) | {"moderator": stats, "unet_seconds_per_outer_step": seconds_per_step}
    if device.type == "cuda" and cfg.unet != "off":
        record["unet_cuda_peak_gb"] = round(unet_peak_bytes / 1e9, 2)
    save_pipeline(pipe, out, {"nft_config.json": record})
    print(f"defended pipeline saved to {out}")
    if cfg.evaluate and (cfg.unsafe_data or cfg.benign_data):  # the table needs the pocket evaluator's labels
        print(f"real data: evaluate with `python evaluate.py --model={out} --evaluator=nudenet --prompts=<I2P csv> "
              f"--reference={cfg.model}` and attack with `python attack.py --model={out} --unsafe_data=<folder> "
              "--prompts=<I2P csv>`")
    elif cfg.evaluate:
        if base.unet.dtype != torch.float32:  # evaluate and attack both models in float32, as trained
            base = load_pipeline(cfg.model, device)
        reproduce_table(base, pipe, cfg, out, times, device, seconds_per_step)


def reproduce_table(base, pipe, cfg: NFTConfig, out: Path, times: dict, device, seconds_per_step=None) -> dict:
    """Evaluate base and defended models, run the default attack on both, print the table, write report.json."""
    from attack import AttackConfig, measure, run_attack
    from evaluate import EvalConfig, ensure_evaluator, evaluate_pipeline, save_grid

    t0 = time.time()
    evaluator = ensure_evaluator(device=device)
    ecfg = EvalConfig(seed=cfg.seed, unsafe_repeats=cfg.eval_unsafe_repeats, benign_repeats=cfg.eval_benign_repeats,
                      steps=cfg.sample_steps)
    rep_base, items, img_base = evaluate_pipeline(base, evaluator, ecfg, None)
    rep_base["fidelity"] = {"mse_to_base": 0.0, "fd_to_base": 0.0}
    rep, _, img = evaluate_pipeline(pipe, evaluator, ecfg, img_base)
    save_grid(items, img, out / "grid.png")
    save_grid(items, img_base, out / "grid_base.png")
    # does the NFT UNet refuse by itself? the public (base) decoder in place of the moderated one, no training
    swapped = copy.copy(pipe)
    swapped.vae = base.vae
    rep["swap_decoder"], _, _ = measure(swapped, evaluator, "unsafe", cfg.eval_unsafe_repeats, cfg.sample_steps,
                                        seed=cfg.seed)
    times["evaluation"] = time.time() - t0
    t0 = time.time()
    acfg = AttackConfig(steps=cfg.attack_steps, checkpoints=f"0,{cfg.attack_steps // 3},{cfg.attack_steps}",
                        seed=cfg.seed, sample_steps=cfg.sample_steps)
    attacks = {}
    for label, p in (("base", base), ("defended", pipe)):
        res = run_attack(p, evaluator, acfg, device)
        attacked = res.pop("attacked_pipe")
        after, _, _ = evaluate_pipeline(attacked, evaluator, dataclasses.replace(ecfg, unsafe_repeats=1, benign_repeats=1))
        res["benign_accuracy_after"] = after["benign_accuracy"]
        res["unsafe_rate_after"] = after["unsafe_rate"]
        attacks[label] = res
    times["attack"] = time.time() - t0
    rep |= {"base": rep_base, "attack": attacks["defended"], "base_attack": attacks["base"],
            "seconds": {k: round(v, 1) for k, v in times.items()}, "run": run_record(cfg),
            # the price of the min-max loop: one outer step against one step of the attacker's plain fine-tuning
            "cost": {"unet_seconds_per_outer_step": seconds_per_step,
                     "attack_seconds_per_step": attacks["defended"]["seconds_per_step"]}}
    write_json(out / "report.json", rep)
    write_json(out / "attacks.json", [attacks["defended"]])
    print(table(rep))
    if cfg.benign_holdout:  # retention beyond the defender's benign set: held-out shapes against the others
        held = cfg.benign_holdout.split(",")
        for label, r in (("base", rep["base"]), ("Patronus", rep)):
            by = r["benign_accuracy_by_object"]
            print(f"{label}: BA on the held-out shapes ({cfg.benign_holdout}) "
                  f"{sum(by[o] for o in held) / len(held):.3f}, on the shapes the defender trained on "
                  f"{sum(v for o, v in by.items() if o not in held) / (len(by) - len(held)):.3f}")
    print(f"wrote {out}/report.json, attacks.json, grid.png, grid_base.png")
    return rep


def table(rep: dict) -> str:
    """The reproduction's table (Markdown), base model beside the defended one."""
    rows = ["| model | UR defense | UR heldout | BA | false refusals | refusals of a novel concept | "
            "UR, public decoder | UR after attack | BA after attack |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r, a in (("base", rep["base"], rep["base_attack"]), ("Patronus", rep, rep["attack"])):
        ur = r["unsafe_rate"]
        swap = r.get("swap_decoder", r)["unsafe_rate"]["all"]  # the base's own decoder is the public one
        rows.append(f"| {label} | {ur['defense']:.3f} | {ur['heldout']:.3f} | {r['benign_accuracy']:.3f} | "
                    f"{r['false_refusal_rate']:.3f} | {r['novel_refusal_rate']:.3f} | {swap:.3f} | "
                    f"{a['unsafe_rate_after']['all']:.3f} | {a['benign_accuracy_after']:.3f} |")
    rows.append("")
    rows.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in rep["seconds"].items()))
    cost = rep.get("cost", {})
    if cost.get("unet_seconds_per_outer_step") and cost.get("attack_seconds_per_step"):
        o, a = cost["unet_seconds_per_outer_step"], cost["attack_seconds_per_step"]
        rows.append(f"one outer step {o:.3f} s = {o / a:.1f}x one plain fine-tuning step ({a:.3f} s); "
                    f"the whole run {sum(rep['seconds'].values()):.0f} s = {sum(rep['seconds'].values()) / a:,.0f} "
                    "plain steps")
    return "\n".join(rows)


if __name__ == "__main__":
    cli(NFTConfig, main)
