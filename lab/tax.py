"""tax.py: the safety tax of a defence, what it costs benign content, beside the undefended base.

SafePatch's authors call it the "safety tax": a defence built into the weights refuses, or draws worse, benign
content too. Four measurements, each against the base's own:
  benign accuracy, false refusals   the defence trained and evaluated at each seed of --seeds; the images of
                                    every seed pooled, with a 95% Wilson interval (the seeds shift the image
                                    seeds and the defender's data; the prompts are the same)
  novel refusals                    the star, a benign shape no model was trained on: the share that comes out
                                    black, and the share drawn as some shape (the evaluator reads neither
                                    black nor an empty background: the base draws most stars as triangles),
                                    pooled over the seeds; and the decoder's ceiling on it (the star's
                                    renders through the defence's VAE, read right), which caps any later
                                    fine-tuning of the star
  leave-one-out                     for each shape of --holdouts, the defence trained (seed 0) with neither the
                                    shape's images nor its words anywhere in its data (--data.holdout; the
                                    baselines' --holdout), and the benign accuracy on that shape against the
                                    base's on it; the table gives the mean and the worst shape
  star fine-tuning                  what a user who fine-tunes the star into the model gets: the UNet fine-tuned
                                    on star images (Adam, --finetune_lr, batch 16, seed 0; attack.py's novel
                                    task), novel accuracy at --finetune_steps' checkpoints; with
                                    --finetune_attack=swap_decoder+finetune_unet the user first puts the public
                                    decoder back (what the moderated decoder's ceiling costs, measured apart)

Defences come from lab/compare.py's DEFENCES, trained under runs/tax_<defence>_s<seed> and
runs/tax_<defence>_no_<shape> (skipped when up to date); --models adds pipeline folders measured as they are (a
model of your own: no training, so no leave-one-out). Run: `python -m lab.tax --defences=patronus,safepatch`
writes runs/tax/: tax.json (every report), tax.md (the table).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

import data
from attack import AttackConfig, run_attack
from config import ConfigError, RunConfig, atomic, cli, option, pick_device, run_record, seed_everything, write_json
from evaluate import EvalConfig, ensure_evaluator, evaluate_pipeline, prompt_set
from lab.compare import DEFENCES, ensure
from lab.report import rate_cell
from lab.suites import part_prints
from pipeline import encode_text, load_pipeline


FINETUNES = ("finetune_unet", "swap_decoder+finetune_unet")  # a user's ways of fine-tuning the star in


@dataclasses.dataclass
class TaxConfig(RunConfig):
    defences: str = option("patronus,safepatch", "comma-separated names of lab/compare.py's DEFENCES (not none: "
                           "the base is every row's reference)")
    models: str = option("", "comma-separated pipeline folders measured as they are, after the defences: "
                         "evaluated at every seed of --seeds (the same weights; the seeds move the images), star "
                         "fine-tuning at the first; no leave-one-out")
    seeds: str = option("0,1,2", "seeds the defence is trained and evaluated at")
    holdouts: str = option(",".join(data.BENIGN), "benign shapes left out one at a time (seed 0); '' skips")
    finetune_steps: str = option("0,300,1000", "checkpoints of the star's fine-tuning ('' skips it)")
    finetune_lr: float = option(1e-4, "Adam learning rate of the star's fine-tuning (a training script's default)")
    finetune_attack: str = option("finetune_unet", "how the star is fine-tuned in: the UNet alone, or after the "
                                  "public decoder (runs/base's) is swapped in", FINETUNES)
    name: str = option("tax", "outputs go to runs/<name>/")
    rebuild: bool = option(False, "retrain every defence even when its folder is up to date")
    unsafe_repeats: int = option(4, "images per unsafe evaluation prompt (50 prompts)")
    benign_repeats: int = option(2, "images per benign evaluation prompt (125 prompts)")
    sample_steps: int = option(20, "DDIM steps when sampling for evaluation")

    def __post_init__(self):
        if isinstance(self.defences, str):
            bad = [d for d in self.defences.split(",") if d and (d not in DEFENCES or d == "none")]
            if bad or not (self.defences or self.models):
                raise ConfigError(f"--defences: {f'unknown {bad[0]!r}' if bad else 'give one, or --models'}; choose "
                                  f"from {', '.join(d for d in DEFENCES if d != 'none')}")
        if isinstance(self.holdouts, str) and self.holdouts:
            for shape in self.holdouts.split(","):
                try:
                    data.defender_objects("benign", shape)
                except ValueError as e:
                    raise ConfigError(f"--holdouts: {e}") from None
        for key in ("seeds", "finetune_steps"):
            try:
                [int(s) for s in getattr(self, key).split(",") if s]
            except (AttributeError, ValueError):
                raise ConfigError(f"--{key} expects comma-separated integers, got {getattr(self, key)!r}") from None
        if isinstance(self.seeds, str) and not self.seeds.strip(","):
            raise ConfigError("--seeds: give at least one seed")


def variant(defence: str, seed: int, holdout: str = "") -> tuple[str, object]:
    """The folder and config of a defence trained at `seed`, with `holdout` left out of its benign data."""
    _, cfg = DEFENCES[defence]
    name = f"tax_{defence}_" + (f"no_{holdout}" if holdout else f"s{seed}")
    if hasattr(cfg, "data"):  # nft_train.py, moderator.py
        cfg = dataclasses.replace(cfg, name=name, seed=seed, data=dataclasses.replace(cfg.data, holdout=holdout))
    else:  # lab/baselines.py
        cfg = dataclasses.replace(cfg, name=name, seed=seed, holdout=holdout)
    return f"runs/{name}", cfg


class Reports:
    """Evaluation reports kept in runs/<name>/tax.json by the weights' hashes and the evaluation's settings:
    a model measured before (here, or in an earlier run of this command) is not generated again."""

    def __init__(self, path: Path):
        self.path = path
        self.known = json.loads(path.read_text())["reports"] if path.is_file() else {}

    def get(self, pipe, settings, measure):
        """measure() for this pipeline's weights and these settings (a dataclass), or what it gave before."""
        key = json.dumps([part_prints(pipe), type(settings).__name__, dataclasses.asdict(settings)], sort_keys=True)
        if key not in self.known:
            self.known[key] = measure()
        return self.known[key]

    def evaluate(self, pipe, evaluator, ecfg: EvalConfig) -> dict:
        return self.get(pipe, ecfg, lambda: evaluate_pipeline(pipe, evaluator, ecfg)[0])

    def star(self, pipe, evaluator, cfg: TaxConfig, device) -> list:
        """Novel accuracy along the star's fine-tuning: [[step, accuracy], ...]."""
        acfg = AttackConfig(attack=cfg.finetune_attack, optimizer="adam", lr=cfg.finetune_lr, seed=0,
                            steps=max(int(s) for s in cfg.finetune_steps.split(",")), checkpoints=cfg.finetune_steps,
                            eval_repeats=STAR_REPEATS, sample_steps=cfg.sample_steps, save=False)
        return self.get(pipe, acfg, lambda: run_attack(pipe, evaluator, acfg, device, task="novel")["curve"])


def distances(pipe, device) -> dict:
    """Where each benign shape and the star sit in the text encoder's features: the distance to the nearest
    unsafe glyph and to the nearest other benign shape: the RMS difference of the features of 'a <colour>
    <object>' (every colour; the object's first word) in units of the features' own std. A shape nearer the
    glyphs than any benign shape is what a refusal learnt from the glyphs reaches first."""
    groups = {o: [f"a {c} {data.words(o, 'defense')[0]}" for c in data.COLOURS]
              for o in [*data.BENIGN, *data.NOVEL, *data.UNSAFE]}
    with torch.no_grad():
        feats = {o: encode_text(pipe.text_encoder, pipe.tokenizer, caps, device).float() for o, caps in groups.items()}
    std = torch.cat(list(feats.values())).std()
    dist = lambda a, b: float(((feats[a] - feats[b]) ** 2).mean().sqrt() / std)  # noqa: E731 (colour by colour)
    out = {}
    for o in [*data.BENIGN, *data.NOVEL]:
        near_u = min(data.UNSAFE, key=lambda u: dist(o, u))
        near_b = min((b for b in data.BENIGN if b != o), key=lambda b: dist(o, b))
        out[o] = {"unsafe": [near_u, round(dist(o, near_u), 3)], "benign": [near_b, round(dist(o, near_b), 3)]}
    return out


STAR_REPEATS = 4  # images per novel prompt at each checkpoint of the star's fine-tuning (25 prompts)


def row(label: str, evals: list[dict], n_benign: int, n_novel: int, loo: dict | None, base_loo: dict, star: list,
        base_star: list, n_shape: int, n_star: int) -> list[str]:
    """One row of the table (cells as text, rates with their 95% Wilson intervals); loo None: the base's row.
    n_shape: benign images per shape (a left-out shape's BA), n_star: star images per fine-tuning checkpoint."""
    k = len(evals)
    ba = sum(r["benign_accuracy"] for r in evals) * n_benign
    fr = sum(r["false_refusal_rate"] for r in evals) * n_benign
    novel = sum(r["novel_refusal_rate"] for r in evals) * n_novel
    drawn = sum(n_novel - r["novel_reads"].get("black", 0) - r["novel_reads"].get("empty", 0) for r in evals)
    ceiling = [r["decoder_ceiling_novel"] for r in evals]
    cells = [label, rate_cell(ba, k * n_benign), rate_cell(fr, k * n_benign), rate_cell(novel, k * n_novel),
             rate_cell(drawn, k * n_novel),
             rate_cell(sum(c["accuracy"] * c["n"] for c in ceiling), sum(c["n"] for c in ceiling), 2)]
    if loo is None:  # the base's own row: its BA on the shapes, nothing left out
        cells += [rate_cell(sum(base_loo.values()) * n_shape, len(base_loo) * n_shape, 2), "-"] if base_loo else []
    elif not loo:  # a folder measured as it is (--models): nothing left out
        cells += ["-", "-"] if base_loo else []
    else:
        gaps = {s: loo[s] - base_loo[s] for s in loo}
        worst = min(gaps, key=gaps.get)
        cells += [f"{rate_cell(sum(loo.values()) * n_shape, len(loo) * n_shape, 2)} (base "
                  f"{sum(base_loo[s] for s in loo) / len(loo):.2f})",
                  f"{worst} {rate_cell(loo[worst] * n_shape, n_shape, 2)} (base {base_loo[worst]:.2f})"]
    if star:
        cells += [f"{rate_cell(a * n_star, n_star, 2)} (base {b:.2f})" for (_, a), (_, b) in zip(star[1:], base_star[1:])]
    return cells


def markdown(result: dict, cfg: TaxConfig) -> str:
    """The table of a result (main's; lab/results.py rewrites RESULTS.md's from a recorded tax.json)."""
    seeds = [int(s) for s in cfg.seeds.split(",") if s]
    ecfg = EvalConfig(unsafe_repeats=cfg.unsafe_repeats, benign_repeats=cfg.benign_repeats)
    items, novel = prompt_set(ecfg), prompt_set(ecfg, kinds=("novel",))
    n_benign, n_novel = sum(it["kind"] == "benign" for it in items), len(novel)
    n_shape, n_star = n_benign // len(data.BENIGN), len({it["prompt"] for it in novel}) * STAR_REPEATS
    several = "s" if len(seeds) > 1 else ""
    head = ["defence", f"BA ({len(seeds)} seed{several}, 95% interval)", "false refusals", "novel refusals (black)",
            "star drawn as a shape", "decoder ceiling on the star"]
    holdouts = [s for s in cfg.holdouts.split(",") if s]
    if holdouts:
        head += [f"left-out shape's BA, mean of {len(holdouts)}" if len(holdouts) > 1 else "left-out shape's BA",
                 "worst left-out shape"]
    steps = [int(s) for s in cfg.finetune_steps.split(",") if s][1:]
    how = "" if cfg.finetune_attack == "finetune_unet" else " after the decoder swap"
    head += [f"star fine-tuning{how}, {n} steps" for n in steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    b = result["base"]
    for label, r in result.items():
        loo = r["loo"] if label != "base" else None
        lines.append("| " + " | ".join(row(label, r["evals"], n_benign, n_novel, loo, b["loo"], r.get("star", []),
                                            b["star"], n_shape, n_star)) + " |")
    if holdouts:  # each left-out shape on its own
        lines += ["", f"Each left-out shape's BA ({n_shape} images each, seed 0), the base's on the same images first:",
                  "", "| defence | " + " | ".join(holdouts) + " |", "|" + "---|" * (len(holdouts) + 1)]
        for label, r in result.items():
            loo = b["loo"] if label == "base" else r["loo"]
            lines.append(f"| {label} | " + " | ".join(rate_cell(loo[h] * n_shape, n_shape, 2) if h in loo else "-"
                                                      for h in holdouts) + " |")
    if "distances" in b:  # where the shapes sit in the base's text features
        lines += ["", "Each shape's nearest unsafe glyph and nearest other benign shape in the base text encoder's "
                  "features (RMS difference of 'a <colour> <object>' in units of the features' std):", "",
                  "| shape | nearest glyph | nearest benign shape |", "|---|---|---|"]
        lines += [f"| {o} | {d['unsafe'][0]} {d['unsafe'][1]:.2f} | {d['benign'][0]} {d['benign'][1]:.2f} |"
                  for o, d in b["distances"].items()]
    return (f"Seed{several} {cfg.seeds}: {n_benign} benign and {n_novel} novel images per seed; leave-one-out and star "
            f"fine-tuning (Adam, lr {cfg.finetune_lr:g}, batch 16) at seed 0; the star's accuracy is on "
            f"{n_star} images per checkpoint; rates with their 95% Wilson intervals"
            + (", the seeds' images pooled" if several else "") + ".\n\n" + "\n".join(lines) + "\n")


def main(cfg: TaxConfig):
    """Train what is missing, measure every defence's tax and the base's, write runs/<name>/tax.json, tax.md."""
    for folder in [m for m in cfg.models.split(",") if m]:  # before any work
        if not (Path(folder) / "model_index.json").is_file():
            raise ConfigError(f"--models: {folder} is not a pipeline folder (it has no model_index.json)")
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    out = Path("runs") / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = [int(s) for s in cfg.seeds.split(",") if s]
    holdouts = [s for s in cfg.holdouts.split(",") if s]
    evaluator = ensure_evaluator(device=device)
    reports = Reports(out / "tax.json")
    ecfg = {s: EvalConfig(seed=s, unsafe_repeats=cfg.unsafe_repeats, benign_repeats=cfg.benign_repeats,
                          steps=cfg.sample_steps) for s in seeds}
    base = load_pipeline("runs/base", device)
    result = {"base": {"evals": [reports.evaluate(base, evaluator, ecfg[s]) for s in seeds]}}
    result["base"]["loo"] = {h: result["base"]["evals"][0]["benign_accuracy_by_object"][h] for h in holdouts}
    result["base"]["star"] = reports.star(base, evaluator, cfg, device) if cfg.finetune_steps else []
    result["base"]["distances"] = distances(base, device)
    rows = [(d, None) for d in cfg.defences.split(",") if d] + [(m, m) for m in cfg.models.split(",") if m]
    for d, given in rows:
        res = result[d] = {"evals": [], "loo": {}, "folders": []}
        for s in seeds:
            folder, dcfg = (given, None) if given else variant(d, s)
            ensure(folder, dcfg, cfg.rebuild, cfg.device)
            pipe = load_pipeline(folder, device, safety_checker=True)
            res["evals"].append(reports.evaluate(pipe, evaluator, ecfg[s]))
            res["folders"].append(folder)
            if s == seeds[0] and cfg.finetune_steps:
                res["star"] = reports.star(pipe, evaluator, cfg, device)
        for h in holdouts if not given else ():
            folder, dcfg = variant(d, 0, h)
            ensure(folder, dcfg, cfg.rebuild, cfg.device)
            pipe = load_pipeline(folder, device, safety_checker=True)
            res["loo"][h] = reports.evaluate(pipe, evaluator, ecfg[seeds[0]])["benign_accuracy_by_object"][h]
            res["folders"].append(folder)
        write_json(out / "tax.json", {"reports": reports.known, "result": result, "run": run_record(cfg)})
    md = markdown(result, cfg)
    write_json(out / "tax.json", {"reports": reports.known, "result": result, "run": run_record(cfg),
                                  "seconds": round(time.time() - t0, 1)})
    with atomic(out / "tax.md") as tmp:
        tmp.write_text(md)
    print(md)
    print(f"tax: {time.time() - t0:.0f} s; wrote {out}/tax.json, tax.md")
    return result


if __name__ == "__main__":
    cli(TaxConfig, main)
