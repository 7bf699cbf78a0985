"""compare.py: every defence side by side, on the same prompts, seeds and attacks, in one run.

Defences (rows), each a diffusers folder under runs/, trained here when missing or when its recorded config
differs from the one below, loaded otherwise:
  none       the undefended base model
  filter     an external image filter (baselines.py: SD's safety checker, fitted on the defender's data)
  safetext   SafeText: the text encoder moves unsafe prompts' embeddings away (baselines.py)
  esd        ESD-x: the UNet's cross-attention learns negative guidance away from the unsafe concepts (baselines.py)
  safepatch  SafePatch: an external patch beside the locked UNet, trained on counterfactual pairs (baselines.py)
  erase      the UNet erased (suppression + retention), no simulated fine-tuning, no moderator
  moderator  Patronus' decoder moderator alone, UNet untouched (moderator.py)
  nft        Patronus' NFT UNet alone, no moderator
  patronus   both (nft_train.py's default)
Columns: the unsafe rate on `defense` and `heldout` phrasings, benign accuracy, false refusals, refusals of a
novel concept and fidelity to the base (evaluate.py, 450 + 50 images), then the faithful unsafe rate after each attack of the chosen attack suite
(lab/suites.py; the strongest learning rate of the suite's grid per defence and attack, one seed) plus
remove_filter (and remove_patch where a defence has a patch). Two references are attacked too: the never-learned model (the base with the never-learned UNet
of runs/never_learned, pretrained with every unsafe image filtered out of its data: the realistic ideal of a
defence; evaluated like a defence, and attacked on its UNet and by the swaps, suites.faces) and the
from-scratch one (a random UNet, decoder or text encoder trained the same way). The filter stays in its
pipeline for every attack except remove_filter, and the patch beside its UNet for every attack except
remove_patch: what a careless attacker gets; a careful one removes them first.

Run: `python -m lab.compare` (all defences, quick suite) writes runs/compare/: compare.json, compare.md (the
tables in the README), curves.png (faithful UR against attack steps, one line per defence), attacks.json.
Every attack run is also kept in attack_cache.json, by the hashes of the weights it starts from (after its
swaps) and the settings (attack.attack_grid); a later run takes what it finds there: add a defence to
DEFENCES, rerun, and only its row is attacked (`--reuse=false` empties the cache and measures everything
again). Defences that share a part share runs: swapping the base's decoder into a defence whose only change
is its decoder gives the base, attacked once.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import moderator
import nft_train
from config import (ConfigError, RunConfig, atomic, build, cli, flatten, option, pick_device, run_record,
                    seed_everything, write_json)
from attack import REMOVALS
from evaluate import EvalConfig, ensure_evaluator, evaluate_pipeline, prompt_set
from lab import baselines
from lab.baselines import BaselineConfig
from lab.report import image_counts, plot_curves, recorded_config
from lab.suites import NEVER_LEARNED, SUITES, SuiteConfig, attack_grid, load_never_learned, never_learned_folder
from moderator import ModeratorJob
from nft_train import NFTConfig
from pipeline import generate, load_pipeline, patch_of

# name -> (folder, the config that builds it); "none" is the base model itself
DEFENCES = {
    "none": ("runs/base", None),
    "filter": ("runs/filter", BaselineConfig(baseline="filter")),
    "safetext": ("runs/safetext", BaselineConfig(baseline="safetext")),
    "esd": ("runs/esd", BaselineConfig(baseline="esd")),
    "safepatch": ("runs/safepatch", BaselineConfig(baseline="safepatch")),
    "erase": ("runs/erase_only", build(NFTConfig, {"name": "erase_only", "unlearn_steps": 1000, "moderator.kind": "off",
                                                   "evaluate": False})),
    "moderator": ("runs/mod_decoder", ModeratorJob(name="mod_decoder")),
    "nft": ("runs/nft_only", build(NFTConfig, {"name": "nft_only", "moderator.kind": "off", "evaluate": False})),
    "patronus": ("runs/patronus", NFTConfig(evaluate=False)),
}
# options that do not change the trained weights (the name only picks the folder)
IGNORED = {"name", "device", "evaluate", "check.attack_steps", "check.unsafe_repeats", "check.benign_repeats",
           "check.sample_steps", "resume", "checkpoint_every"}


@dataclasses.dataclass
class CompareConfig(RunConfig):
    defences: str = option("all", "comma-separated names of DEFENCES, or all")
    suite: str = option("quick", "the attack suite every defence faces (lab/suites.py SUITES)", tuple(SUITES))
    name: str = option("compare", "outputs go to runs/<name>/")
    only: str = option("", "run only these of the suite's attacks, comma-separated (default: all, and remove_filter)")
    optimizers: str = option("", "keep only these optimizers of the suite's grid, comma-separated (default: all)")
    lrs: str = option("", "keep only these learning rates of the suite's grid, comma-separated (default: all)")
    rebuild: bool = option(False, "retrain every defence even when its folder is up to date")
    reuse: bool = option(True, "take attack runs from runs/<name>/attack_cache.json that were measured on the "
                         "same weights with the same settings instead of running them again (false empties the "
                         "cache: after changing attack or evaluation code)")
    unsafe_repeats: int = option(4, "images per unsafe evaluation prompt (50 prompts)")
    benign_repeats: int = option(2, "images per benign evaluation prompt (125 prompts)")
    sample_steps: int = option(20, "DDIM steps when sampling for evaluation")

    def __post_init__(self):
        bad = [d for d in self.defences.split(",") if d not in (*DEFENCES, "all")] if isinstance(self.defences, str) else []
        if bad:
            raise ConfigError(f"--defences: unknown {bad[0]!r}; choose from {', '.join(DEFENCES)} (or all)")
        SuiteConfig(only=self.only, optimizers=self.optimizers, lrs=self.lrs)  # the same checks as lab.suites


def up_to_date(have: dict | None, cfg) -> bool:
    """Was a folder with recorded config `have` trained as `cfg` would train it? Options that do not change the
    weights are ignored; an option newer than the record counts as what was in force then (nft_train.BEFORE for an
    option whose default changed, else its default)."""
    if have is None:
        return False
    have, default = flatten(have), flatten(dataclasses.asdict(type(cfg)())) | nft_train.BEFORE
    return all(have.get(k, default[k]) == v for k, v in flatten(dataclasses.asdict(cfg)).items() if k not in IGNORED)


def ensure_defence(name: str, rebuild: bool, device: str) -> tuple[str, dict]:
    """The folder of defence `name`, trained first when missing, stale or rebuild is set; and what happened."""
    folder, cfg = DEFENCES[name]
    return folder, ensure(folder, cfg, rebuild, device)


def ensure(folder: str, cfg, rebuild: bool, device: str) -> dict:
    """Train `folder` with `cfg` (nft_train, moderator or baselines) when it is missing, stale or rebuild is set."""
    if cfg is None:
        return {"built": False}
    cfg = dataclasses.replace(cfg, device=device)
    have = recorded_config(Path(folder))
    if not rebuild and up_to_date(have, cfg):
        return {"built": False}
    why = "--rebuild" if rebuild else "missing" if have is None else "its recorded config differs"
    print(f"training {folder} ({why})")
    t0 = time.time()
    {BaselineConfig: baselines.main, ModeratorJob: moderator.main, NFTConfig: nft_train.main}[type(cfg)](cfg)
    return {"built": True, "why": why, "seconds": round(time.time() - t0, 1)}


def table(rows: dict, best: list[dict], attacks: list[str], key: str, name: str, rate=None,
          n_attack: int = 50) -> str:
    """Markdown: one row per defence, its evaluation, then `name` after each attack (last step, best lr), on the
    suite's first seed (a suite with more seeds runs them too: its own tables show them). rate(value, n, digits):
    a rate of n images as text (lab/results.py's adds its interval); by default the value alone. n_attack: the
    images behind each point of an attack's curve."""
    rate = rate or (lambda v, n, digits=3: f"{v:.{digits}f}")
    first = min((e["seed"] for e in best), default=0)
    after = {(e["model"], e["attack"]): e for e in best if e["seed"] == first}
    head = ["defence", "UR defense", "UR heldout", "BA", "false refusals", "novel refusals", "MSE to base",
            "FD to base"]
    lines = ["| " + " | ".join(head + [f"{name} {a}" for a in attacks]) + " |", "|" + "---|" * (len(head) + len(attacks))]
    for model in [*rows, "scratch"]:  # the defences, the never-learned reference, then scratch
        r = rows.get(model)
        n = image_counts(r) if r else None
        cells = [model] + (["-"] * (len(head) - 1) if r is None else [
            rate(r["unsafe_rate"]["defense"], n["defense"]), rate(r["unsafe_rate"]["heldout"], n["heldout"]),
            rate(r["benign_accuracy"], n["benign"]), rate(r["false_refusal_rate"], n["benign"]),
            rate(r["novel_refusal_rate"], n["novel"]), f"{r['fidelity']['mse_to_base']:.4f}",
            f"{r['fidelity']['fd_to_base']:.2f}"])
        cells += [rate(after[model, a][key][-1][1], n_attack, 2) if (model, a) in after else "-" for a in attacks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(cfg: CompareConfig):
    """Train or load every defence, evaluate each, attack each with the same suite; one table, one plot."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    names = list(DEFENCES) if cfg.defences == "all" else [d for d in cfg.defences.split(",") if d]
    out = Path("runs") / cfg.name
    t_start = time.time()
    never_learned_folder("runs/base")  # copied from assets/ when runs/ lacks it; before any training
    built = {n: ensure_defence(n, cfg.rebuild, cfg.device) for n in names}  # trains what is missing
    evaluator = ensure_evaluator(device=device)
    pipes = {n: load_pipeline(folder, device, safety_checker=True) for n, (folder, _) in built.items()}
    reference = pipes.get("none") or load_pipeline("runs/base", device)  # attacks copy before they change
    references = {NEVER_LEARNED: load_never_learned("runs/base", device)}  # evaluated and attacked, never trained
    if "filter" in pipes:
        baselines.quiet_checker()
    # (1) every defence without attack, against the base model's images for the same prompts and seeds
    t_built = time.time()
    ecfg = EvalConfig(seed=cfg.seed, unsafe_repeats=cfg.unsafe_repeats, benign_repeats=cfg.benign_repeats,
                      steps=cfg.sample_steps)
    items = prompt_set(ecfg)
    ref_images = generate(reference, [it["prompt"] for it in items], [it["seed"] for it in items], ecfg.steps,
                          ecfg.guidance)
    rows = {}
    for n, pipe in (pipes | references).items():
        rows[n], _, _ = evaluate_pipeline(pipe, evaluator, ecfg, ref_images)
        print(f"{n}: UR {rows[n]['unsafe_rate']['defense']:.3f} / {rows[n]['unsafe_rate']['heldout']:.3f}, "
              f"BA {rows[n]['benign_accuracy']:.3f}, false refusals {rows[n]['false_refusal_rate']:.3f}")
    t_eval = time.time()
    # (2) the same attacks on every defence and on the never-learned and from-scratch references
    spec = SUITES[cfg.suite]
    # heldout_prompts is the UR heldout column already; remove_filter always, once, last (remove_patch too when a
    # defence has a patch)
    removals = ["remove_filter"] + (["remove_patch"] if any(patch_of(p.unet) for p in pipes.values()) else [])
    attacks = [a for a in spec["attacks"] if a not in ("heldout_prompts", *REMOVALS)] + removals
    attacks = [a for a in attacks if not cfg.only or a in cfg.only.split(",")]
    acfg = SuiteConfig(model="runs/base", suite=cfg.suite, seed=cfg.seed, device=cfg.device,
                       sample_steps=cfg.sample_steps, optimizers=cfg.optimizers, lrs=cfg.lrs)
    cache = out / "attack_cache.json"  # every attack run measured in runs/<name>/, by weights and settings
    if not cfg.reuse:
        cache.unlink(missing_ok=True)
    entries = attack_grid({**pipes, **references, "scratch": None}, [(a, "unsafe") for a in attacks], spec, acfg,
                          reference, evaluator, device, out, grid_of="patronus", cache=cache)
    reused = sum(e.get("reused", False) for e in entries)
    best = [e for e in entries if e["best"]]
    seconds = {"training": round(t_built - t_start, 1), "evaluation": round(t_eval - t_built, 1),
               "attacks": round(time.time() - t_eval, 1)}
    n = 50 * spec["eval_repeats"]  # images per point of an attack's curve
    grid = "the strongest (optimizer, lr) of its grid" + (f" (optimizers {cfg.optimizers or 'all'}, lrs "
                                                          f"{cfg.lrs or 'all'})" if cfg.optimizers or cfg.lrs else "")
    md = (f"Faithful unsafe rate after each attack ({cfg.suite} suite: {spec['steps']} steps, {grid}, seed "
          f"{cfg.seed}); the evaluation columns are without attack:\n\n{table(rows, best, attacks, 'curve_faithful', 'fUR', n_attack=n)}\n\n"
          f"Plain unsafe rate after each attack, same runs:\n\n{table(rows, best, attacks, 'curve', 'UR', n_attack=n)}\n")
    write_json(out / "compare.json", {"defences": {n: {"folder": built[n][0], **built[n][1], "report": rows[n]}
                                                   for n in names},
                                      "references": {NEVER_LEARNED: {"folder": str(never_learned_folder("runs/base")),
                                                                     "report": rows[NEVER_LEARNED]}},
                                      "attacks": attacks, "suite": cfg.suite, "seconds": seconds,
                                      "attack_runs": len(entries),
                                      "reused_runs": reused,
                                      "run": run_record(cfg)})
    with atomic(out / "compare.md") as tmp:
        tmp.write_text(md)
    plot_curves(best, out / "curves.png", key="curve_faithful", name="faithful UR",
                title=f"every defence, {cfg.suite} suite, best lr per attack, seed {cfg.seed}")
    print(md)
    print(f"compare: {len(entries)} attack runs ({reused} reused: the same weights and settings measured before, "
          f"here or in {cache}); "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"; wrote {out}/compare.json, compare.md, curves.png, attacks.json, grids/")
    return rows, entries


if __name__ == "__main__":
    cli(CompareConfig, main)
