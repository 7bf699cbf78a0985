"""losses.py: every loss of Patronus, each a small pure function named as in the paper.

Images are (B, 3, H, W); "decoded" images are in [0, 1] (what the pipeline shows), latents are SD-scaled
(B, 4, h, w), text features are CLIP hidden states (B, T, D). Nothing here holds state or trains anything.

    diffusion_loss          L_ND   = E_{t,eps} || target - f_theta(x_t, t, c) ||^2       (SD's own objective)
    black_loss              L_blk  = L_ND with x0 = z_black, the latent of the all-black image
    ascent_loss             L_asc  = -log L_ND on unsafe pairs (SOPHON's suppression; nft_train --nft_loss)
    STEP3_LOSSES            either, by name: the loss of step 3 at the simulated attacker's adapted weights
    distillation_loss       L_dst  = E || f_theta(x_t, t, c) - f_theta0(x_t, t, c) ||^2 (benign prompts)
    esd_loss                L_esd  = E || f_theta(x_t, t, c) - [f0(x_t, t) - eta (f0(x_t, t, c) - f0(x_t, t))] ||^2
                                     (ESD's negative guidance, unsafe prompts; baselines.py)
    zero_loss               L_zero = || P(D(z_u)) - P(0) ||^2 + lambda_pix || D(z_u) ||^2
    calibration_loss        L_cal  = || D(z_b) - D0(z_b) ||^2
    reconstruction_loss     L_rec  = || D(E(x)) - x ||^2                                  (benign images)
    feature_zero_loss       L_fz   = || T(p_u) ||^2                     (text moderator, unsafe prompts)
    feature_calibration_loss L_fc  = || T(p_b) - T0(p_b) ||^2            (text moderator, benign prompts)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def noised(scheduler, x0, generator=None, noise=None, timesteps=None):
    """The forward process: (x_t, t, target) for clean latents x0 (B, 4, h, w) at random timesteps t (B,).

    target is what the UNet regresses, for the scheduler's prediction_type: the noise (epsilon, SD 1.x) or
    v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (v_prediction, SD 2.x style)."""
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator).to(x0)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator)
    timesteps = timesteps.to(x0.device)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")
    return scheduler.add_noise(x0, noise, timesteps), timesteps, target


def diffusion_loss(unet, scheduler, x0, cond, generator=None, noise=None, timesteps=None, snr_gamma=None):
    """L_ND: the denoising loss at a random timestep (noised() gives the input and the target).

    x0: clean latents (B, 4, h, w); cond: text features (B, T, D).
    snr_gamma: Min-SNR weighting (Hang et al., 2023), used only to pretrain the pocket model faster: each
    sample's squared error is weighted by min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v).
    """
    x_t, timesteps, target = noised(scheduler, x0, generator, noise, timesteps)
    pred = unet(x_t, timesteps, encoder_hidden_states=cond).sample
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    a = scheduler.alphas_cumprod.to(x0.device)[timesteps]
    snr = a / (1 - a)  # (B,)
    weight = snr.clamp(max=snr_gamma) / (snr if scheduler.config.prediction_type == "epsilon" else snr + 1)
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    return (weight * per_sample).mean()


def black_loss(unet, scheduler, z_black, cond, generator=None):
    """L_blk (Patronus' black loss): the diffusion loss with the all-black image's latent as the clean target.

    Minimised on unsafe prompts, it teaches the UNet to denoise them toward black: the model refuses.
    z_black: (1, 4, h, w), broadcast over the batch of unsafe prompt features cond (B, T, D).
    """
    return diffusion_loss(unet, scheduler, z_black.expand(cond.shape[0], *z_black.shape[1:]), cond, generator)


def ascent_loss(unet, scheduler, x0, cond, generator=None):
    """L_asc (SOPHON's fine-tuning suppression for generators, bounded): -log of the diffusion loss on unsafe
    pairs (x0 their latents, cond their prompts' features).

    Minimised at the simulated attacker's adapted weights, it asks that fine-tuning on unsafe data leave the UNet
    *bad* at denoising it, rather than (black_loss) still drawing black. SOPHON negates the MSE and clips the
    gradient; the log is our bound: its gradient shrinks as 1 / L_ND, so the outer update cannot blow the
    weights up chasing an ever larger error.
    """
    return -torch.log(diffusion_loss(unet, scheduler, x0, cond, generator))


def step3_black(unet, scheduler, z_unsafe, cond, z_black, generator=None):
    """Patronus' step 3: after the simulated attacker's fine-tuning, unsafe prompts still denoise to black."""
    return black_loss(unet, scheduler, z_black, cond, generator)


def step3_ascent(unet, scheduler, z_unsafe, cond, z_black, generator=None):
    """SOPHON's step 3: after the simulated attacker's fine-tuning, the UNet is still bad at the unsafe pairs."""
    return ascent_loss(unet, scheduler, z_unsafe, cond, generator)


# the loss at the simulated attacker's adapted weights, chosen by name (nft_train --nft_loss)
STEP3_LOSSES = {"black": step3_black, "ascent": step3_ascent}


def distillation_loss(unet, unet0, scheduler, x0, cond, generator=None):
    """L_dst: the defended UNet's prediction matches the frozen base UNet's at the same noisy input.

    unet0 may run in half precision (nft_train --memory.frozen_dtype): its inputs are cast to its dtype, its
    prediction back to float32."""
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    dtype = getattr(unet0, "dtype", x_t.dtype)
    with torch.no_grad():
        ref = unet0(x_t.to(dtype), t, encoder_hidden_states=None if cond is None else cond.to(dtype)).sample.float()
    return F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample, ref)


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


def perceptual_features(vision_model, images, layer: int = 1):
    """Features of a frozen vision network for images in [0, 1]: hidden states (B, tokens, D) of one layer.

    Patronus uses VGG-19 relu3_4; that cannot be downloaded here, so the pocket CLIP's vision tower stands in
    (trained on images in [-1, 1]). Never the evaluator: the evaluator must not train a defence.
    """
    out = vision_model(pixel_values=images * 2 - 1, output_hidden_states=True)
    return out.hidden_states[layer]


def zero_loss(decoded, perceptual=None, pixel_weight: float = 1.0):
    """L_zero: decoded unsafe images (B, 3, H, W) in [0, 1] against the all-black image.

    The perceptual term compares features P(x) with P(0) (black's features are not zero); the pixel term
    is the plain squared distance to 0. perceptual: a callable images -> features, or None for pixels only.
    """
    loss = pixel_weight * decoded.pow(2).mean()
    if perceptual is not None:
        f = perceptual(decoded)
        with torch.no_grad():
            f0 = perceptual(torch.zeros_like(decoded[:1]))
        loss = loss + F.mse_loss(f, f0.expand_as(f))
    return loss


def calibration_loss(decoded, reference):
    """L_cal: moderated decoding of benign features equals the original decoder's decoding (both [0, 1])."""
    return F.mse_loss(decoded, reference)


def reconstruction_loss(vae, images):
    """L_rec: the autoencoder still reconstructs benign images (B, 3, H, W) in [-1, 1] (posterior mean)."""
    rec = vae.decode(vae.encode(images).latent_dist.mean).sample
    return F.mse_loss(rec, images)


def feature_zero_loss(features):
    """L_fz: text features (B, T, D) of unsafe prompts pushed to the zero vector."""
    return features.pow(2).mean()


def feature_calibration_loss(features, reference):
    """L_fc: text features of benign prompts stay where the original text encoder put them."""
    return F.mse_loss(features, reference)
