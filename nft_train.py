"""nft_train.py: Patronus end to end: the non-fine-tunable (NFT) UNet, then the internal moderator.

The NFT UNet is trained by a min-max loop (first-order MAML, as in SOPHON and the authors' code), train_unet:
  1. suppression        unsafe `defense` prompts denoise toward the black image (losses.black_loss)
  2. benign retention   diffusion loss on benign pairs (losses.diffusion_loss) + distillation toward the base
                        UNet (losses.distillation_loss) on open prompts (open_prompts: benign captions with a
                        word swapped for a token that names nothing), half of them mixed with an unsafe prompt's
                        features at a small weight (mixed_prompts: where the base draws no glyph, the UNet must
                        not refuse); 1 and 2 in one batched UNet call (outer_losses)
  3. simulated fine-tuning  (from outer step --unlearn_steps on) a copy of the UNet takes K steps of the attacker's
                        objective, optimizer and lr drawn from attack.SIMULATED_ATTACKERS; the black loss at the
                        adapted copy is minimised. On a share of the outer steps (--conditioning_share) the
                        attacker adapts the conditioning instead, an offset on the unsafe prompts' features
                        (attack.py's `embedding` attack), and the black loss is taken at the offset prompts
  4. outer update       w_sup*(1) + w_ret*(2) + w_nft*(3), the gradient of (3) taken at the adapted copy
With --unlearn_steps equal to --steps the loop runs steps 1+2 only (erasure without simulated fine-tuning).
Then the moderator (moderator.py) is trained on the defended pipeline. `python nft_train.py` is the full
reproduction on the pinned pocket base: defence, evaluation, a short attack on base and defended, one table.
Real SD: `--model=<SD v1.x folder> --data.unsafe=<folder> --data.benign=<folder>`; memory savers `--memory.*`.
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
from attack import SIMULATED_ATTACKERS, AttackConfig, make_optimizer, measure, run_attack
from config import (ConfigError, MemoryConfig, RunConfig, atomic, cli, flatten, group, option, pick_device, pick_dtype,
                    run_record, seed_everything, wait_for, write_json)
from data import DataConfig
from evaluate import EvalConfig, ensure_evaluator, evaluate_pipeline, save_grid
from moderator import ModeratorConfig, apply_moderator, retention_prompts
from pipeline import black_latent, build_scheduler, encode_text, load_pipeline, save_pipeline


@dataclasses.dataclass
class CheckConfig:
    """The reproduction's evaluation of base and defended models, and the attack on both."""
    attack_steps: int = option(300, "steps of the default fine-tuning attack (Adam, lr 1e-4, batch 16)")
    unsafe_repeats: int = option(4, "images per unsafe evaluation prompt")
    benign_repeats: int = option(2, "images per benign evaluation prompt")
    sample_steps: int = option(20, "DDIM steps when sampling for evaluation")


@dataclasses.dataclass
class NFTConfig(RunConfig):
    model: str = option("runs/base", "pipeline folder to defend (runs/base: the pinned base, from assets/)")
    name: str = option("patronus", "outputs go to runs/<name>/")
    steps: int = option(1000, "outer steps of the UNet's min-max loop (0: the UNet stays as it is)")
    unlearn_steps: int = option(500, "the first this many outer steps run steps 1+2 only (an unlearn stage before "
                                "simulated fine-tuning; --unlearn_steps=--steps: erasure alone)")
    batch: int = option(16, "batch size of every term")
    lr: float = option(1e-4, "Adam learning rate of the defender")
    w_sup: float = option(1.0, "weight of suppression at the current weights (1)")
    w_ret: float = option(1.0, "weight of benign retention (2)")
    w_dst: float = option(4.0, "weight of distillation inside benign retention (2)")
    w_uncond: float = option(1.0, "weight of distillation on the empty prompt (classifier-free guidance uses it)")
    w_nft: float = option(1.0, "weight of suppression after simulated fine-tuning (3)")
    inner_steps: int = option(3, "K: simulated fine-tuning steps per outer step (3)")
    conditioning_share: float = option(0.0, "share of step 3's outer steps whose simulated attacker learns an offset "
                                       "on the unsafe prompts' features instead of fine-tuning (0: weights only; "
                                       "0.25 slows the offset attack behind the public decoder at no measured "
                                       "benign cost: RESULTS.md, section 4.10)")
    open_share: float = option(1.0, "share of distillation's prompts that are benign captions with one word swapped "
                               "for a fresh token, an embedding that names nothing (open_prompts; 0: the "
                               "benign captions themselves)")
    mix_share: float = option(0.5, "share of distillation's prompts that are mixed with an unsafe prompt, mostly "
                              "benign (mixed_prompts; 0: none; RESULTS.md, section 7.6)")
    n_images: int = option(2048, "defender's pocket images per kind (unsafe / benign); a folder gives all its own")
    checkpoint_every: int = option(100, "save a resumable checkpoint every this many outer steps (and at the end)")
    resume: bool = option(False, "continue from runs/<name>.checkpoint/ (after an interruption or with more --steps)")
    evaluate: bool = option(True, "evaluate base and defended models and attack both (--check.*)")
    check: CheckConfig = group(CheckConfig, "the reproduction's evaluation and attack")
    moderator: ModeratorConfig = group(ModeratorConfig, "the internal moderator, trained after the UNet")
    data: DataConfig = group(DataConfig, "the defender's data (the pocket world, or image folders)")
    memory: MemoryConfig = group(MemoryConfig, "memory savers for real models on one GPU")

    def __post_init__(self):
        for key in ("inner_steps", "batch", "lr"):
            if isinstance(value := getattr(self, key), (int, float)) and value <= 0:
                raise ConfigError(f"--{key} must be positive, got {value}")
        if isinstance(self.steps, int) and self.steps < 0:
            raise ConfigError(f"--steps must be 0 (leave the UNet as it is) or more, got {self.steps}")
        if isinstance(self.open_share, (int, float)) and not 0 <= self.open_share <= 1:
            raise ConfigError(f"--open_share is a share of distillation's prompts, 0 to 1, got {self.open_share}")
        if isinstance(self.mix_share, (int, float)) and not 0 <= self.mix_share <= 1:
            raise ConfigError(f"--mix_share is a share of distillation's prompts, 0 to 1, got {self.mix_share}")
        if isinstance(self.conditioning_share, (int, float)) and not 0 <= self.conditioning_share <= 1:
            raise ConfigError(f"--conditioning_share is a share of the outer steps, 0 to 1, "
                              f"got {self.conditioning_share}")


def set_aside(unet) -> list:
    """--memory.simulated_copy=inplace: weights and gradient copied to the CPU, .grad cleared for the attacker."""
    saved = [(p.detach().to("cpu", copy=True), p.grad.to("cpu", copy=True)) for p in unet.parameters()]
    for p in unet.parameters():
        p.grad = None
    return saved


def simulated_fine_tuning(unet, sched, z_u, c_u, z_black, attacker, draw, cfg: NFTConfig, g) -> torch.Tensor:
    """Step (3): K steps of the attacker's objective from the defender's weights, then the black loss (unsafe
    prompts still denoise to black) at the adapted weights. First-order MAML: that loss's gradient, taken at
    the adapted weights, is added to unet's .grad. Returns the loss.

    deepcopy: the attacker adapts a copy (a second trainable UNet in memory). inplace: the defender's weights
    are set aside on the CPU, the attacker adapts `unet` itself, and the weights are put back afterwards: the
    same computation in the same order (tests/test_real_sd.py checks it), one UNet in memory.
    """
    saved = set_aside(unet) if cfg.memory.simulated_copy == "inplace" else None
    adapted = unet if saved else copy.deepcopy(unet)
    name, lr = attacker
    inner = make_optimizer(name, adapted.parameters(), lr)
    for _ in range(cfg.inner_steps):  # the attacker: plain diffusion loss on unsafe pairs
        i = draw(len(z_u))
        inner.zero_grad()
        losses.diffusion_loss(*losses.denoise(adapted, sched, z_u[i], c_u[i], g)).backward()
        inner.step()
    inner.zero_grad()
    for _ in range(cfg.memory.grad_accum):  # the defender: unsafe prompts still denoise to black when adapted
        j = draw(len(z_u))
        x0 = z_black.expand(len(j), *z_black.shape[1:])  # (B, 4, h, w)
        l_nft = losses.black_loss(*losses.denoise(adapted, sched, x0, c_u[j], g))
        (cfg.w_nft * l_nft / cfg.memory.grad_accum).backward()
    gained = [q.grad for q in adapted.parameters()]  # zero_grad sets .grad to None: holding them costs no copy
    with torch.no_grad():
        for k, (p, acc) in enumerate(zip(unet.parameters(), gained)):
            if saved is None:
                p.grad += acc
            else:  # back to the defender's weights, which the outer update applies to
                weight, grad = saved[k]
                p.copy_(weight)
                p.grad = grad.to(p.device) + acc
    return l_nft


class ConditioningAttacker:
    """Step (3)'s other attacker, attack.py's `embedding` attack simulated: an offset (1, T, D) added to the unsafe
    prompts' features, trained with the attacker's objective (the diffusion loss on unsafe pairs through the
    UNet, whose weights it leaves alone). It is one running attacker: the offset and its Adam state carry over
    from one outer step to the next, so that by the end of the loop it has taken a few hundred steps, as the
    real attack does (a fresh offset after K steps would be a much weaker attacker)."""

    def __init__(self, shape, device, state: dict | None = None):
        name, lr = SIMULATED_ATTACKERS["conditioning"]
        self.offset = torch.zeros(shape, device=device, requires_grad=True)
        self.opt = make_optimizer(name, [self.offset], lr)
        if state is not None:  # resumed: the attacker as the checkpoint left it
            with torch.no_grad():
                self.offset.copy_(state["offset"])
            self.opt.load_state_dict(state["optimizer"])

    def state_dict(self) -> dict:
        return {"offset": self.offset.detach().clone(), "optimizer": self.opt.state_dict()}

    def attack(self, unet, sched, z_u, c_u, z_black, draw, cfg: NFTConfig, g) -> torch.Tensor:
        """K steps of the offset, then the black loss at the offset prompts: its gradient goes to unet's .grad
        (the offset's own gradient is taken apart, so the UNet's .grad holds the defender's terms only)."""
        for _ in range(cfg.inner_steps):
            i = draw(len(z_u))
            loss = losses.diffusion_loss(*losses.denoise(unet, sched, z_u[i], c_u[i] + self.offset, g))
            (self.offset.grad,) = torch.autograd.grad(loss, [self.offset])
            self.opt.step()
        for _ in range(cfg.memory.grad_accum):
            j = draw(len(z_u))
            x0 = z_black.expand(len(j), *z_black.shape[1:])
            l_nft = losses.black_loss(*losses.denoise(unet, sched, x0, c_u[j] + self.offset.detach(), g))
            (cfg.w_nft * l_nft / cfg.memory.grad_accum).backward()
        return l_nft


@torch.no_grad()
def open_prompts(pipe, captions: list[str], n: int, seed: int, device, fresh: int = 512) -> torch.Tensor:
    """Features of n prompts that keep the refusal narrow: benign captions with one word each (drawn at random)
    swapped for one of `fresh` new tokens. A new token's embedding is drawn from a Gaussian fit of the token
    table, at 0.5 to 2 times its spread: a word the text encoder may never have seen, which names no concept.
    Distilled toward the base, they teach the UNet that what it does not know is drawn as the base draws it,
    not refused. (N, T, D)."""
    tok, enc = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder)
    names = [f"<open_{i}>" for i in range(fresh)]
    if tok.add_tokens(names) != fresh:
        raise ValueError("the tokenizer already has tokens named <open_i>")
    enc.resize_token_embeddings(len(tok), mean_resizing=False)
    table = enc.get_input_embeddings().weight
    g = torch.Generator().manual_seed(seed)
    old = table[:-fresh].float()
    scale = 0.5 + 1.5 * torch.rand(fresh, 1, generator=g)
    table[-fresh:] = (old.mean(0).cpu() + scale * old.std(0).cpu() * torch.randn(fresh, old.shape[1], generator=g)
                      ).to(table.device, table.dtype)
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = captions[i % len(captions)].split()
        words[rng.randrange(len(words))] = names[rng.randrange(fresh)]
        texts.append(" ".join(words))
    return encode_text(enc, tok, texts, device)


MIX_MAX = 0.35  # below w = 0.4 the base draws no glyph (python -m lab.mixes; RESULTS.md, section 7.6)


def mixed_prompts(c_benign, c_unsafe, g) -> torch.Tensor:
    """Features between benign and unsafe prompts, nearer the benign: (1 - w) c_benign + w c_unsafe, w drawn
    from [0, MIX_MAX) per prompt. The base draws no glyph there, mostly the benign prompt's shape; distilled
    toward it, they keep the refusal from spreading out of the unsafe prompts toward what lies between them and
    benign content, without naming any concept beyond the defender's own data. (B, T, D)."""
    w = MIX_MAX * torch.rand(len(c_benign), 1, 1, generator=g).to(c_benign)
    return (1 - w) * c_benign + w * c_unsafe


def outer_losses(unet, unet0, sched, z_black, c_u, z_b, c_b, c_dst, c_empty, g):
    """Steps (1) and (2) at the current weights, in one call of the UNet and one of the base UNet unet0:
    (1) L_blk: unsafe prompts c_u denoise toward z_black; (2) L_ND on benign pairs (z_b, c_b), and L_dst toward
    unet0 on benign latents with prompts c_dst and with the empty prompt (guidance subtracts f(x, ""): it must
    not drift either). Each term is the mean over its own quarter of the batch, as four calls would give.
    Returns l_sup, l_ret, (l_dst on c_dst, on "")."""
    b = len(c_u)
    x0 = torch.cat([z_black.expand(b, *z_black.shape[1:]), z_b, z_b, z_b])  # (4B, 4, h, w)
    cond = torch.cat([c_u, c_b, c_dst, c_empty[:1].expand(b, -1, -1)])  # (4B, T, D)
    x_t, t, target = losses.noised(sched, x0, g)
    pred = unet(x_t, t, encoder_hidden_states=cond).sample.split(b)  # 4 x (B, 4, h, w)
    with torch.no_grad():  # unet0 may run in half precision (--memory.frozen_dtype)
        ref = unet0(x_t[2 * b :].to(unet0.dtype), t[2 * b :],
                    encoder_hidden_states=cond[2 * b :].to(unet0.dtype)).sample.split(b)
    target = target.split(b)
    return (losses.black_loss(pred[0], target[0]), losses.diffusion_loss(pred[1], target[1]),
            (losses.distillation_loss(pred[2], ref[0]), losses.distillation_loss(pred[3], ref[1])))


def train_unet(pipe, base, cfg: NFTConfig, device, ckpt: Path | None, start: int = 0, opt_state=None,
               attacker_state=None) -> list[float]:
    """The min-max loop. Trains pipe.unet in place from outer step `start`; checkpoints into ckpt (None: no
    checkpoints, for lab/benchmark.py). Returns the seconds of each outer step (checkpointing not counted)."""
    unet0 = base.unet.eval().requires_grad_(False)  # the base UNet (never the resumed one), for distillation
    sched = build_scheduler("ddpm")
    # encoded by the *base* VAE and text encoder: the UNet must refuse even with the public parts swapped back
    z_u, c_u = data.defender_data(base, "unsafe", cfg.n_images, cfg.seed, device, cfg.data.unsafe)
    z_b, c_b = data.defender_data(base, "benign", cfg.n_images, cfg.seed, device, cfg.data.benign, cfg.data.holdout)
    # distillation's prompts: the benign captions, or prompts it has no images of (--data.retain_prompts, ...)
    c_d, prompts = None, retention_prompts(cfg.data, cfg.n_images, cfg.seed + 1)
    # --moderator.kind=text|both: the text moderator maps unsafe prompts to zero features, which must refuse too
    c_sup = torch.cat([c_u, torch.zeros_like(c_u[: len(c_u) // 4])]) if cfg.moderator.kind in ("text", "both") else c_u
    with torch.no_grad():
        if prompts is not None:
            c_d = encode_text(base.text_encoder, base.tokenizer, prompts, device)
        c_open = None
        if cfg.open_share:
            captions = prompts or (data.folder_captions(cfg.data.benign) if cfg.data.benign else data.sample_scenes(
                "defender", cfg.n_images, data.defender_objects("benign", cfg.data.holdout), "defense",
                seed=cfg.seed + 2).captions)
            c_open = open_prompts(base, captions, cfg.n_images, cfg.seed + 2, device)
        # the empty prompt's features, (B, T, D): the unconditional half of classifier-free guidance
        c_empty = encode_text(base.text_encoder, base.tokenizer, [""], device).expand(cfg.batch, -1, -1)
    z_black = black_latent(base)  # the target of the black loss, (1, 4, 8, 8) in the pocket world
    if device.type == "cuda":  # the peak memory of the min-max loop goes into nft_config.json
        torch.cuda.reset_peak_memory_stats(device)
    unet = pipe.unet.train().requires_grad_(True)
    if cfg.memory.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    conditioning = ConditioningAttacker(c_u[:1].shape, device, attacker_state) if cfg.conditioning_share else None
    step_seconds = []  # outer steps only (not checkpointing): the loop's cost
    for step in (bar := tqdm(range(start, cfg.steps), desc="UNet (min-max)", initial=start, total=cfg.steps)):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # per-step seeds make resume exact
        batch = lambda n: torch.randint(n, (cfg.batch,), generator=g)  # noqa: E731
        opt.zero_grad()
        for _ in range(cfg.memory.grad_accum):  # micro-batches: their gradients add up before the one update
            iu, ib = batch(len(c_sup)), batch(len(z_b))
            c_dst = c_b[ib] if c_d is None else c_d[batch(len(c_d))]  # on benign latents, whatever the prompt
            if c_open is not None:  # a share of them: captions with a word that names nothing (--open_share)
                swap = (torch.rand(cfg.batch, generator=g) < cfg.open_share).to(device)[:, None, None]
                c_dst = torch.where(swap, c_open[batch(len(c_open))], c_dst)
            if cfg.mix_share:  # a share: mostly benign, part unsafe (--mix_share)
                mixed = (torch.rand(cfg.batch, generator=g) < cfg.mix_share).to(device)[:, None, None]
                c_dst = torch.where(mixed, mixed_prompts(c_dst, c_u[batch(len(c_u))], g), c_dst)
            l_sup, l_ret, l_dst = outer_losses(unet, unet0, sched, z_black, c_sup[iu], z_b[ib], c_b[ib], c_dst,
                                               c_empty, g)  # (1) suppression and (2) retention
            l_dst = l_dst[0] + cfg.w_uncond * l_dst[1]
            ((cfg.w_sup * l_sup + cfg.w_ret * (l_ret + cfg.w_dst * l_dst)) / cfg.memory.grad_accum).backward()
        l_nft = torch.zeros(())
        if step >= cfg.unlearn_steps:
            # (3) simulated fine-tuning with a sampled optimizer and learning rate, or the conditioning attacker
            draw = random.Random(cfg.seed * 1_000_003 + step)
            if conditioning is not None and draw.random() < cfg.conditioning_share:
                l_nft = conditioning.attack(unet, sched, z_u, c_u, z_black, batch, cfg, g)
            else:
                l_nft = simulated_fine_tuning(unet, sched, z_u, c_u, z_black, draw.choice(SIMULATED_ATTACKERS["unet"]),
                                              batch, cfg, g)
        # (4) outer update
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        wait_for(device)
        step_seconds.append(time.perf_counter() - t0)
        bar.set_postfix(sup=f"{l_sup.item():.4f}", ret=f"{l_ret.item():.4f}", dst=f"{l_dst.item():.4f}",
                        nft=f"{l_nft.item():.4f}")
        if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            unet.eval()
            with atomic(ckpt) as tmp:  # weights, optimizer and step together, or the previous checkpoint
                pipe.save_pretrained(tmp, safe_serialization=True)
                torch.save(opt.state_dict(), tmp / "optimizer.pt")
                if conditioning is not None:
                    torch.save(conditioning.state_dict(), tmp / "conditioning_attacker.pt")
                write_json(tmp / "trainer_state.json", {"step": step + 1, "config": dataclasses.asdict(cfg)})
            unet.train()
    unet.eval().requires_grad_(False)
    return step_seconds


# options that change nothing the checkpoint's weights depend on: --resume may change them. The checkpoint holds
# the UNet's loop and the moderator is trained after it, so one UNet can be given several moderators
# (--moderator.kind stays: text or both add zero features to the UNet's suppression)
RESUMABLE = {"steps", "resume", "evaluate", "device", "checkpoint_every", "name", "check"}
# options whose default changed after they were added: a config recorded without one ran with this value
BEFORE = {"mix_share": 0.0}


def resumable(key: str) -> bool:
    return key.split(".")[0] in RESUMABLE or key.startswith("moderator.") and key != "moderator.kind"


def main(cfg: NFTConfig):
    """Train Patronus (NFT UNet, then the moderator), save the defended pipeline, evaluate and attack it."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    out = Path("runs") / cfg.name
    ckpt = out.with_name(cfg.name + ".checkpoint")  # beside the output: the output folder is replaced atomically
    times = {}
    base = load_pipeline(cfg.model, device, dtype=pick_dtype(cfg.memory.frozen_dtype, device))  # frozen throughout
    start, opt_state, attacker_state, pipe = 0, None, None, None
    if cfg.resume and (ckpt / "trainer_state.json").is_file():
        saved = json.loads((ckpt / "trainer_state.json").read_text())
        before, now = BEFORE | flatten(saved["config"]), flatten(dataclasses.asdict(cfg))
        differ = [k for k in now if not resumable(k) and before.get(k, now[k]) != now[k]]
        if differ:
            raise ValueError(f"{ckpt} was written with --{differ[0]}={before[differ[0]]}, not {now[differ[0]]}; "
                             "resume with the same options (only --steps, --name, the evaluation and --moderator.* "
                             "other than its kind may change)")
        start = saved["step"]
        pipe = load_pipeline(str(ckpt), device)
        opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        if (ckpt / "conditioning_attacker.pt").is_file():
            attacker_state = torch.load(ckpt / "conditioning_attacker.pt", weights_only=True)
        print(f"resuming from {ckpt} at outer step {start}")
    pipe = pipe or load_pipeline(cfg.model, device)
    # The UNet first, then the moderator: the moderator then learns the unsafe features of both the base UNet
    # (what an attacker who undoes the NFT gets back) and the defended UNet.
    t0 = time.time()
    step_seconds = train_unet(pipe, base, cfg, device, ckpt, start, opt_state, attacker_state) if cfg.steps else []
    seconds_per_step = sum(step_seconds) / len(step_seconds) if step_seconds else None
    peak = {"unet_cuda_peak_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2)} if step_seconds and \
        device.type == "cuda" else {}
    times["unet"] = time.time() - t0
    t0 = time.time()
    stats = apply_moderator(pipe, cfg, device, sources=[base] if cfg.steps else [])
    times["moderator"] = time.time() - t0
    record = run_record(cfg) | {"moderator": stats, "unet_seconds_per_outer_step": seconds_per_step} | peak
    save_pipeline(pipe, out, {"nft_config.json": record})
    print(f"defended pipeline saved to {out}")
    if cfg.evaluate and not cfg.data.pocket:  # the table needs the pocket evaluator's labels
        print(f"real data: evaluate with `python evaluate.py --model={out} --evaluator=nudenet --prompts=<I2P csv> "
              f"--reference={cfg.model}`; attack with `python attack.py --model={out} --unsafe_data=<dir> --prompts=<csv>`")
    elif cfg.evaluate:
        if base.unet.dtype != torch.float32:  # evaluate and attack both models in float32, as trained
            base = load_pipeline(cfg.model, device)
        reproduce_table(base, pipe, cfg, out, times, device, seconds_per_step)


def reproduce_table(base, pipe, cfg: NFTConfig, out: Path, times: dict, device, seconds_per_step=None) -> dict:
    """Evaluate base and defended models, run the default attack on both, print the table, write report.json."""
    t0 = time.time()
    evaluator = ensure_evaluator(device=device)
    ecfg = EvalConfig(seed=cfg.seed, unsafe_repeats=cfg.check.unsafe_repeats,
                      benign_repeats=cfg.check.benign_repeats, steps=cfg.check.sample_steps)
    rep_base, items, img_base = evaluate_pipeline(base, evaluator, ecfg, None)
    rep_base["fidelity"] = {"mse_to_base": 0.0, "fd_to_base": 0.0}
    rep, _, img = evaluate_pipeline(pipe, evaluator, ecfg, img_base)
    save_grid(items, img, out / "grid.png")
    save_grid(items, img_base, out / "grid_base.png")
    swapped = copy.copy(pipe)  # does the NFT UNet refuse by itself? the public decoder swapped in, no training
    swapped.vae = base.vae
    rep["swap_decoder"] = measure(swapped, evaluator, "unsafe", cfg.check.unsafe_repeats, cfg.check.sample_steps,
                                  seed=cfg.seed)[0]
    times["evaluation"] = time.time() - t0
    t0 = time.time()
    n = cfg.check.attack_steps
    acfg = AttackConfig(steps=n, checkpoints=f"0,{n // 3},{n}", seed=cfg.seed, sample_steps=cfg.check.sample_steps)
    attacks = {}
    for label, p in (("base", base), ("defended", pipe)):
        res = run_attack(p, evaluator, acfg, device)
        attacked = res.pop("attacked_pipe")
        after, _, _ = evaluate_pipeline(attacked, evaluator, dataclasses.replace(ecfg, unsafe_repeats=1,
                                                                                 benign_repeats=1))
        res["benign_accuracy_after"] = after["benign_accuracy"]
        res["unsafe_rate_after"] = after["unsafe_rate"]
        res["n_after"] = {"unsafe": after["n_unsafe"]["all"], "benign": after["n_benign"]}
        attacks[label] = res
    times["attack"] = time.time() - t0
    rep |= {"base": rep_base, "attack": attacks["defended"], "base_attack": attacks["base"],
            "seconds": {k: round(v, 1) for k, v in times.items()}, "run": run_record(cfg),
            # the price of the min-max loop: one outer step against one step of the attacker's plain fine-tuning
            "cost": {"unet_seconds_per_outer_step": seconds_per_step,
                     "attack_seconds_per_step": attacks["defended"]["seconds_per_step"]}}
    write_json(out / "report.json", rep)
    write_json(out / "attacks.json", [attacks["defended"]])
    print(table(rep, cfg.data.holdout))
    print(f"wrote {out}/report.json, attacks.json, grid.png, grid_base.png")
    return rep


def table(rep: dict, holdout: str = "") -> str:
    """The table `python nft_train.py` prints (Markdown): the base beside the defended model, before and after
    the default attack, the wall time and the cost in plain fine-tuning steps; with a benign holdout (e.g.
    "ring"), BA on the held-out shapes against the shapes the defender trained on."""
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
    held = [o for o in holdout.split(",") if o]
    for label, r in (("base", rep["base"]), ("Patronus", rep)) if held else ():
        by = r["benign_accuracy_by_object"]
        kept = [v for o, v in by.items() if o not in held]
        rows.append(f"{label}: BA on the held-out shapes ({holdout}) {sum(by[o] for o in held) / len(held):.3f}, "
                    f"on the shapes the defender trained on {sum(kept) / len(kept):.3f}")
    return "\n".join(rows)


if __name__ == "__main__":
    cli(NFTConfig, main)
