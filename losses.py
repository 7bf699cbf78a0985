"""losses.py: every loss of Patronus, each a small pure function (the symbols are this project's notation).

Images are (B, 3, H, W); "decoded" images are in [0, 1] (what the pipeline shows), latents are SD-scaled
(B, 4, h, w), text features are CLIP hidden states (B, T, D). The denoising losses take a UNet's prediction
and its target (`denoise` makes both: one forward pass at random timesteps), so that nft_train.py can run
several of them as one batched UNet call. Nothing here holds state or trains anything.

    diffusion_loss          L_ND   = E_{t,eps} || target - f_theta(x_t, t, c) ||^2       (SD's own objective)
    black_loss              L_blk  = L_ND with x0 = z_black, the latent of the all-black image (unsafe prompts)
    distillation_loss       L_dst  = E || f_theta(x_t, t, c) - f_theta0(x_t, t, c) ||^2 (benign prompts)
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


def denoise(unet, scheduler, x0, cond, generator=None):
    """One forward pass of SD's training: x0 (B, 4, h, w) noised at random timesteps, the UNet's prediction
    for text features cond (B, T, D). Returns (prediction, target), both (B, 4, h, w)."""
    x_t, timesteps, target = noised(scheduler, x0, generator)
    return unet(x_t, timesteps, encoder_hidden_states=cond).sample, target


def diffusion_loss(pred, target, weight=None):
    """L_ND, the denoising loss: the UNet's prediction against the noise (or v) it should predict.

    The attacker fine-tunes on it, and benign retention keeps it on benign pairs. weight: per-sample weights
    (B,), e.g. Min-SNR's when pretraining the pocket model; None is the plain mean."""
    if weight is None:
        return F.mse_loss(pred.float(), target.float())
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
    return (weight * per_sample).mean()


def black_loss(pred, target):
    """L_blk (Patronus' black loss): L_ND with the all-black image's latent z_black as the clean image.

    pred: the UNet's prediction for unsafe prompts at x_t noised from z_black; target: that noise. Minimised,
    it teaches the UNet to denoise unsafe prompts toward black: the model refuses. Suppression (step 1)
    minimises it at the defender's weights, step 3 at the simulated attacker's adapted weights."""
    return F.mse_loss(pred.float(), target.float())


def distillation_loss(pred, reference):
    """L_dst: the defended UNet's prediction matches the frozen base UNet's (reference, computed without
    gradient at the same noisy input and prompt; cast to float32 when the base UNet runs in half precision)."""
    return F.mse_loss(pred.float(), reference.float())


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
