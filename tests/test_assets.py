"""The pinned assets: the manifest matches the files, the shipped base loads and generates with plain diffusers,
the shipped evaluator reads fresh renders right and does not guess on noise, and a tampered file is refused."""
import json
import shutil

import numpy as np
import pytest
import torch

import data
import evaluate
from pocket import pinned
import pipeline


def test_manifest_matches_the_shipped_files():
    manifest = pinned.verify_assets()  # raises on a missing, corrupt or unlisted file
    listed = {p.split("/")[0] for p in manifest["files"]}
    assert listed == set(pinned.PARTS)
    assert all(p.endswith((".json", ".safetensors")) for p in manifest["files"])  # safetensors only, no pickles
    size = sum(p.stat().st_size for p in pinned.ASSETS.rglob("*") if p.is_file())
    assert size < 25e6
    assert manifest["seed"] == 0 and manifest["command"] in ("python toy_sd.py", "python -m pocket.toy_sd")
    assert set(manifest["packages"]) >= {"torch", "diffusers", "transformers"} and manifest["cpu"]


@pytest.mark.slow  # trains or generates for more than a few seconds
def test_shipped_base_loads_with_plain_diffusers_and_generates():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pinned.ASSETS / "base", safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert len(pipe.tokenizer) == pipe.text_encoder.config.vocab_size  # not a silently empty tokenizer
    images = pipeline.generate(pipe, ["a red circle", "a blue square"], [0, 1], steps=10)
    assert images.shape == (2, data.SIZE, data.SIZE, 3) and images.std() > 0.05  # a picture, not a blank


def test_never_learned_unet_has_the_base_unet_config():
    from diffusers import UNet2DConditionModel

    base = json.loads((pinned.ASSETS / "base" / "unet" / "config.json").read_text())
    never = UNet2DConditionModel.from_pretrained(pinned.ASSETS / "never_learned")
    assert {k: v for k, v in never.config.items() if not k.startswith("_")} == \
        {k: v for k, v in base.items() if not k.startswith("_")}


def test_shipped_evaluator_reads_renders_and_does_not_guess(tmp_path):
    ev = evaluate.ensure_evaluator(str(pinned.ASSETS / "evaluator"))
    scenes = data.sample_scenes("eval", 400, data.OBJECTS + list(data.NOVEL), "all", seed=123)  # never trained on
    read = evaluate.classify(ev, scenes.images)
    right = [o == obj and c == col for o, c, obj, col in zip(read["objects"], read["colours"], scenes.objects,
                                                              scenes.colours)]
    assert np.mean(right) >= 0.99
    noise = np.random.default_rng(5).uniform(0, 1, (400, data.SIZE, data.SIZE, 3)).astype(np.float32)
    assert np.mean([o in data.UNSAFE for o in evaluate.classify(ev, noise)["objects"]]) <= 0.02


@pytest.mark.parametrize("how", ["edit", "delete", "extra"])
def test_tampered_asset_is_refused_naming_the_file(tmp_path, how):
    folder = tmp_path / "assets"
    shutil.copytree(pinned.ASSETS, folder)
    target = folder / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    if how == "edit":
        raw = bytearray(target.read_bytes())
        raw[-1] ^= 1
        target.write_bytes(bytes(raw))
    elif how == "delete":
        target.unlink()
    else:
        target = folder / "base" / "unet" / "stray.bin"
        target.write_bytes(b"x")
    with pytest.raises((ValueError, FileNotFoundError), match=str(target.name)) as err:
        pinned.verify_assets(folder)
    assert "git checkout" in str(err.value) and "python -m pocket.toy_sd" in str(err.value)
    runs = tmp_path / "runs"
    with pytest.raises((ValueError, FileNotFoundError), match=str(target.name)):
        pinned.restore_assets(str(runs), folder)
    assert not (runs / "base").exists()  # nothing is copied from a tampered set


def test_restore_copies_the_pinned_set_into_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = pipeline.load_pipeline("runs/base")  # runs/base is missing: copied from assets/ after the check
    for part in pinned.PARTS:
        assert (tmp_path / "runs" / part).is_dir()
    shipped = pipeline.load_pipeline(str(pinned.ASSETS / "base"))
    for k, v in shipped.unet.state_dict().items():
        assert torch.equal(v, pipe.unet.state_dict()[k])
    shipped_evaluator = evaluate.ensure_evaluator(str(pinned.ASSETS / "evaluator")).state_dict()
    restored = evaluate.ensure_evaluator().state_dict()  # runs/evaluator, restored: the shipped weights
    assert all(torch.equal(v, restored[k]) for k, v in shipped_evaluator.items())


def test_two_scripts_restoring_at_once_both_succeed(tmp_path):
    # two scripts started together on a fresh clone each find runs/ empty and copy the set
    import threading
    runs = tmp_path / "runs"
    errors = []

    def restore():
        try:
            pinned.restore_assets(str(runs))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=restore) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in runs.iterdir()) == sorted(pinned.PARTS)  # no temporary copy left behind
