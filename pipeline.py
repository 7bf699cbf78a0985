"""pipeline.py: the helpers every script uses on any Stable Diffusion v1.x folder, pocket or real.

Open a pipeline (`load_pipeline`), save it atomically (`save_pipeline`, `save_unet`), SD v1's noise schedule
(`build_scheduler`), generate images (`generate`), and the encoders the training losses work in:
`encode_images` (VAE posterior mean, scaled, the latents the UNet denoises), `decode` (back to pixels) and
`encode_text` (CLIP hidden states the UNet is conditioned on). Nothing here knows about the pocket world:
pocket/toy_sd.py builds and pretrains the pocket model with these same helpers.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from config import atomic


def load_pipeline(model: str, device=None, safety_checker: bool = False, dtype=None):
    """Open a Stable Diffusion v1.x pipeline: a diffusers folder (the pocket model or a real one) or a hub id.

    safety_checker: keep the pipeline's own image filter if it ships one (the external-filter baseline). Off by
    default: we measure what the weights do, as a white-box adversary who deletes the filter sees them.
    dtype: load every part in this dtype (config.pick_dtype; for frozen pipelines only), None keeps float32.
    Raises a clear error for a folder that is not a pipeline, and for a hub id while offline.
    """
    from diffusers import StableDiffusionPipeline

    path = Path(model)
    if path == Path("runs/base"):  # the default: the pinned pocket base, copied from assets/ on first use
        from pocket.pinned import ensure_base

        ensure_base(model)
    if path.exists():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} is not a Stable Diffusion pipeline folder: it has no model_index.json. "
                             "Give a folder written by save_pretrained (e.g. runs/base) or a SD v1.x folder.")
        parts = json.loads(index.read_text())
        missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if p not in parts]
        if missing:
            raise ValueError(f"{model}/model_index.json lacks {missing}: not a Stable Diffusion v1.x pipeline")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" or model.count("/") != 1:
        raise FileNotFoundError(f"{model} is not a folder, and hub ids only resolve online "
                                "(HF_HUB_OFFLINE=1 is set, or this is not an 'org/name' id). "
                                "Download the model first, then pass its folder.")
    strip = {} if safety_checker else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if dtype is not None:
        strip["dtype"] = dtype
    pipe = StableDiffusionPipeline.from_pretrained(model, **strip)
    vocab = pipe.text_encoder.config.vocab_size
    if len(pipe.tokenizer) != vocab:  # an empty or partial tokenizer load (e.g. a hub id offline) lands here
        raise ValueError(f"the tokenizer of {model} has {len(pipe.tokenizer)} tokens but its text encoder has "
                         f"{vocab} embeddings: the tokenizer did not load as saved")
    if (path / PATCH).is_dir():  # an external safety patch (the SafePatch baseline) runs with its UNet
        from diffusers import ControlNetModel

        attach_patch(pipe.unet, ControlNetModel.from_pretrained(str(path / PATCH)))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


PATCH = "safety_patch"  # the subfolder, and the UNet attribute, of an external safety patch


def attach_patch(unet, patch) -> None:
    """Run `patch`, a diffusers ControlNetModel (a trainable clone of the UNet's encoder with zero-initialised
    outputs), beside `unet` on every call: its outputs are added to the UNet's skip connections, as SafePatch
    (arXiv 2411.13636) adds its safety patch. The patch is kept out of the UNet's modules: the UNet's weights,
    its optimizer and its saved files stay those of a plain UNet, and the patch is one attribute to delete
    (attack.py's remove_patch). save_pipeline writes it to the folder's safety_patch/."""
    object.__setattr__(unet, PATCH, patch.requires_grad_(False).eval())
    if not getattr(unet, "_patch_hooked", False):
        unet.register_forward_pre_hook(_run_patch, with_kwargs=True)
        object.__setattr__(unet, "_patch_hooked", True)


def patch_of(unet):
    """The safety patch attached to unet, or None."""
    return unet.__dict__.get(PATCH)


def _run_patch(unet, args, kwargs):
    """The UNet's forward pre-hook: the patch's residuals go into the call (none when the patch was removed)."""
    patch = patch_of(unet)
    if patch is None:
        return None
    sample = args[0] if args else kwargs["sample"]
    t = args[1] if len(args) > 1 else kwargs["timestep"]
    cond = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
    patch.to(sample.device)
    down, mid = patch(sample, t, encoder_hidden_states=cond, return_dict=False,
                      controlnet_cond=sample.new_zeros(len(sample), patch.config.conditioning_channels,
                                                       *sample.shape[2:]))
    return args, {**kwargs, "down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def save_pipeline(pipe, folder, extra: dict | None = None) -> None:
    """Save a pipeline atomically (config.atomic): an interrupted run leaves the old folder or the new one.
    `extra` maps file names to JSON-able objects written inside the folder (config, report)."""
    with atomic(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if patch_of(pipe.unet) is not None:
            patch_of(pipe.unet).save_pretrained(tmp / PATCH, safe_serialization=True)
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1))


def save_unet(unet, folder) -> None:
    """Save a UNet as a diffusers model folder (config.json + safetensors), atomically."""
    with atomic(folder) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)


def with_unet(pipe, unet, seed: int = 0):
    """A shallow copy of pipe with another UNet: a UNet module, a UNet folder (config.json + safetensors), or
    "random" (initialised from pipe's UNet config, seeded). The other parts are shared, not copied."""
    from diffusers import UNet2DConditionModel

    if unet == "random":
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(pipe.unet.config)
    elif isinstance(unet, (str, Path)):
        if not Path(unet, "config.json").is_file():
            raise FileNotFoundError(f"{unet} is not a UNet folder (config.json + weights), nor 'random'")
        unet = UNet2DConditionModel.from_pretrained(str(unet))
    out = copy.copy(pipe)
    out.unet = unet.to(pipe.device).eval().requires_grad_(False)
    return out


def decoder_params(vae) -> list:
    """The VAE's decoding half, what a decoder moderator trains and a decoder attack fine-tunes: the decoder and
    post_quant_conv (the encoder only feeds it)."""
    return list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())


def image_size(pipe) -> int:
    """The side of the images a pipeline makes: 32 for the pocket model, 512 for SD v1.x."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def build_scheduler(kind: str = "ddim"):
    """SD v1's noise schedule; DDPM for training, DDIM for sampling."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
              clip_sample=False)
    if kind == "ddpm":
        return DDPMScheduler(**kw)
    return DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], steps: int = 20, guidance: float = 5.0,
             batch: int = 100, progress: bool = False, embeds: torch.Tensor | None = None) -> np.ndarray:
    """Images (N, H, W, 3) in [0, 1]; image i depends only on (prompts[i], seeds[i]), not on the batching.
    embeds: the conditioning itself (N, T, width), in place of the prompts' text features (the unconditional
    branch of classifier-free guidance still encodes the empty prompt)."""
    if len(prompts) != len(seeds) or (embeds is not None and len(embeds) != len(prompts)):
        raise ValueError("give one seed (and one conditioning, if any) per prompt")
    out = []
    for i in tqdm(range(0, len(prompts), batch), desc="generate", disable=not progress, leave=False):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[i : i + batch]]
        text = {"prompt": prompts[i : i + batch]} if embeds is None else {"prompt_embeds": embeds[i : i + batch]}
        out.append(pipe(**text, generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                        output_type="np").images)
    return np.concatenate(out).astype(np.float32)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) in [-1, 1], the range SD's VAE works in."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()


def encode_text(text_encoder, tok, captions: list[str], device, batch: int = 512) -> torch.Tensor:
    """CLIP hidden states the UNet is conditioned on: (N, T, width), as the SD pipeline computes them
    (T = MAX_TOKENS for the pocket model, 77 for SD). Float32 whatever the encoder's dtype."""
    out = []
    for i in range(0, len(captions), batch):
        ids = tok(captions[i : i + batch], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids.to(device)
        out.append(text_encoder(ids)[0].float())
    return torch.cat(out)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch: int = 512, part: str = "mean") -> torch.Tensor:
    """Scaled VAE latents (N, 4, H/f, W/f) of images (N, 3, H, W) in [-1, 1]: the posterior's mean (or, with
    part="std", its standard deviation, in the same scaled units), float32.

    (N, 4, 8, 8) from (N, 3, 32, 32) in the pocket world. images may stay on the CPU: each batch is moved to
    the VAE's device and dtype (use a small batch, e.g. 8, at 512x512)."""
    sf = vae.config.scaling_factor
    return torch.cat([getattr(vae.encode(images[i : i + batch].to(vae.device, vae.dtype)).latent_dist, part).float()
                      * sf for i in range(0, len(images), batch)])


def decode(vae, z):
    """Pipeline-style decoding of SD-scaled latents (B, 4, h, w) into images (B, 3, H, W) in [0, 1], float32."""
    x = vae.decode((z / vae.config.scaling_factor).to(vae.dtype)).sample.float()
    return (x / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def vae_round_trip(vae, images: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode images (N, H, W, 3) in [0, 1]; the reconstructions, same layout."""
    x = to_tensor(images).to(vae.device, vae.dtype)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
    return (rec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def black_latent(pipe) -> torch.Tensor:
    """The scaled latent of the all-black image, (1, 4, h, w): the target of Patronus' black loss. Warns when
    the VAE does not decode it back to black (the black loss would then teach whatever it decodes to)."""
    size = image_size(pipe)
    z = encode_images(pipe.vae, -torch.ones(1, 3, size, size, device=pipe.vae.device))
    if (mean := decode(pipe.vae, z).mean().item()) > 0.05:
        print(f"warning: the VAE decodes the black image's latent to mean pixel {mean:.2f}, not black; "
              "suppression will not give black refusals")
    return z
