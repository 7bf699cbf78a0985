"""Each loss of losses.py against a value computed by hand on small tensors."""
from types import SimpleNamespace

import pytest
import torch

import losses
from lab import baselines
from pipeline import build_scheduler


class ConstUNet:
    """A stand-in UNet whose prediction is a fixed tensor (so the loss can be computed by hand)."""

    def __init__(self, value):
        self.value = value

    def __call__(self, x_t, t, encoder_hidden_states=None):
        return SimpleNamespace(sample=self.value.expand_as(x_t))


def test_diffusion_loss_epsilon_is_mse_to_noise():
    sched = build_scheduler("ddpm")
    x0 = torch.ones(2, 4, 2, 2)
    noise = torch.tensor([1.0, -1.0, 2.0, 0.0]).repeat(2, 4, 1).view(2, 4, 2, 2)
    _, _, target = losses.noised(sched, x0, noise=noise, timesteps=torch.tensor([10, 500]))
    loss = losses.diffusion_loss(torch.zeros(2, 4, 2, 2), target)
    assert loss.item() == pytest.approx((1 + 1 + 4 + 0) / 4)  # mean(noise^2) with a zero prediction


def test_noised_v_prediction_target():
    sched = build_scheduler("ddpm")
    sched.register_to_config(prediction_type="v_prediction")
    x0, noise, t = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 1.0), torch.tensor([999])
    a = sched.alphas_cumprod[999]
    v = a.sqrt() * 1.0 - (1 - a).sqrt() * 2.0  # v = sqrt(a) eps - sqrt(1-a) x0
    _, _, target = losses.noised(sched, x0, noise=noise, timesteps=t)
    assert target.item() == pytest.approx(v.item(), rel=1e-5)
    assert losses.diffusion_loss(torch.zeros(1, 1, 1, 1), target).item() == pytest.approx(v.item() ** 2, rel=1e-5)


def test_per_sample_weights_by_hand():
    pred, target = torch.zeros(2, 1, 1, 2), torch.tensor([1.0, 3.0, 2.0, 2.0]).view(2, 1, 1, 2)
    # per-sample squared errors: (1 + 9) / 2 = 5 and (4 + 4) / 2 = 4; weights 0.5 and 2
    assert losses.diffusion_loss(pred, target, torch.tensor([0.5, 2.0])).item() == pytest.approx((2.5 + 8) / 2)


def test_noised_rejects_unknown_prediction_type():
    sched = build_scheduler("ddpm")
    sched.register_to_config(prediction_type="sample_magic")
    with pytest.raises(ValueError, match="prediction_type"):
        losses.noised(sched, torch.zeros(1, 1, 1, 1))


def test_denoise_noises_with_the_generator_and_predicts():
    sched = build_scheduler("ddpm")
    z_black = torch.full((3, 4, 2, 2), -3.0)
    pred, target = losses.denoise(ConstUNet(torch.full((1,), 0.5)), sched, z_black, torch.zeros(3, 5, 8),
                                  torch.Generator().manual_seed(0))
    noise = torch.randn((3, 4, 2, 2), generator=torch.Generator().manual_seed(0))  # drawn first, then t
    torch.testing.assert_close(target, noise)
    assert losses.black_loss(pred, target).item() == pytest.approx(((noise - 0.5) ** 2).mean().item(), rel=1e-6)


def test_distillation_loss():
    pred, reference = torch.full((2, 4, 2, 2), 3.0), torch.full((2, 4, 2, 2), 1.0, dtype=torch.float16)
    assert losses.distillation_loss(pred, reference).item() == pytest.approx(4.0)  # (3 - 1)^2, in float32


class CondUNet:
    """A stand-in UNet that predicts the (scalar) condition it is given: 2.0 for the concept, 0.5 for ""."""

    def __call__(self, x_t, t, encoder_hidden_states=None):
        return SimpleNamespace(sample=encoder_hidden_states.mean().expand_as(x_t))


def test_esd_loss_is_negative_guidance_by_hand():
    sched = build_scheduler("ddpm")
    x0, c, empty = torch.zeros(2, 4, 2, 2), torch.full((2, 3, 4), 2.0), torch.full((2, 3, 4), 0.5)
    # target = f0(x, "") - eta (f0(x, c) - f0(x, "")) = 0.5 - 1.5 * (2 - 0.5) = -1.75; the student predicts 2.0
    loss = baselines.esd_loss(CondUNet(), CondUNet(), sched, x0, c, empty, eta=1.5)
    assert loss.item() == pytest.approx((2.0 + 1.75) ** 2)
    student = ConstUNet(torch.full((1,), -1.75))  # already erased: nothing to learn
    assert baselines.esd_loss(student, CondUNet(), sched, x0, c, empty, eta=1.5).item() == pytest.approx(0.0)


def test_zero_loss_pixel_and_perceptual_terms():
    decoded = torch.full((2, 3, 2, 2), 0.5)
    assert losses.zero_loss(decoded, None, pixel_weight=2.0).item() == pytest.approx(2 * 0.25)
    # perceptual P(x) = 2x + 1: P(0) = 1, so the term is mean((2*0.5 + 1 - 1)^2) = 1
    perceptual = lambda x: 2 * x + 1  # noqa: E731
    assert losses.zero_loss(decoded, perceptual, pixel_weight=1.0).item() == pytest.approx(0.25 + 1.0)
    assert losses.zero_loss(torch.zeros(1, 3, 2, 2), perceptual).item() == 0.0  # black is the minimum


def test_calibration_and_feature_losses():
    a, b = torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    assert losses.calibration_loss(a, b).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert losses.feature_calibration_loss(a, b).item() == pytest.approx(1.25)
    assert losses.feature_zero_loss(torch.tensor([[1.0, 2.0], [3.0, 4.0]])).item() == pytest.approx(7.5)


def test_reconstruction_loss_uses_the_posterior_mean():
    vae = SimpleNamespace(
        encode=lambda x: SimpleNamespace(latent_dist=SimpleNamespace(mean=x * 0.5)),
        decode=lambda z: SimpleNamespace(sample=z + 1.0),
    )
    x = torch.tensor([[[[2.0]]]])  # rec = 0.5 * 2 + 1 = 2: perfect
    assert losses.reconstruction_loss(vae, x).item() == 0.0
    x = torch.tensor([[[[4.0]]]])  # rec = 3, error 1
    assert losses.reconstruction_loss(vae, x).item() == pytest.approx(1.0)


def test_outer_losses_in_one_call_equal_each_term_alone():
    """nft_train.outer_losses batches (1) and (2) into one UNet call; each term must equal its own call."""
    import nft_train
    import pipeline
    from pocket import toy_sd

    torch.manual_seed(0)
    unet, unet0 = toy_sd.build_unet(32, 16).eval(), toy_sd.build_unet(32, 16).eval()
    sched = pipeline.build_scheduler("ddpm")
    b = 3
    z_black, z_b = torch.randn(1, 4, 8, 8), torch.randn(b, 4, 8, 8)
    c_u, c_b, c_dst = (torch.randn(b, 16, 32) for _ in range(3))
    c_empty = torch.randn(1, 16, 32).expand(b, -1, -1)  # one prompt, "", for every row
    l_sup, l_ret, (l_dst, l_unc) = nft_train.outer_losses(unet, unet0, sched, z_black, c_u, z_b, c_b, c_dst, c_empty,
                                                          torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)  # the same draws: noise (4B) first, then timesteps (4B)
    noise = torch.randn(4 * b, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (4 * b,), generator=g)
    part = lambda i: dict(noise=noise[i * b : (i + 1) * b], timesteps=t[i * b : (i + 1) * b])  # noqa: E731
    x0 = torch.cat([z_black.expand(b, -1, -1, -1), z_b])
    for got, x, cond, i in ((l_sup, x0[:b], c_u, 0), (l_ret, z_b, c_b, 1)):  # each alone: same numbers
        x_t, t_i, target = losses.noised(sched, x, **part(i))
        pred = unet(x_t, t_i, encoder_hidden_states=cond).sample
        torch.testing.assert_close(got, losses.diffusion_loss(pred, target))
    for i, (got, cond) in enumerate([(l_dst, c_dst), (l_unc, c_empty)], start=2):
        x_t = sched.add_noise(z_b, part(i)["noise"], part(i)["timesteps"])
        ref = unet0(x_t, part(i)["timesteps"], encoder_hidden_states=cond).sample
        want = torch.nn.functional.mse_loss(unet(x_t, part(i)["timesteps"], encoder_hidden_states=cond).sample, ref)
        torch.testing.assert_close(got, want)
