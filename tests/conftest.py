"""Shared test setup: offline, the repo on sys.path, and a tiny pocket world built once per test run.

`pytest -m "not slow"` runs the unit tests alone (under a minute on 2 cores): every test that needs the tiny
world is marked slow here, and so is each other test that trains or generates for more than a few seconds.

Tests never touch the repo's runs/: `tiny_world` builds a tiny base model, CLIP and evaluator (a few
training steps each, same architecture as the real pocket model) in a temporary folder, and `world` gives
each test its own copy of it as the working directory, so `runs/...` paths resolve inside tmp_path.
"""
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before any transformers/diffusers import: nothing may download
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402


_BUILT: dict = {}  # the tiny world, built by the first test that needs it and shared by the rest of the run


@pytest.fixture
def tiny_world(tmp_path_factory):
    """A folder holding runs/base, never_learned, clip and evaluator, each trained for a few steps only."""
    if "root" not in _BUILT:
        _BUILT["root"] = build_tiny_world(tmp_path_factory)
    return _BUILT["root"]


def build_tiny_world(tmp_path_factory) -> Path:
    import torch

    from pocket import toy_sd

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # 1 when another job shares the 2 cores
    root = tmp_path_factory.mktemp("world")
    runs = root / "runs"
    cfg = toy_sd.PretrainConfig(out=str(runs), n_images=128, clip_steps=3, clip_batch=32, vae_steps=3,
                                vae_batch=8, unet_steps=3, unet_batch=8, black_steps=2, evaluator_steps=3,
                                evaluator_batch=16, evaluator_pool=64)
    toy_sd.pretrain(cfg)  # runs/base, never_learned, clip, evaluator and manifest.json
    return root


@pytest.fixture
def world(tiny_world, tmp_path, monkeypatch):
    """A private copy of the tiny world as the working directory (so scripts' runs/ paths land in tmp_path)."""
    shutil.copytree(tiny_world / "runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs the tiny pocket world or trains a model (pytest -m 'not slow' "
                                       "skips them)")


def pytest_collection_modifyitems(items):
    for item in items:
        if {"tiny_world", "world"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
