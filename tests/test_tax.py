"""lab/tax.py on the tiny world: every defence trained per seed and with each shape left out, the table's
intervals, and a second run that retrains and measures nothing."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from config import ConfigError, parse
from lab import baselines, compare, tax
from lab.report import rate_cell, wilson


def test_wilson_interval_bounds_what_a_sample_of_fifty_can_tell():
    assert wilson(0, 50) == (0.0, pytest.approx(0.0714, abs=1e-4))  # 0 of 50 only bounds the rate below 0.071
    lo, hi = wilson(25, 50)
    assert (lo, hi) == (pytest.approx(0.366, abs=1e-3), pytest.approx(0.634, abs=1e-3))
    assert wilson(50, 50)[1] == 1.0 and rate_cell(235, 250) == "0.940 [0.903, 0.963]"


def test_tax_options_are_checked():
    with pytest.raises(ConfigError, match="--defences"):
        tax.TaxConfig(defences="none")
    with pytest.raises(ConfigError, match="--holdouts"):
        tax.TaxConfig(holdouts="hexagon")
    with pytest.raises(ConfigError, match="--seeds"):
        tax.TaxConfig(seeds="0,one")
    with pytest.raises(ConfigError, match="--defences: give one"):
        tax.TaxConfig(defences="")


def test_tax_measures_a_given_folder_as_it_is(world):
    """--models: a pipeline folder is evaluated and its star fine-tuned, never trained or left out."""
    cfg = tax.TaxConfig(defences="", models="runs/base", seeds="0", holdouts="ring", finetune_steps="0,2",
                        unsafe_repeats=1, benign_repeats=1, sample_steps=2)
    result = tax.main(cfg)
    given, base = result["runs/base"], result["base"]
    assert given["evals"] == base["evals"] and given["star"] == base["star"]  # the same weights, the same numbers
    assert given["loo"] == {} and not list(Path("runs").glob("tax_*"))
    md = Path("runs/tax/tax.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| runs/base |"))
    head = next(line for line in md.splitlines() if line.startswith("| defence |"))
    assert row.count(" | ") == head.count(" | ") and " | - | - | " in row
    assert "| runs/base | - |" in md  # the per-shape table has no left-out model for it
    swapped = tax.main(dataclasses.replace(cfg, finetune_attack="swap_decoder+finetune_unet"))
    assert swapped["base"]["star"] == result["base"]["star"]  # the base's own decoder swapped in: nothing changes
    assert "| star fine-tuning after the decoder swap, 2 steps |" in Path("runs/tax/tax.md").read_text()
    with pytest.raises(ConfigError, match="finetune_attack"):
        parse(tax.TaxConfig, ["--finetune_attack=lora_unet"])
    with pytest.raises(ConfigError, match="--models: runs/nowhere is not a pipeline folder"):
        tax.main(dataclasses.replace(cfg, models="runs/base,runs/nowhere"))


def test_tax_trains_each_seed_and_each_left_out_shape_then_reuses_them(world, monkeypatch):
    monkeypatch.setitem(compare.DEFENCES, "safepatch", ("runs/safepatch", baselines.BaselineConfig(
        baseline="safepatch", patch_steps=2, n_images=16, batch=4)))
    cfg = tax.TaxConfig(defences="safepatch", seeds="0,1", holdouts="ring", finetune_steps="0,2", unsafe_repeats=1,
                        benign_repeats=1, sample_steps=2)
    result = tax.main(cfg)
    for folder in ("runs/tax_safepatch_s0", "runs/tax_safepatch_s1", "runs/tax_safepatch_no_ring"):
        assert (Path(folder) / "safety_patch").is_dir()
    record = json.loads(Path("runs/tax_safepatch_no_ring/baseline.json").read_text())["config"]
    assert record["holdout"] == "ring" and record["seed"] == 0
    assert [r["seed"] for r in result["safepatch"]["evals"]] == [0, 1]
    assert set(result["safepatch"]["loo"]) == {"ring"} and [s for s, _ in result["base"]["star"]] == [0, 2]
    md = Path("runs/tax/tax.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| safepatch |")).strip("| ").split(" | ")
    evals = result["safepatch"]["evals"]
    n = 125  # benign images per seed at one image per prompt
    assert row[1] == rate_cell(sum(r["benign_accuracy"] for r in evals) * n, 2 * n)  # pooled over both seeds
    assert row[6].endswith(f"(base {result['base']['loo']['ring']:.2f})")
    tables = [[line.count(" | ") for line in block.splitlines() if line.startswith("| ")]
              for block in md.split("\n\n") if block.startswith("| ")]
    assert [len(t) for t in tables] == [3, 3, 7]  # the tax, each left-out shape, where each shape sits (6 shapes)
    assert all(len(set(t)) == 1 for t in tables)  # every row fills every column
    near = result["base"]["distances"]
    assert set(near) == set(data.BENIGN) | set(data.NOVEL)
    assert all(d["unsafe"][0] in data.UNSAFE and d["benign"][0] in data.BENIGN and d["benign"][0] != o
               and d["unsafe"][1] > 0 for o, d in near.items())
    stamps = {f: os.path.getmtime(f) for f in ("runs/tax_safepatch_s0", "runs/tax_safepatch_no_ring")}
    again = tax.main(cfg)  # every model up to date, every measurement taken from tax.json
    assert again == json.loads(json.dumps(result)) and Path("runs/tax/tax.md").read_text() == md
    assert stamps == {f: os.path.getmtime(f) for f in stamps}


def test_mix_curve_counts_refusals_at_each_weight_of_the_unsafe_prompt(world, monkeypatch):
    """lab/mixes.py: the weight reaches the conditioning (a stand-in generator that draws black exactly where
    the conditioning is not the benign prompt's), and the command writes its table on the tiny world."""
    from lab import mixes
    from pipeline import encode_text, load_pipeline

    pipe = load_pipeline("runs/base")
    benign = encode_text(pipe.text_encoder, pipe.tokenizer, [f"a {c} {data.BENIGN[b][0][0]}" for b in data.BENIGN
                                                              for c in data.COLOURS], pipe.device)

    def fake(_pipe, prompts, seeds, steps, embeds):
        is_benign = [any(torch.equal(e, b) for b in benign) for e in embeds]
        return np.stack([np.full((32, 32, 3), 0.6 if keep else 0.0, np.float32) for keep in is_benign])

    with monkeypatch.context() as m:  # (undo() would also undo the world's chdir)
        m.setattr(mixes, "generate", fake)
        curve = mixes.mix_curve(pipe, mixes.ensure_evaluator(), repeats=2, weights=(0.0, 0.3, 1.0))
    assert [c["black"] for c in curve.values()] == [0.0, 1.0, 1.0]
    assert all(c["n"] == 2 * len(data.UNSAFE) * len(data.BENIGN) * len(data.COLOURS) for c in curve.values())
    mixes.main(mixes.MixConfig(model="runs/base", repeats=1, sample_steps=2))
    saved = json.loads(Path("runs/mixes_base/mixes.json").read_text())["curve"]
    assert list(saved) == [str(w) for w in mixes.WEIGHTS]
    assert all(0 <= c["black"] + c["glyph"] + c["shape"] <= 1 for c in saved.values())
    assert "| `runs/base` |" in Path("runs/mixes_base/mixes.md").read_text()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mixes.main(mixes.MixConfig(model="runs/missing"))
    with pytest.raises(ConfigError, match="--repeats"):
        mixes.MixConfig(repeats=0)
