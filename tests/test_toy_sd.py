"""The pocket Stable Diffusion: tokenizer, build/save/reload, generation determinism, pretraining steps."""
import json
import shutil

import numpy as np
import pytest
import torch

import data
from pocket import pinned
import pipeline
from pocket import toy_sd
from config import ConfigError


def test_tokenizer_covers_the_world(tmp_path):
    tok = toy_sd.write_tokenizer(tmp_path / "tok", data.vocabulary())
    assert len(tok) == len(json.loads((tmp_path / "tok" / "vocab.json").read_text()))
    assert 512 < len(tok) < 2000  # 512 byte symbols + world words, not a silently empty tokenizer
    for word in data.vocabulary():  # every world word is one token
        ids = tok(word).input_ids
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
    # an unknown word still tokenizes (byte fallback) instead of failing
    assert len(tok("zebra").input_ids) > 3
    reloaded = type(tok).from_pretrained(tmp_path / "tok")
    assert reloaded("a red skull").input_ids == tok("a red skull").input_ids


def test_pipeline_saves_and_reloads_bit_exactly(tiny_world):
    from diffusers import StableDiffusionPipeline

    pipe = pipeline.load_pipeline(str(tiny_world / "runs" / "base"))
    assert isinstance(pipe, StableDiffusionPipeline)
    prompts, seeds = ["a red circle", "a blue skull"], [3, 4]
    a = pipeline.generate(pipe, prompts, seeds, steps=4)
    assert a.shape == (2, data.SIZE, data.SIZE, 3) and a.min() >= 0 and a.max() <= 1
    # same seed, same image (bit-exact); image i does not depend on the batching (up to float round-off)
    np.testing.assert_array_equal(a, pipeline.generate(pipe, prompts, seeds, steps=4))
    b = pipeline.generate(pipe, prompts[:1], seeds[:1], steps=4)
    np.testing.assert_allclose(a[:1], b, atol=1e-4)
    # plain diffusers loads the folder and generates the same pixels
    plain = StableDiffusionPipeline.from_pretrained(tiny_world / "runs" / "base", safety_checker=None,
                                                    feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    c = pipeline.generate(plain, prompts, seeds, steps=4)
    np.testing.assert_array_equal(a, c)


def test_save_pipeline_is_atomic_and_replaces(tiny_world, tmp_path):
    pipe = pipeline.load_pipeline(str(tiny_world / "runs" / "base"))
    out = tmp_path / "copy"
    pipeline.save_pipeline(pipe, out, {"note.json": {"a": 1}})
    pipeline.save_pipeline(pipe, out, {"note.json": {"a": 2}})  # overwrite in place
    assert json.loads((out / "note.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no .tmp / .old left behind
    saved = pipeline.load_pipeline(str(out)).unet.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in pipe.unet.state_dict().items())


@pytest.mark.slow  # trains or generates for more than a few seconds
def test_pretrain_runs_and_changes_weights(tmp_path, capsys):
    cfg = toy_sd.PretrainConfig(out=str(tmp_path / "set"), n_images=64, clip_steps=2, clip_batch=16, vae_steps=2,
                                vae_batch=8, unet_steps=3, unet_batch=8, black_steps=2, unet_width=32,
                                evaluator_steps=2, evaluator_batch=16, evaluator_pool=32)
    torch.manual_seed(0)
    fresh = toy_sd.build_unet(cfg.width, cfg.unet_width).state_dict()
    pipe = toy_sd.pretrain(cfg)
    trained = pipe.unet.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    for part in pinned.PARTS:
        assert (tmp_path / "set" / part).is_dir(), part
    assert (tmp_path / "set" / "base" / "model_index.json").is_file()
    assert (tmp_path / "set" / "clip" / "config.json").is_file()
    record = json.loads((tmp_path / "set" / "base" / "pretrain.json").read_text())
    assert record["config"]["unet_steps"] == 3 and "versions" in record
    assert pipe.unet.config.block_out_channels[0] == 32  # --unet_width reaches the saved UNet
    # 2 VAE steps cannot reconstruct anything: the checks must say so (and record the numbers)
    assert record["vae"]["reconstruction_mse"] > toy_sd.VAE_MSE_WARN
    assert record["vae"]["posterior_std_over_mean"] > toy_sd.POSTERIOR_WARN
    out = capsys.readouterr().out
    assert "warning: the VAE reconstructs" in out and "warning: the VAE's posterior is wide" in out
    # the never-learned UNet: same architecture as the base UNet, other weights
    never = pipeline.with_unet(pipeline.load_pipeline(str(tmp_path / "set" / "base")),
                               tmp_path / "set" / "never_learned")
    plain = lambda c: {k: v for k, v in json.loads(json.dumps(dict(c))).items() if not k.startswith("_")}  # noqa: E731
    assert plain(never.unet.config) == plain(pipe.unet.config)
    assert any(not torch.equal(v, never.unet.state_dict()[k]) for k, v in trained.items())
    # the manifest lists every file with its hash, and how it was built
    manifest = pinned.verify_assets(tmp_path / "set")
    assert "base/unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert manifest["seed"] == 0 and manifest["cpu"] and manifest["command"].startswith("python -m pocket.toy_sd")


def test_unet_width_must_suit_the_group_norm():
    with pytest.raises(ConfigError, match="multiple of 16"):
        toy_sd.PretrainConfig(unet_width=40)


def test_vae_check_is_small_for_a_perfect_autoencoder():
    """An exact, deterministic autoencoder: reconstruction error 0, posterior width std/|mean| tiny."""
    class Identity:  # encode/decode as the identity, with a posterior 1000x narrower than its mean
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, x):
            mean = x + 2.0  # away from zero, so |mean| is never tiny
            return type("Out", (), {"latent_dist": type("D", (), {"mean": mean, "std": mean.abs() / 1000})})

        def decode(self, z):
            return type("Out", (), {"sample": z - 2.0})

    check = toy_sd.vae_check(Identity(), seed=0, n=8)
    assert check["reconstruction_mse"] == 0.0
    assert check["posterior_std_over_mean"] == pytest.approx(0.001, rel=1e-3)


def test_load_errors(tmp_path, monkeypatch):
    (tmp_path / "notapipe").mkdir()
    with pytest.raises(ValueError, match="no model_index.json"):
        pipeline.load_pipeline(str(tmp_path / "notapipe"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text(json.dumps({"vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(ValueError, match="lacks"):
        pipeline.load_pipeline(str(tmp_path / "half"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="only resolve online"):
        pipeline.load_pipeline("some-org/some-model")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        pipeline.load_pipeline(str(tmp_path / "missing"))


def test_wrong_architecture_checkpoint_fails_loudly(tiny_world, tmp_path):
    """Weights from another architecture under the pocket UNet's config must not load silently."""
    from diffusers import UNet2DConditionModel

    dst = tmp_path / "mixed"
    shutil.copytree(tiny_world / "runs" / "base", dst)
    other = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(32, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), cross_attention_dim=64, norm_num_groups=32)
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "diffusion_pytorch_model.safetensors", dst / "unet")
    with pytest.raises((ValueError, RuntimeError)):
        pipeline.load_pipeline(str(dst))


def test_teach_black_trains_the_decoder_only():
    torch.manual_seed(0)
    vae = toy_sd.build_vae()
    images = pipeline.to_tensor(data.sample_scenes("base", 32, data.OBJECTS, "all", seed=0).images)
    black = -torch.ones(1, 3, data.SIZE, data.SIZE)
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    with torch.no_grad():
        before = (vae.decode(vae.encode(black).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1).mean().item()
    cfg = toy_sd.PretrainConfig(black_steps=40, vae_batch=8)
    after = toy_sd.teach_black(vae, images, cfg, "cpu")
    assert all(torch.equal(encoder_before[k], v) for k, v in vae.encoder.state_dict().items())
    assert after < before - 0.05  # the black image decodes darker than before
