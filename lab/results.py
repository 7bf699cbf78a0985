"""results.py: RESULTS.md's tables, written from recorded runs; and the campaign that records them.

A recorded run is a folder results/<name>/, kept under version control (runs/ is not): the small JSON files
the run wrote (report.json, attacks.json and suite.json, tax.json without its cache, the training script's
config record) and record.json: the command, the machine, the thread count, the wall time and the commit.

A generated table sits in RESULTS.md between two marker lines, and nothing between them is written by hand:

    <!-- table NAME: written by python -m lab.results from results/ -->
    ...
    <!-- end table -->

    python -m lab.results                         rewrite every marked table of RESULTS.md from results/
    python -m lab.results --check                 exit 1, naming the tables, when RESULTS.md differs from
                                                  what results/ gives (tests/test_results.py runs it)
    python -m lab.results --campaign=7.3,7.4      run those sections' commands whose runs have no record yet
                                                  (--campaign=all: every section; --rerun: recorded ones
                                                  too), record each, rewrite the tables; stop and resume at will
    python -m lab.results --plan                  list the campaign: sections, runs, recorded wall times
    python -m lab.results --record=NAME           record RUNS' NAME from its run folder as it stands (a run
                                                  made by hand, with its command); --note says how it ran

Every rate in a generated table carries its 95% Wilson interval on the images behind it (0/50 only says
the rate is below 0.07); a spread over seeds is labelled as one.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from config import atomic, cli, option, write_json
from lab.report import (RECORDS, grid_table, ideal_table, image_counts, rate_cell, reached, runs_table, text_runs,
                        text_table, unsafe_runs, worst_case)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR, RESULTS_MD = ROOT / "results", ROOT / "RESULTS.md"
DOCS = {RESULTS_MD: True, ROOT / "README.md": False}  # the files with generated tables: provenance lines or not


@dataclasses.dataclass(frozen=True)
class Run:
    """One recorded run: what the campaign runs (from the repository root) and which of its files it keeps."""
    name: str        # results/<name>/
    section: str     # RESULTS.md's section that reads it
    command: str
    folder: str      # the run folder the command writes
    files: tuple = ("report.json",)
    commit: str = ""  # set: the code has left main; the campaign cannot run it, `git checkout <commit>` can


def _cached_tax(name: str, section: str, folder: str, options: str) -> Run:
    """A lab.tax run into runs/<folder> that starts from section 7.4's evaluation cache (runs/tax/tax.json)."""
    return Run(name, section, f"mkdir -p runs/{folder} && cp runs/tax/tax.json runs/{folder}/ && python -m lab.tax "
               f"{options} --name={folder}", f"runs/{folder}", ("tax.json",))


RUNS = [
    Run("eval_base", "1.1", "python evaluate.py --model=runs/base", "runs/base"),
    Run("eval_never_learned", "1.1", "python evaluate.py --unet=runs/never_learned --name=never_learned",
        "runs/never_learned"),
    Run("eval_random_unet", "1.1", "python evaluate.py --unet=random --name=random_unet", "runs/random_unet"),
    Run("quickstart_s0", "2.1", "python nft_train.py --name=quickstart_s0", "runs/quickstart_s0"),
    Run("compare", "3.1", "python -m lab.compare", "runs/compare", ("compare.json", "attacks.json")),
    Run("compare_full", "3.3", "python -m lab.compare --suite=full --only=finetune_unet,swap_decoder+finetune_unet,"
        "remove_filter --optimizers=adam --lrs=1e-4 --name=compare_full", "runs/compare_full",
        ("compare.json", "attacks.json")),
    Run("safepatch", "3.6", "python -m lab.baselines --baseline=safepatch && python evaluate.py --model=runs/safepatch",
        "runs/safepatch"),
    Run("compare_safepatch", "3.6", "python -m lab.compare --defences=safepatch --name=compare_safepatch",
        "runs/compare_safepatch", ("compare.json", "attacks.json")),
    *[Run(f"pubdec_s{s}", "2.2", f"python evaluate.py --model=runs/tax_patronus_s{s} --vae=runs/base --seed={s} "
          f"--name=pubdec_s{s}", f"runs/pubdec_s{s}") for s in (1, 2)],
    *[Run(f"attack_s{s}", "2.2", f"python attack.py --model=runs/tax_patronus_s{s} --seed={s} --checkpoints=0,100,300 "
          f"--save=false --name=attack_s{s}", f"runs/attack_s{s}", ("attacks.json",)) for s in (1, 2)],
    Run("noise_s0", "9", "python nft_train.py --moderator.cal_noise=0.3 --name=noise_s0", "runs/noise_s0",
        commit="881bcdd"),
    Run("fn08_s0", "9", "python nft_train.py --feature_noise=0.8 --name=fn08_s0", "runs/fn08_s0", commit="22c967a"),
    Run("fn08_no_ring", "9", "python nft_train.py --feature_noise=0.8 --data.holdout=ring --name=fn08_no_ring",
        "runs/fn08_no_ring", commit="22c967a"),
    Run("noring_basevae", "9", "python evaluate.py --model=runs/tax_patronus_no_ring --vae=runs/base "
        "--name=noring_basevae", "runs/noring_basevae"),
    Run("open50_s0", "7.3", "python nft_train.py --open_share=0.5 --name=open50_s0", "runs/open50_s0"),
    Run("open50m_s0", "7.3", "python nft_train.py --open_share=0.5 --moderator.open_share=0.5 --name=open50m_s0",
        "runs/open50m_s0", commit="a2e982a"),
    Run("open50_basevae", "7.3", "python evaluate.py --model=runs/open50_s0 --vae=runs/base --name=open50_basevae",
        "runs/open50_basevae"),
    Run("open100_s0", "7.3", "python nft_train.py --open_share=1.0 --name=open100_s0", "runs/open100_s0"),
    Run("tax", "7.4", "python -m lab.tax --defences=patronus,safepatch", "runs/tax", ("tax.json",)),
    # section 7.5: generic pictures in the decoder's calibration; gen_*: today's commands at commit 8fd34f8, when
    # they were the default (--moderator.n_generic=1024), on the same UNets
    Run("gen_quickstart_s0", "7.5", "python nft_train.py --name=quickstart_s0", "runs/quickstart_s0", commit="8fd34f8"),
    Run("gen_tax", "7.5", "python -m lab.tax --defences=patronus,safepatch", "runs/tax", ("tax.json",),
        commit="8fd34f8"),
    *[Run(f"gen_attack_s{s}", "7.5", f"python attack.py --model=runs/tax_patronus_s{s} --seed={s} "
          f"--checkpoints=0,100,300 --save=false --name=attack_s{s}", f"runs/attack_s{s}", ("attacks.json",),
          commit="8fd34f8") for s in (1, 2)],
    Run("gen_quick", "7.5", "python -m lab.suites --model=runs/tax_patronus_s0 --suite=quick --benign=false",
        "runs/attack_tax_patronus_s0", ("attacks.json", "suite.json"), commit="8fd34f8"),
    *[Run(name, "7.5", f"python moderator.py {opts} --name={name} && python evaluate.py --model=runs/{name} "
          f"--name={name}", f"runs/{name}") for name, opts in (
        ("mod_no_ring", "--moderator.n_generic=0 --data.holdout=ring"),
        ("gen2_mod_s0", "--moderator.n_generic=1024"),
        ("gen2_mod_no_ring", "--moderator.n_generic=1024 --data.holdout=ring"))],
    *[Run(f"{name}_s{s}", "7.5", f"python moderator.py --moderator.n_generic={n} --data.holdout=ring --seed={s} "
          f"--name={name}_s{s} && python evaluate.py --model=runs/{name}_s{s} --name={name}_s{s} --seed={s}",
          f"runs/{name}_s{s}") for s in (1, 2) for name, n in (("gen2_mod_no_ring", 1024), ("mod_no_ring", 0))],
    *[Run(name, "7.5", f"python moderator.py --moderator.n_generic=1024 --moderator.generic_filter=true {opts} "
          f"--name={name} && python evaluate.py --model=runs/{name} --name={name} --seed={s}", f"runs/{name}")
      for name, opts, s in [("gen3_mod_s0", "--seed=0", 0)] + [
          (f"gen3_mod_no_ring_s{s}", f"--data.holdout=ring --seed={s}", s) for s in range(3)]],
    *[Run(f"gen3_s{s}", "7.5", f"cp -r runs/{src}.checkpoint runs/gen3_s{s}.checkpoint && python nft_train.py --resume "
          f"--seed={s} --moderator.n_generic=1024 --moderator.generic_filter=true --name=gen3_s{s}", f"runs/gen3_s{s}")
      for s, src in ((0, "quickstart_s0"), (1, "tax_patronus_s1"), (2, "tax_patronus_s2"))],
    Run("gen3_no_ring", "7.5", "cp -r runs/tax_patronus_no_ring.checkpoint runs/gen3_no_ring.checkpoint && python "
        "nft_train.py --resume --data.holdout=ring --moderator.n_generic=1024 --moderator.generic_filter=true "
        "--name=gen3_no_ring", "runs/gen3_no_ring"),
    Run("gen3_quick", "7.5", "python -m lab.suites --model=runs/gen3_s0 --suite=quick --benign=false --name=gen3_quick",
        "runs/gen3_quick", ("attacks.json", "suite.json")),
    *[Run(f"gen2_mod_s{s}", "7.5", f"python moderator.py --moderator.n_generic=1024 --seed={s} --name=gen2_mod_s{s} "
          f"&& python evaluate.py --model=runs/gen2_mod_s{s} --name=gen2_mod_s{s} --seed={s}", f"runs/gen2_mod_s{s}")
      for s in (1, 2)],
    Run("dec_attack_gen2_mod_s0", "7.5", "python attack.py --model=runs/gen2_mod_s0 --attack=finetune_decoder "
        "--steps=1000 --checkpoints=0,100,300,1000 --eval_repeats=2 --save=false --name=dec_attack_gen2_mod_s0",
        "runs/dec_attack_gen2_mod_s0", ("attacks.json",)),
    Run("tax_others", "7.4", "python -m lab.tax --defences=filter,safetext,esd,erase,moderator,nft --seeds=0 "
        "--holdouts=ring --name=tax_others", "runs/tax_others", ("tax.json",)),
    Run("quick_open100_s0", "4.2", "python -m lab.suites --model=runs/tax_patronus_s0 --suite=quick --benign=false",
        "runs/attack_tax_patronus_s0", ("attacks.json", "suite.json")),
    Run("mod_plain", "9", "python moderator.py --name=mod_plain && python evaluate.py --model=runs/mod_plain",
        "runs/mod_plain"),
    *[Run(f"novel_{m}", "7.1", f"python evaluate.py --model=runs/{m} --name=novel_{m}", f"runs/novel_{m}")
      for m in ("nft_only", "erase_only")],
    Run("novel_nft_basevae", "7.1", "python evaluate.py --model=runs/quickstart_s0 --vae=runs/base "
        "--name=novel_nft_basevae", "runs/novel_nft_basevae"),
    *[Run(name, "6.1", f"python moderator.py {opts} --name={name} && python evaluate.py --model=runs/{name}",
          f"runs/{name}") for name, opts in (
        ("mod_decoder_300", "--moderator.steps=300"),
        ("mod_decoder_hardened", "--moderator.harden=true --moderator.steps=300"),
        ("modonly_text", "--moderator.kind=text"),
        ("modonly_both", "--moderator.kind=both --moderator.harden=true --moderator.steps=300"))],
    *[Run(f"mod_plain_s{s}", "6.1", f"python moderator.py --seed={s} --name=mod_plain_s{s} && "
          f"python evaluate.py --model=runs/mod_plain_s{s} --seed={s}", f"runs/mod_plain_s{s}") for s in (1, 2)],
    *[Run(f"dec_attack_{m}", "6.2", f"python attack.py --model=runs/{m} --attack=finetune_decoder --steps=1000 "
          f"--checkpoints=0,100,300,1000 --eval_repeats=2 --save=false --name=dec_attack_{m}",
          f"runs/dec_attack_{m}", ("attacks.json",)) for m in ("mod_plain", "mod_decoder_hardened")],
    Run("ideal", "4.1", "python -m lab.suites --model=runs/patronus --suite=ideal --benign=false --name=ideal "
        "--cache=runs/ideal_cache.json", "runs/ideal",
        ("attacks.json", "suite.json")),
    Run("wide_rmsprop", "4.6", "python -m lab.suites --model=runs/patronus --suite=wide --only=finetune_unet,"
        "swap_decoder+finetune_unet --benign=false --optimizers=rmsprop --lrs=1e-4,1e-3 --name=wide_rmsprop",
        "runs/wide_rmsprop", ("attacks.json", "suite.json")),
    *[Run(f"lora_r{r}_{a.replace('+', '_')}_{lr}", "4.7", f"python attack.py --model=runs/patronus --attack={a} "
          f"--rank={r} --lr={lr} --steps=1000 --checkpoints=0,50,100,200,500,1000 --save=false "
          f"--name=lora_r{r}_{a.replace('+', '_')}_{lr}", f"runs/lora_r{r}_{a.replace('+', '_')}_{lr}",
          ("attacks.json",)) for a in ("lora_unet", "swap_decoder+lora_unet") for lr in ("1e-3", "1e-2")
      for r in (16, 64)],
    *[Run(name, "4.8", "python attack.py --model=runs/patronus --attack=swap_decoder+finetune_unet --save=false "
          f"{opts} --name={name}", f"runs/{name}", ("attacks.json",)) for name, opts in (
        ("latents_mean", "--checkpoints=0,100,300 --latents=mean"),
        ("latents_sample", "--checkpoints=0,100,300 --latents=sample"),
        ("mean_noclip", "--lr=1e-3 --steps=1000 --checkpoints=0,50,100,200,500,1000"),
        ("sample_clip", "--lr=1e-3 --steps=1000 --checkpoints=0,50,100,200,500,1000 --latents=sample --clip_grad=1.0"))],
    Run("text", "4.9", "python -m lab.suites --model=runs/patronus --suite=text --name=text --cache=runs/text_cache.json",
        "runs/text",
        ("attacks.json", "suite.json")),
    Run("compare_text", "3.5", "python -m lab.compare --suite=text --lrs=0.1 --only=textual_inversion,embedding,"
        "swap_decoder+textual_inversion,swap_decoder+embedding --name=compare_text",
        "runs/compare_text", ("compare.json", "attacks.json")),
    # planned, not recorded yet (section 4.4 says what it would measure)
    Run("full", "4.4", "python -m lab.suites --model=runs/patronus --suite=full --name=full "
        "--cache=runs/ideal_cache.json", "runs/full", ("attacks.json", "suite.json")),
    Run("cond_s0", "4.10", "python nft_train.py --conditioning_share=0.25 --name=cond_s0", "runs/cond_s0"),
    *[Run(f"cond_emb_s{s}", "4.10", f"python attack.py --model=runs/cond_s0 --attack=swap_decoder+embedding --lr=0.1 "
          f"--steps=200 --checkpoints=0,50,100,200 --n_images=512 --seed={s} --save=false --name=cond_emb_s{s}",
          f"runs/cond_emb_s{s}", ("attacks.json",)) for s in (0, 1, 2)],
    *[Run(f"cond_s{s}", "4.10", f"python nft_train.py --conditioning_share=0.25 --seed={s} --name=cond_s{s}",
          f"runs/cond_s{s}") for s in (1, 2)],
    Run("cond_no_ring", "4.10", "python nft_train.py --conditioning_share=0.25 --data.holdout=ring --name=cond_no_ring",
        "runs/cond_no_ring"),
    Run("quick_cond_s0", "4.10", "python -m lab.suites --model=runs/cond_s0 --suite=quick --benign=false "
        "--name=quick_cond_s0", "runs/quick_cond_s0", ("attacks.json", "suite.json")),
    *[Run(f"mod_{k}", "6.3", f"python nft_train.py --moderator.kind={k} --name=mod_{k}", f"runs/mod_{k}")
      for k in ("text", "both")],
    *[Run(f"parts_{m}_{a.replace('+', '_')}", "6.3", f"python attack.py --model=runs/{m} --attack={a} "
          + ("--steps=0 --checkpoints=0" if a == "swap_text_encoder" else "--steps=300 --checkpoints=0,100,300")
          + f" --save=false --name=parts_{m}_{a.replace('+', '_')}", f"runs/parts_{m}_{a.replace('+', '_')}",
          ("attacks.json",)) for m in ("patronus", "mod_text", "mod_both")
      for a in ("swap_text_encoder", "finetune_text_encoder", "swap_decoder+finetune_unet",
                "swap_text_encoder+finetune_unet")],
    Run("reta4_nft", "9", "python nft_train.py --moderator.kind=off --w_ret_adapted=4 --name=reta4_nft",
        "runs/reta4_nft", commit="715c479"),
    Run("proj_nft", "9", "python nft_train.py --moderator.kind=off --project_nft=true --name=proj_nft",
        "runs/proj_nft", commit="933c771"),
    Run("attack_nft_only", "9", "python attack.py --model=runs/nft_only --checkpoints=0,100,300 --save=false "
        "--name=attack_nft_only", "runs/attack_nft_only", ("attacks.json",)),
    Run("kv_nft", "9", "python nft_train.py --moderator.kind=off --nft_params=cross_kv --name=kv_nft", "runs/kv_nft",
        commit="cd7633d"),
    Run("attn_nft", "9", "python nft_train.py --moderator.kind=off --nft_params=attentions --name=attn_nft",
        "runs/attn_nft", commit="57131e7"),
    Run("mod_vae", "9", "python moderator.py --moderator.perceptual=vae --name=mod_vae && "
        "python evaluate.py --model=runs/mod_vae", "runs/mod_vae"),
    Run("mod_noise", "9", "python moderator.py --moderator.cal_noise=0.3 --name=mod_noise && "
        "python evaluate.py --model=runs/mod_noise", "runs/mod_noise", commit="881bcdd"),
    # the mixed-prompt default (commit 5466f82): mixed prompts in distillation (sections 7.4, 7.6 and 7.7)
    Run("mix50_s0", "7.6", "python nft_train.py --mix_share=0.5 --name=mix50_s0", "runs/mix50_s0"),
    Run("mix50_no_ring", "7.6", "python nft_train.py --mix_share=0.5 --data.holdout=ring --name=mix50_no_ring",
        "runs/mix50_no_ring"),
    *[Run(f"mix_s{s}", "2.2", f"python nft_train.py --seed={s} --name=tax_patronus_s{s}", f"runs/tax_patronus_s{s}")
      for s in (1, 2)],
    Run("mix_tax", "7.4", "python -m lab.tax --defences=patronus,safepatch", "runs/tax", ("tax.json",)),
    *[Run(f"mix_tax_s{s}", "7.4", f"mkdir -p runs/tax_s{s} && cp runs/tax/tax.json runs/tax_s{s}/ && python -m lab.tax "
          f"--defences=patronus --seeds={s} --holdouts= --name=tax_s{s}", f"runs/tax_s{s}", ("tax.json",))
      for s in (1, 2)],
    Run("mix_quick", "4.2", "python -m lab.suites --model=runs/tax_patronus_s0 --suite=quick --benign=false",
        "runs/attack_tax_patronus_s0", ("attacks.json", "suite.json")),
    *[Run(f"mix_emb_s{s}", "7.6", f"python attack.py --model=runs/mix50_s0 --attack=swap_decoder+embedding --lr=0.1 "
          f"--steps=200 --checkpoints=0,50,100,200 --n_images=512 --seed={s} --save=false --name=mix_emb_s{s}",
          f"runs/mix_emb_s{s}", ("attacks.json",)) for s in (0, 1, 2)],
    *[Run(f"swapft_{v}_s{s}", "7.6", f"python attack.py --model=runs/{m} --attack=swap_decoder+finetune_unet --lr=1e-3 "
          f"--steps=100 --checkpoints=0,50,100 --n_images=512 --seed={s} --save=false --name=swapft_{v}_s{s}",
          f"runs/swapft_{v}_s{s}", ("attacks.json",)) for v, m in (("open", "open100_s0"), ("mix", "mix50_s0"))
      for s in (1, 2, 3)],
    *[Run(f"mixgen_s{s}", "7.6", f"cp -r runs/{src}.checkpoint runs/mixgen_s{s}.checkpoint && python nft_train.py "
          f"--resume --seed={s} --moderator.n_generic=1024 --moderator.generic_filter=true --name=mixgen_s{s}",
          f"runs/mixgen_s{s}") for s, src in ((0, "mix50_s0"), (1, "tax_patronus_s1"), (2, "tax_patronus_s2"))],
    *[Run(f"mixes_{m}", "7.6", f"python -m lab.mixes --model=runs/{m}", f"runs/mixes_{m}", ("mixes.json",))
      for m in ("base", "open100_s0", "mix50_s0")],
    # today's default, mixed prompts and filtered generic pictures (sections 2.1, 2.2, 4.2, 7.4 and 7.7)
    Run("mg_s0", "2.1", "python nft_train.py --name=mg_s0", "runs/mg_s0"),
    Run("mg_tax", "7.4", "python -m lab.tax --defences=patronus,safepatch", "runs/tax", ("tax.json",)),
    *[_cached_tax(f"mg_tax_s{s}", "7.4", f"tax_s{s}", f"--defences=patronus --seeds={s} --holdouts=") for s in (1, 2)],
    Run("mg_quick", "4.2", "python -m lab.suites --model=runs/mixgen_s0 --suite=quick --benign=false "
        "--name=mixgen_quick", "runs/mixgen_quick", ("attacks.json", "suite.json")),
    *[Run(f"mg_{n}", "7.7", f"python moderator.py {o} --name={n}_mod_s0 && python evaluate.py --model=runs/{n}_mod_s0 "
          f"--name={n}_mod_s0", f"runs/{n}_mod_s0") for n, o in (("wcal30", "--moderator.w_cal=30"), (
              "wcal100", "--moderator.w_cal=100"), ("steps1200", "--moderator.steps=1200"),
              ("steps2400", "--moderator.steps=2400"))],
    # two moderator options on today's UNets (section 7.7), each resumed from its step-1000 checkpoint
    *[Run(f"mg_{v}_s{s}", "7.7", f"cp -r runs/{src}.checkpoint runs/mg{v}_s{s}.checkpoint && python nft_train.py "
          f"--resume{seed} {o} --name=mg{v}_s{s}", f"runs/mg{v}_s{s}")
      for v, o, runs in (("cal30", "--moderator.w_cal=30", (("mix50_s0", ""), ("mixgen_s1", " --seed=1"),
                                                              ("mixgen_s2", " --seed=2"))),
                         ("st", "--moderator.steps=1200", [(f"mixgen_s{s}", f" --seed={s}") for s in range(3)]))
      for s, (src, seed) in enumerate(runs)],
    # the conditioning attacker of section 4.10 on today's default
    Run("mg_cond_s0", "4.10", "python nft_train.py --conditioning_share=0.25 --name=mgcond_s0", "runs/mgcond_s0"),
    *[Run(f"mg_cond_emb_s{s}", "4.10", f"python attack.py --model=runs/mgcond_s0 --attack=swap_decoder+embedding "
          f"--lr=0.1 --steps=200 --checkpoints=0,50,100,200 --n_images=512 --seed={s} --save=false "
          f"--name=mgcond_emb_s{s}", f"runs/mgcond_emb_s{s}", ("attacks.json",)) for s in (0, 1, 2)],
    *[Run(f"mg_cond_swapft_s{s}", "4.10", "python attack.py --model=runs/mgcond_s0 "
          f"--attack=swap_decoder+finetune_unet --lr=1e-3 --steps=100 --checkpoints=0,50,100 --n_images=512 "
          f"--seed={s} --save=false --name=mgcond_swapft_s{s}", f"runs/mgcond_swapft_s{s}", ("attacks.json",))
      for s in (0, 1, 2)],
    Run("gen4k_mod_s0", "7.7", "python moderator.py --moderator.n_generic=4096 --moderator.generic_filter=true "
        "--name=gen4k_mod_s0 && python evaluate.py --model=runs/gen4k_mod_s0 --name=gen4k_mod_s0", "runs/gen4k_mod_s0"),
    # today's default without step 3 (section 5), and the star fine-tuned in after the decoder swap (section 7.8)
    Run("mg_erase_s0", "5", "python nft_train.py --unlearn_steps=1000 --name=erasemg_s0", "runs/erasemg_s0"),
    Run("mg_erase_basevae", "5", "python evaluate.py --model=runs/erasemg_s0 --vae=runs/base --name=erasemg_basevae",
        "runs/erasemg_basevae"),
    Run("mg_erase_quick", "5", "python -m lab.suites --model=runs/erasemg_s0 --suite=quick --benign=false "
        "--name=erasemg_quick", "runs/erasemg_quick", ("attacks.json", "suite.json")),
    _cached_tax("mg_tax_swap", "7.8", "tax_swap", "--defences= --models=runs/mixgen_s0,runs/mixgen_s1,runs/mixgen_s2 "
                "--seeds=0 --holdouts= --finetune_attack=swap_decoder+finetune_unet"),
    # the 1200-step moderator of section 7.7 (runs/mgst_s*): the star's fine-tuning and the quick suite
    _cached_tax("mg_tax_st", "7.7", "tax_st", "--defences= --models=runs/mgst_s0,runs/mgst_s1,runs/mgst_s2 --seeds=0 "
                "--holdouts="),
    Run("mg_st_quick", "7.7", "python -m lab.suites --model=runs/mgst_s0 --suite=quick --benign=false "
        "--name=mgst_quick", "runs/mgst_quick", ("attacks.json", "suite.json")),
    *[Run(f"mg_{n}_s{s}", "7.7", f"python moderator.py {o}--seed={s} --name={f}_s{s} && python evaluate.py "
          f"--model=runs/{f}_s{s} --name={f}_s{s} --seed={s}", f"runs/{f}_s{s}")
      for n, o, f in (("mod", "", "mgmod"), ("steps1200", "--moderator.steps=1200 ", "steps1200_mod")) for s in (1, 2)],
    # all of distillation's prompts mixed (section 9)
    *[Run(f"mg_mix100_s{s}", "9", f"python nft_train.py --mix_share=1.0 --seed={s} --name=mix100_s{s}", f"runs/mix100_s{s}")
      for s in (0, 2)],
]
# Two defaults changed after runs were recorded. A command that trains Patronus (or the decoder moderator), or
# reads a model it trained, gives today's default when run now; one recorded before a switch ran the default of
# the commit named here, which that commit's code gives back:
#   46829b1  before mixed prompts in distillation (nft_train.py --mix_share=0.5, commit 0181c79; records of
#            today's default since are named mix*, or mg_* after the next switch)
#   5466f82  before filtered generic pictures in the decoder's calibration (moderator.py --moderator.n_generic=1024
#            --moderator.generic_filter=true; records since are named mg_*)
BEFORE_MIX, BEFORE_GENERIC = "46829b1", "5466f82"
PATRONUS_FOLDERS = ("runs/patronus", "runs/tax_patronus_", "runs/quickstart_s0", "runs/cond_s0", "runs/mod_text",
                    "runs/mod_both", "runs/nft_only", "runs/erase_only", "runs/open50_s0", "runs/gen3_s0")
MODERATOR_FOLDERS = PATRONUS_FOLDERS + ("runs/mix50_", "runs/mod_plain", "runs/mod_decoder", "runs/mod_vae")


def _trains_defaults(c: str) -> bool:
    """A lab command that trains Patronus (and the moderator alone) with their defaults when a folder is stale."""
    return "lab.tax" in c or ("lab.compare" in c and "--defences=safepatch" not in c)


def _before_mix(run: Run) -> bool:
    c = run.command
    return (not run.commit and not run.name.startswith(("mix", "mg_"))
            and ("nft_train.py" in c or _trains_defaults(c) or any(f in c for f in PATRONUS_FOLDERS)))


def _before_generic(run: Run) -> bool:
    c = run.command
    moderated = (("nft_train.py" in c and "--moderator.kind=off" not in c) or ("moderator.py" in c
                 and "--moderator.kind=text" not in c) or _trains_defaults(c) or any(f in c for f in MODERATOR_FOLDERS))
    return not run.commit and not run.name.startswith("mg_") and "--moderator.n_generic" not in c and moderated


RUNS = [dataclasses.replace(r, commit=BEFORE_MIX) if _before_mix(r) else r for r in RUNS]
RUNS = [dataclasses.replace(r, commit=BEFORE_GENERIC) if _before_generic(r) else r for r in RUNS]
BY_NAME = {r.name: r for r in RUNS}


# ---------------------------------------------------------------------------------------------------------
# cells and tables
def rate(v: float | None, n: int | None, digits: int = 3) -> str:
    """'0.956 [0.93, 0.97]': a rate of n images with its 95% Wilson interval ('-' when there is none)."""
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if not n else rate_cell(v * n, n, digits, 2)


def _after(r: dict) -> dict:
    """The after-attack evaluation's images (reports written before they were recorded: 50 unsafe, 125 benign)."""
    return r["attack"].get("n_after", {"unsafe": 50, "benign": 125})


def _ceiling(c: dict, mse: bool = True) -> str:
    return rate(c["accuracy"], c["n"]) + (f" ({c['mse']:.4f})" if mse else "")


# a column of a report table: its head and its cell for one evaluate.py / nft_train.py report
COLUMNS = {
    "UR defense": lambda r: rate(r["unsafe_rate"]["defense"], image_counts(r)["defense"]),
    "UR heldout": lambda r: rate(r["unsafe_rate"]["heldout"], image_counts(r)["heldout"]),
    "BA": lambda r: rate(r["benign_accuracy"], image_counts(r)["benign"]),
    "BA on rings": lambda r: rate(r["benign_accuracy_by_object"]["ring"],
                                  image_counts(r)["benign"] // len(r["benign_accuracy_by_object"]), 2),
    "false refusals": lambda r: rate(r["false_refusal_rate"], image_counts(r)["benign"]),
    "novel refusals": lambda r: rate(r.get("novel_refusal_rate"), image_counts(r)["novel"]),
    "UR, public decoder": lambda r: (rate(r["swap_decoder"]["unsafe_rate"]["all"], r["swap_decoder"]["n_images"])
                                     if "swap_decoder" in r else "-"),
    "UR after attack": lambda r: (rate(r["attack"]["unsafe_rate_after"]["all"], _after(r)["unsafe"])
                                  if "attack" in r else "-"),
    "BA after attack": lambda r: (rate(r["attack"]["benign_accuracy_after"], _after(r)["benign"])
                                  if "attack" in r else "-"),
    "MSE to base": lambda r: f"{r['fidelity']['mse_to_base']:.4f}" if r.get("fidelity") else "-",
    "FD to base": lambda r: f"{r['fidelity']['fd_to_base']:.2f}" if r.get("fidelity") else "-",
    "decoder ceiling on the star": lambda r: _ceiling(r["decoder_ceiling_novel"], mse=False),
    "decoder ceiling on the star (MSE)": lambda r: _ceiling(r["decoder_ceiling_novel"]),
    "decoder ceiling, benign shapes (MSE)": lambda r: _ceiling(r["decoder_ceiling"]),
}


def report_table(reports: dict[str, dict], columns: list[str], first: str = "model") -> str:
    """One row per report ({label: report}), the named COLUMNS."""
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += ["| " + " | ".join([label, *(COLUMNS[c](r) for c in columns)]) + " |" for label, r in reports.items()]
    return "\n".join(lines)


# evaluate.py's and nft_train.py's reports (nft_train.py's add the public-decoder and after-attack columns)
EVALUATION = ["UR defense", "UR heldout", "BA", "false refusals", "novel refusals", "UR, public decoder",
              "UR after attack", "BA after attack", "MSE to base", "FD to base", "decoder ceiling on the star"]
# variants of the quick start: the rings (a shape a variant may leave out) and the star's decoder ceiling
VARIANTS = ["UR defense", "UR heldout", "BA", "BA on rings", "false refusals", "novel refusals",
            "decoder ceiling on the star", "UR, public decoder", "UR after attack"]
# one trained model per row, seed by seed: the evaluation, the star's ceiling, the public decoder and the attack
SEED_ROWS = ["UR defense", "UR heldout", "BA", "false refusals", "novel refusals", "decoder ceiling on the star",
             "UR, public decoder", "UR after attack", "BA after attack"]
# the references: what their decoder can draw, benign shapes and the star
REFERENCES = ["UR defense", "UR heldout", "BA", "false refusals", "novel refusals",
              "decoder ceiling, benign shapes (MSE)", "decoder ceiling on the star (MSE)"]
# the decoder moderator alone
MODERATOR = ["UR defense", "UR heldout", "BA", "false refusals", "novel refusals",
             "decoder ceiling on the star (MSE)"]


def evaluation_table(reports: dict[str, dict]) -> str:
    return report_table(reports, EVALUATION)


def seeds_table(rows: list[tuple]) -> str:
    """A model at several seeds, one row per (seed, evaluate.py report, its public-decoder evaluation, its
    default attack's entry), and a last row that pools the seeds' images."""
    head = ["seed", "UR defense", "UR heldout", "BA", "false refusals", "novel refusals", "UR, public decoder",
            "UR after attack", "BA after attack"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pooled = {}
    for s, r, pub, att in rows:
        n = image_counts(r)
        after = att.get("n_after", {"unsafe": 50, "benign": 125})
        cells = [(r["unsafe_rate"]["defense"], n["defense"]), (r["unsafe_rate"]["heldout"], n["heldout"]),
                 (r["benign_accuracy"], n["benign"]), (r["false_refusal_rate"], n["benign"]),
                 (r["novel_refusal_rate"], n["novel"]), (pub["unsafe_rate"]["all"], pub["n_images"]),
                 (att["unsafe_rate_after"]["all"], after["unsafe"]), (att["benign_accuracy_after"], after["benign"])]
        for i, (v, k) in enumerate(cells):
            hits, total = pooled.get(i, (0, 0))
            pooled[i] = (hits + round(v * k), total + k)
        lines.append(f"| {s} | " + " | ".join(rate(v, k) for v, k in cells) + " |")
    lines.append(f"| {len(rows)} seeds pooled | " + " | ".join(rate(h / t, t) for h, t in pooled.values()) + " |")
    return "\n".join(lines)


def default_seeds(seed0: dict, tax: dict, public: dict[int, dict], attacked: dict[int, list]) -> list[tuple]:
    """Today's default at three seeds: seed 0's quick-start report, seeds 1 and 2 from the tax's evaluations,
    their public decoder (evaluate.py --vae) and default attack (attack.py)."""
    return [(0, seed0, seed0["swap_decoder"], seed0["attack"])] + [
        (s, tax["result"]["patronus"]["evals"][s], public[s] | {"n_images": public[s]["n_unsafe"]["all"]},
         attacked[s][-1]) for s in sorted(public)]


def pooled_rows(options: dict[str, list[dict]]) -> str:
    """One row per option: seeds_table's last row (the seeds' images pooled) for its reports at seeds 0, 1, ..."""
    tables = {k: seeds_table(trained_seeds(v)).splitlines() for k, v in options.items()}
    head = next(iter(tables.values()))[:2]
    return "\n".join([head[0].replace("| seed |", "| seeds pooled |", 1), head[1]]
                     + ["| " + k + " |" + t[-1].split(" |", 1)[1] for k, t in tables.items()])


def trained_seeds(reports: list[dict]) -> list[tuple]:
    """nft_train.py's reports at seeds 0, 1, ...: each carries its public-decoder evaluation and attack."""
    return [(s, r, r["swap_decoder"], r["attack"]) for s, r in enumerate(reports)]


def quickstart(report: dict) -> str:
    """What `python nft_train.py` printed: its own table (nft_train.table), as a code block."""
    from nft_train import table
    return "```\n" + table(report) + "\n```"


def compare_table(compare: dict, attacks: list[dict], key: str = "curve_faithful", name: str = "fUR") -> str:
    """compare.py's table (faithful UR after each attack, or plain: key="curve"), every rate with its interval."""
    from lab.compare import table
    from lab.suites import SUITES
    rows = {n: d["report"] for n, d in (compare["defences"] | compare["references"]).items()}
    return table(rows, [e for e in attacks if e["best"]], compare["attacks"], key, name, rate,
                 50 * SUITES[compare["suite"]]["eval_repeats"])


def seeds_pooled_table(entries: list[dict], attacks: list[str], key: str = "curve_faithful", n: int = 50) -> str:
    """One row per model, a column per attack: the rate at the last step of each seed's strongest run, the
    seeds' images pooled, with its 95% interval and the number of seeds."""
    best = [e for e in entries if e["best"]]
    models = list(dict.fromkeys(e["model"] for e in best))
    lines = ["| model | " + " | ".join(attacks) + " |", "|" + "---|" * (len(attacks) + 1)]
    for m in models:
        cells = []
        for a in attacks:
            runs = [e for e in best if e["model"] == m and e["attack"] == a]
            hits = sum(round(e[key][-1][1] * n) for e in runs)
            cells.append(f"{rate_cell(hits, n * len(runs), 2)} ({len(runs)})" if runs else "-")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def suite_tables(attacks: list[dict], suite: dict, grid: bool = True) -> str:
    """A suite against the never-learned model, faithful then plain UR; then every setting it tried."""
    n = 50 * suite["spec"]["eval_repeats"]
    out = [f"Faithful UR. {ideal_table(attacks, n=n)}",
           "Plain UR (any glyph), the same runs:\n\n" + ideal_table(attacks, key="curve", name="UR", n=n).split("\n\n", 1)[1]]
    if grid:
        out.append(f"Every setting tried: faithful UR at the last step with its 95% interval ({n} images a seed, "
                   f"seeds pooled), its peak along the curve in brackets, the setting kept for the seeds in bold; "
                   f"benign fine-tuning's rows (novel) give the star's accuracy:\n\n{grid_table(attacks, n=n)}")
    return "\n\n".join(out)


def novel_table(rows: dict[tuple[str, str], dict]) -> str:
    """Where the star's black images come from: a row per (UNet, decoder) pair, from evaluate.py reports."""
    lines = ["| UNet | decoder | black | mean pixel | what the evaluator reads in the rest | decoder ceiling on the star |",
             "|---|---|---|---|---|---|"]
    for (unet, decoder), r in rows.items():
        reads = ", ".join(f"{k} {v}" for k, v in r["novel_reads"].items() if k != "black") or "-"
        lines.append(f"| {unet} | {decoder} | {rate(r['novel_refusal_rate'], image_counts(r)['novel'], 2)} | "
                     f"{r['novel_mean_pixel']:.3f} | {reads} | {_ceiling(r['decoder_ceiling_novel'], mse=False)} |")
    return "\n".join(lines)


def tax_table(tax: dict) -> str:
    from lab.tax import TaxConfig, markdown
    fields = {f.name for f in dataclasses.fields(TaxConfig)}
    return markdown(tax["result"], TaxConfig(**{k: v for k, v in tax["run"]["config"].items() if k in fields}))


def offset_entries(text: list[dict], cond: list[dict]) -> list[dict]:
    """Section 4.10's runs: the offset attack behind the public decoder (Adam lr 1e-1) on the default of 4.9 and the
    never-learned model (the text suite's runs) and on the model trained with the conditioning attacker."""
    def of(model: str, label: str) -> list[dict]:
        runs = [e for e in text if e["attack"] == "swap_decoder+embedding" and e["lr"] == 0.1 and e["model"] == model]
        return [e | {"model": label} for e in sorted(runs, key=lambda e: e["seed"])]
    return of("defended", "runs/patronus") + cond + of("never_learned", "never-learned")


def suite_pair(suites: dict[str, list[dict]], model: str = "defended", n: int = 50) -> str:
    """One model's suite under several versions ({label: attacks.json}): per attack, the steps its worst run took
    to fUR 0.5, the highest fUR any run reaches at any checkpoint (95% interval over n images), and the lowest
    benign accuracy after any run."""
    groups = {label: unsafe_runs(entries) for label, entries in suites.items()}
    first = next(iter(groups.values()))
    lines = ["| attack | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]
    for attack in (a for a, by_model in first.items() if model in by_model):
        cells = []
        for by_attack in groups.values():
            runs = by_attack.get(attack, {}).get(model)
            if not runs:
                cells.append("-")
                continue
            peak = max(v for e in runs for _, v in e["curve_faithful"])
            ba = min(e["benign_accuracy_after"] for e in runs)
            cells.append(f"{reached(worst_case(runs)[1]['curve_faithful'])}; peak {rate_cell(peak * n, n, 2)}; "
                         f"BA after {ba:.2f}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


STAR_N = 100  # lab.tax: 25 star prompts x STAR_REPEATS images per checkpoint of the star's fine-tuning


def _star_rows(taxes: list[dict]) -> list[tuple[str, dict]]:
    """(label, result row) of the base and of Patronus at each trained seed (lab.tax runs whose first seed is it)."""
    return [("base", taxes[0]["result"]["base"])] + [(f"patronus, seed {t['run']['config']['seeds'].split(',')[0]}",
                                                      t["result"]["patronus"]) for t in taxes]


def _star_cells(r: dict, swapped: dict | None = None) -> str:
    """A row's decoder ceiling on the star, then its star fine-tuning at 300 and 1000 steps (and swapped's)."""
    ceil = r["evals"][0]["decoder_ceiling_novel"]
    curves = [r["star"]] + ([swapped["star"]] if swapped else [])
    return " | ".join([rate_cell(ceil["accuracy"] * ceil["n"], ceil["n"], 2, 2)] + [
        rate_cell(dict(c)[k] * STAR_N, STAR_N, 2, 2) for c in curves for k in (300, 1000)])


def star_seeds_table(taxes: list[dict]) -> str:
    """The star's fine-tuning on Patronus trained at each seed, beside its decoder's ceiling on the star, and the
    base's."""
    rows = ["| model | decoder ceiling on the star | star fine-tuning, 300 steps | star fine-tuning, 1000 steps |",
            "|---|---|---|---|"]
    return "\n".join(rows + [f"| {label} | {_star_cells(r)} |" for label, r in _star_rows(taxes)])


def star_swap_table(taxes: list[dict], swapped: dict) -> str:
    """star_seeds_table's rows, and the same fine-tuning after the public decoder is swapped in (swapped: one
    lab.tax run with --models, the trained seeds' folders in seed order)."""
    rows = ["| model | decoder ceiling on the star | moderated decoder, 300 steps | 1000 steps | "
            "public decoder swapped in, 300 steps | 1000 steps |", "|---|---|---|---|---|---|"]
    return "\n".join(rows + [f"| {label} | {_star_cells(r, s)} |" for (label, r), s in
                             zip(_star_rows(taxes), swapped["result"].values())])  # (its base row comes first)


def star_pooled_table(groups: dict[str, list[list]], n: int = STAR_N) -> str:
    """The star's fine-tuning after 300 and 1000 steps, one row per model ({label: [its lab.tax star curve, ...]},
    one curve per trained seed), the seeds' images pooled; n images per checkpoint and curve."""
    rows = ["| model | seeds | star fine-tuning, 300 steps | 1000 steps | per seed, 1000 steps |", "|---|---|---|---|---|"]
    for label, curves in groups.items():
        at = {k: [dict(c)[k] for c in curves] for k in (300, 1000)}
        rows.append(f"| {label} | {len(curves)} | " + " | ".join(rate_cell(sum(v) * n, len(v) * n, 2)
                                                                for v in at.values())
                    + " | " + " / ".join(f"{v:.2f}" for v in at[1000]) + " |")
    return "\n".join(rows)


def tax_block(tax: dict, head: str = "| defence | BA") -> str:
    """One block of the tax's Markdown, the one that starts with `head` (by default the table of the defences)."""
    return next(b for b in tax_table(tax).split("\n\n") if b.startswith(head))


def tax_blocks(tax: dict) -> str:
    """An earlier default's tax: the table of the defences and each left-out shape's BA."""
    return tax_block(tax) + "\n\n" + tax_block(tax, "| defence | circle")


def mixes_table(R: dict) -> str:
    """lab/mixes.py's curves, one row per model."""
    from lab.mixes import markdown
    return markdown({r["mixes.json"]["run"]["config"]["model"]: r["mixes.json"]["curve"] for r in R.values()})


def swap_seeds_table(R: dict, n: int = 50) -> str:
    """The quick suite's decoder swap before UNet fine-tuning (Adam 1e-3, its strongest setting) on the open-prompt
    default and the mixed-prompt one: the suite's seed 0 and attack.py's seeds 1 to 3, then the last step pooled
    over seeds."""
    entries, pooled = [], []
    for label, suite, prefix in (("open prompts (`open100_s0`)", "quick_open100_s0", "swapft_open"),
                                 ("mixed prompts (`mix50_s0`)", "mix_quick", "swapft_mix")):
        runs = [e for e in R[suite]["attacks.json"] if e["attack"] == "swap_decoder+finetune_unet"
                and e["model"] == "defended" and e["lr"] == 1e-3]
        runs += [e for s in (1, 2, 3) for e in R[f"{prefix}_s{s}"]["attacks.json"]]
        entries += [e | {"model": label} for e in runs]
        last = [e["curve_faithful"][-1][1] for e in runs]
        pooled.append(f"| {label} | {len(runs)} | {rate_cell(sum(last) * n, len(runs) * n, 2)} | "
                      f"{min(last):.2f} to {max(last):.2f} |")
    return (runs_table(entries, n=n) + "\n\nThe last step, the seeds' images pooled:\n\n"
            "| model | seeds | fUR at step 100 "
            "| range over seeds |\n|---|---|---|---|\n" + "\n".join(pooled))


def _reports(R: dict) -> dict:
    """{record name: its report.json} for records of evaluate.py / nft_train.py runs."""
    return {k: v["report.json"] for k, v in R.items()}


def _entries(R: dict) -> list[dict]:
    """Every attack entry of the records' attacks.json files, in the records' order."""
    return [e for v in R.values() for e in v["attacks.json"]]


TODAY = ("mg_s0", "mixgen_s1", "mixgen_s2")  # today's default at seeds 0, 1, 2
TAX_TODAY = ("mg_tax", "mg_tax_s1", "mg_tax_s2")  # lab.tax on today's default, first seed 0, 1, 2 (star fine-tuning)
# two moderator options on today's UNets, seeds 0, 1, 2 (section 7.7)
CANDIDATES = {"today's": TODAY, "w_cal 30": tuple(f"mg_cal30_s{s}" for s in range(3)),
              "1200 steps": tuple(f"mg_st_s{s}" for s in range(3))}

# name: (the records it reads, how they become a table). A record is {file name: its content, "record": ...}.
TABLES = {
    "quickstart": (["mg_s0"], lambda R: quickstart(R["mg_s0"]["report.json"])),
    "references": (["eval_base", "eval_never_learned", "eval_random_unet"], lambda R: report_table({
        "base": R["eval_base"]["report.json"], "never-learned UNet (same CLIP and VAE)":
        R["eval_never_learned"]["report.json"], "a randomly initialised UNet": R["eval_random_unet"]["report.json"]}, REFERENCES)),
    "seeds": (list(TODAY), lambda R: seeds_table(trained_seeds([r["report.json"] for r in R.values()]))),
    "seeds-open": (["open100_s0", "tax", "pubdec_s1", "pubdec_s2", "attack_s1", "attack_s2"], lambda R: seeds_table(
        default_seeds(R["open100_s0"]["report.json"], R["tax"]["tax.json"],
                      {s: R[f"pubdec_s{s}"]["report.json"] for s in (1, 2)},
                      {s: R[f"attack_s{s}"]["attacks.json"] for s in (1, 2)}))),
    "quickstart-intervals": (["mg_s0"], lambda R: evaluation_table({
        "base": R["mg_s0"]["report.json"]["base"] | {"attack": R["mg_s0"]["report.json"]["base_attack"]},
        "Patronus": R["mg_s0"]["report.json"]})),
    "open-prompts": (["open50_s0", "open50_basevae", "open50m_s0", "open100_s0"],
                     lambda R: evaluation_table(_reports(R))),
    "tax": (["mg_tax"], lambda R: tax_table(R["mg_tax"]["tax.json"])),
    "tax-headline": (["mg_tax"], lambda R: tax_block(R["mg_tax"]["tax.json"])),
    "tax-mix": (["mix_tax"], lambda R: tax_blocks(R["mix_tax"]["tax.json"])),
    "tax-open": (["tax"], lambda R: tax_blocks(R["tax"]["tax.json"])),
    "tax-star-seeds": (list(TAX_TODAY), lambda R: star_seeds_table(
        [r["tax.json"] for r in R.values()])),
    "tax-star-seeds-mix": (["mix_tax", "mix_tax_s1", "mix_tax_s2"], lambda R: star_seeds_table(
        [r["tax.json"] for r in R.values()])),
    "tax-others": (["tax_others"], lambda R: tax_table(R["tax_others"]["tax.json"]).split("\n\nEach shape's")[0]),
    "quick-default": (["mg_quick"], lambda R: suite_tables(R["mg_quick"]["attacks.json"],
                                                            R["mg_quick"]["suite.json"])),
    "compare-faithful": (["compare"], lambda R: compare_table(R["compare"]["compare.json"],
                                                              R["compare"]["attacks.json"])),
    "compare-plain": (["compare"], lambda R: compare_table(R["compare"]["compare.json"], R["compare"]["attacks.json"],
                                                           "curve", "UR")),
    "safepatch": (["safepatch"], lambda R: evaluation_table({"safepatch": R["safepatch"]["report.json"]})),
    "compare-safepatch": (["compare_safepatch"], lambda R: compare_table(R["compare_safepatch"]["compare.json"],
                                                                         R["compare_safepatch"]["attacks.json"])),
    "variants-2": (["quickstart_s0", "noise_s0", "fn08_s0", "fn08_no_ring", "noring_basevae"],
                   lambda R: report_table(_reports(R), VARIANTS)),
    "novel-sources": (["eval_base", "mod_plain", "novel_nft_basevae", "quickstart_s0", "novel_nft_only",
                       "novel_erase_only"], lambda R: novel_table({
        ("base", "base"): R["eval_base"]["report.json"], ("base", "moderated (`mod_plain`)"): R["mod_plain"]["report.json"],
        ("NFT (`quickstart_s0`'s)", "base"): R["novel_nft_basevae"]["report.json"],
        ("NFT (`quickstart_s0`)", "moderated"): R["quickstart_s0"]["report.json"],
        ("NFT (`nft_only`, trained apart)", "base"): R["novel_nft_only"]["report.json"],
        ("erasure (`erase_only`)", "base"): R["novel_erase_only"]["report.json"]})),
    "moderator-alone": (["eval_base", "mod_plain", "mod_decoder_300", "mod_decoder_hardened", "modonly_text",
                         "modonly_both"], lambda R: report_table(_reports(R), [
                            *MODERATOR, "decoder ceiling, benign shapes (MSE)", "MSE to base", "FD to base"],
                            "moderator")),
    "moderator-seeds": (["mod_plain", "mod_plain_s1", "mod_plain_s2"], lambda R: report_table(
        _reports(R), MODERATOR, "moderator")),
    "decoder-attack": (["dec_attack_mod_plain", "dec_attack_mod_decoder_hardened"], lambda R: runs_table(
        _entries(R), n=100)),
    "compare-full-faithful": (["compare_full"], lambda R: compare_table(R["compare_full"]["compare.json"],
                                                                        R["compare_full"]["attacks.json"])),
    "compare-full-plain": (["compare_full"], lambda R: compare_table(R["compare_full"]["compare.json"],
                                                                     R["compare_full"]["attacks.json"], "curve", "UR")),
    "ideal": (["ideal"], lambda R: suite_tables(R["ideal"]["attacks.json"], R["ideal"]["suite.json"])),
    "rmsprop": (["wide_rmsprop"], lambda R: suite_tables(R["wide_rmsprop"]["attacks.json"],
                                                         R["wide_rmsprop"]["suite.json"])),
    "lora": ([r.name for r in RUNS if r.section == "4.7"], lambda R: runs_table(_entries(R), n=50)),
    "posterior": ([r.name for r in RUNS if r.section == "4.8"], lambda R: runs_table(_entries(R), n=50)),
    "text": (["text"], lambda R: suite_tables(R["text"]["attacks.json"], R["text"]["suite.json"], grid=False)
             + "\n\nEvery run: the glyph rate on 50 prompts without a colour word (any colour, not black) and the "
             "words prompt_search found:\n\n" + text_table(text_runs(R["text"]["attacks.json"]))),
    "step-3": (["novel_nft_only", "attack_nft_only", "reta4_nft", "proj_nft", "kv_nft", "attn_nft"],
               lambda R: report_table({
        "nft_only": R["novel_nft_only"]["report.json"] | {"attack": R["attack_nft_only"]["attacks.json"][-1]},
        **{k: R[k]["report.json"] for k in ("reta4_nft", "proj_nft", "kv_nft", "attn_nft")}},
        [*VARIANTS[:-2], "UR after attack", "BA after attack"])),
    "conditioning": (["cond_s0", "cond_s1", "cond_s2"], lambda R: seeds_table(trained_seeds(
        [R[f"cond_s{s}"]["report.json"] for s in range(3)]))),
    "conditioning-ring": (["cond_s0", "cond_no_ring"], lambda R: report_table(_reports(R), VARIANTS)),
    "conditioning-quick": (["quick_cond_s0"], lambda R: "Faithful UR. " + ideal_table(
        R["quick_cond_s0"]["attacks.json"], n=50)),
    "conditioning-offset": (["text", "cond_emb_s0", "cond_emb_s1", "cond_emb_s2"], lambda R: runs_table(
        offset_entries(R["text"]["attacks.json"], [e for s in range(3) for e in R[f"cond_emb_s{s}"]["attacks.json"]]), n=50)),
    "conditioning-today": (["mg_s0", "mg_cond_s0"] + [f"{k}_s{s}" for k in ("mix_emb", "mg_cond_emb", "mg_cond_swapft")
                                                       for s in range(3)], lambda R: report_table(
        {"today's default (`mg_s0`)": R["mg_s0"]["report.json"],
         "with the conditioning attacker (`mgcond_s0`)": R["mg_cond_s0"]["report.json"]},
        [*SEED_ROWS, "FD to base"])
        + "\n\nThe offset behind the public decoder (Adam at lr 1e-1, 200 steps; today's UNet is `mix50_s0`'s):\n\n"
        + runs_table([e for k in ("mix_emb", "mg_cond_emb") for s in range(3) for e in R[f"{k}_s{s}"]["attacks.json"]],
                     n=50)
        + "\n\nThe decoder swap before UNet fine-tuning (Adam at lr 1e-3, 100 steps):\n\n"
        + runs_table([e for s in range(3) for e in R[f"mg_cond_swapft_s{s}"]["attacks.json"]], n=50)),
    "text-moderator": (["quickstart_s0", "mod_text", "mod_both"], lambda R: evaluation_table({
        "decoder (default, `quickstart_s0`)": R["quickstart_s0"]["report.json"],
        "text (`mod_text`)": R["mod_text"]["report.json"], "both (`mod_both`)": R["mod_both"]["report.json"]})),
    "text-moderator-parts": ([r.name for r in RUNS if r.name.startswith("parts_")], lambda R: runs_table(
        _entries(R), n=50)),
    "compare-text": (["compare_text"], lambda R: compare_table(R["compare_text"]["compare.json"],
                                                            R["compare_text"]["attacks.json"])
                     + "\n\nThe same attacks at seeds 0, 1 and 2: faithful UR at the last step, the seeds' images "
                     "pooled (in brackets, how many seeds):\n\n"
                     + seeds_pooled_table(R["compare_text"]["attacks.json"], R["compare_text"]["compare.json"]["attacks"])),
    "perceptual": (["mod_plain", "mod_vae"], lambda R: report_table(_reports(R), MODERATOR, "moderator")),
    "cal-noise": (["mod_plain", "mod_noise"], lambda R: report_table(_reports(R), MODERATOR, "moderator")),
    "generic-moderator": (["mod_plain", "gen2_mod_s0", "mod_no_ring", "gen2_mod_no_ring"], lambda R: report_table(
        _reports(R), [*MODERATOR[:5], "BA on rings", "decoder ceiling on the star (MSE)",
                      "decoder ceiling, benign shapes (MSE)", "MSE to base", "FD to base"], "moderator")),
    "generic-ring-seeds": ([f"{m}_s{s}" for s in (1, 2) for m in ("mod_no_ring", "gen2_mod_no_ring")],
                           lambda R: report_table(_reports(R), [*MODERATOR[:5], "BA on rings",
                                                                "decoder ceiling on the star (MSE)"], "moderator")),
    "generic-moderator-seeds": (["mod_plain_s1", "gen2_mod_s1", "mod_plain_s2", "gen2_mod_s2"], lambda R: report_table(
        _reports(R), [*MODERATOR[:5], "BA on rings", "decoder ceiling on the star (MSE)", "MSE to base", "FD to base"],
        "moderator")),
    "generic-filter": (["gen2_mod_s0", "gen3_mod_s0", "gen2_mod_no_ring", "gen3_mod_no_ring_s0", "gen2_mod_no_ring_s1",
                        "gen3_mod_no_ring_s1", "gen2_mod_no_ring_s2", "gen3_mod_no_ring_s2"], lambda R: report_table(
        _reports(R), [*MODERATOR[:5], "BA on rings", "decoder ceiling on the star (MSE)", "FD to base"], "moderator")),
    "moderator-candidates": ([k for keys in CANDIDATES.values() for k in keys], lambda R: report_table(
        {f"seed {s}, {label}": R[keys[s]]["report.json"] for s in range(3) for label, keys in CANDIDATES.items()},
        [*SEED_ROWS, "FD to base"])
        + "\n\n" + pooled_rows({label: [R[k]["report.json"] for k in keys] for label, keys in CANDIDATES.items()})),
    "moderator-options": (["gen3_mod_s0", "gen4k_mod_s0", "mg_wcal30", "mg_wcal100", "mg_steps1200", "mg_steps2400"],
                          lambda R: report_table(_reports(R), [*MODERATOR[:5], "decoder ceiling on the star (MSE)",
                                                               "FD to base"], "moderator")),
    "generic-decoder-attack": (["dec_attack_mod_plain", "dec_attack_gen2_mod_s0"], lambda R: runs_table(
        _entries(R), n=100)),
    "generic-quickstart": (["quickstart_s0", "gen_quickstart_s0"], lambda R: report_table({
        "open prompts (commit 46829b1)": R["quickstart_s0"]["report.json"],
        "generic pictures": R["gen_quickstart_s0"]["report.json"]},
        [*VARIANTS, "BA after attack", "MSE to base", "FD to base"])),
    "generic-seeds": (["gen_quickstart_s0", "gen_tax", "pubdec_s1", "pubdec_s2", "gen_attack_s1", "gen_attack_s2"],
                      lambda R: seeds_table(default_seeds(
        R["gen_quickstart_s0"]["report.json"], R["gen_tax"]["tax.json"],
        {s: R[f"pubdec_s{s}"]["report.json"] for s in (1, 2)},
        {s: R[f"gen_attack_s{s}"]["attacks.json"] for s in (1, 2)}))),
    "generic-quick": (["quick_open100_s0", "gen_quick", "gen3_quick"], lambda R: suite_pair({
        "open prompts (commit 46829b1)": R["quick_open100_s0"]["attacks.json"],
        "generic pictures": R["gen_quick"]["attacks.json"],
        "filtered generic pictures": R["gen3_quick"]["attacks.json"]})),
    "mixed-prompts": (["open100_s0", "mix50_s0", "mix50_no_ring"], lambda R: report_table(
        _reports(R), [*VARIANTS, "BA after attack", "MSE to base", "FD to base"])),
    "mixed-offset": (["text", "mix_emb_s0", "mix_emb_s1", "mix_emb_s2"], lambda R: runs_table(
        offset_entries(R["text"]["attacks.json"], [e for s in range(3) for e in R[f"mix_emb_s{s}"]["attacks.json"]]), n=50)),
    "mixed-swap": (["quick_open100_s0", "mix_quick"] + [f"swapft_{v}_s{s}" for v in ("open", "mix") for s in (1, 2, 3)],
                   swap_seeds_table),
    "mixed-generic": (["mix50_s0", "mixgen_s0", "mix_s1", "mixgen_s1", "mix_s2", "mixgen_s2"], lambda R: report_table(
        {f"seed {i // 2}, " + ("today's default" if i % 2 else "mixed prompts alone"): r["report.json"]
         for i, r in enumerate(R.values())}, SEED_ROWS)
        + "\n\nThe seeds pooled, mixed prompts alone (today's: section 2.2):\n\n"
        + seeds_table(trained_seeds([R[k]["report.json"] for k in ("mix50_s0", "mix_s1", "mix_s2")]))),
    "mixes": (["mixes_base", "mixes_open100_s0", "mixes_mix50_s0"], mixes_table),
    "mixed-quick": (["quick_open100_s0", "mix_quick"], lambda R: suite_pair({
        "open prompts (commit 46829b1)": R["quick_open100_s0"]["attacks.json"],
        "mixed prompts (commit 5466f82)": R["mix_quick"]["attacks.json"]})),
    "mixed-generic-quick": (["mix_quick", "mg_quick"], lambda R: suite_pair({
        "mixed prompts (commit 5466f82)": R["mix_quick"]["attacks.json"],
        "and filtered generic pictures (today's default)": R["mg_quick"]["attacks.json"]})),
    "generic-filter-ring": (["gen3_no_ring"], lambda R: report_table(_reports(R), VARIANTS)),
    "generic-filter-seeds": ([f"gen3_s{s}" for s in range(3)], lambda R: seeds_table(trained_seeds(
        [R[f"gen3_s{s}"]["report.json"] for s in range(3)]))),
    "no-step-3": (["mg_s0", "mg_erase_s0", "mg_erase_basevae"], lambda R: report_table({
        "today's default (`mg_s0`)": R["mg_s0"]["report.json"], "without step 3 (`erasemg_s0`)":
        R["mg_erase_s0"]["report.json"], "its UNet behind the public decoder": R["mg_erase_basevae"]["report.json"]},
        SEED_ROWS)),
    "no-step-3-quick": (["mg_quick", "mg_erase_quick"], lambda R: suite_pair({
        "today's default": R["mg_quick"]["attacks.json"], "without step 3": R["mg_erase_quick"]["attacks.json"]})),
    "star-swap": ([*TAX_TODAY, "mg_tax_swap"], lambda R: star_swap_table(
        [R[k]["tax.json"] for k in TAX_TODAY], R["mg_tax_swap"]["tax.json"])),
    "star-candidates": ([*TAX_TODAY, "mg_tax_st"], lambda R: star_pooled_table({
        "base": [R["mg_tax"]["tax.json"]["result"]["base"]["star"]],
        "today's (600 steps)": [R[k]["tax.json"]["result"]["patronus"]["star"] for k in TAX_TODAY],
        "1200 steps": [R["mg_tax_st"]["tax.json"]["result"][f"runs/mgst_s{s}"]["star"] for s in range(3)]})),
    "moderator-steps-seeds": (["gen3_mod_s0", "mg_steps1200", "mg_mod_s1", "mg_steps1200_s1", "mg_mod_s2",
                               "mg_steps1200_s2"], lambda R: report_table({
        f"seed {s}, {steps} steps": R[k]["report.json"] for s, steps, k in (
            (0, 600, "gen3_mod_s0"), (0, 1200, "mg_steps1200"), (1, 600, "mg_mod_s1"), (1, 1200, "mg_steps1200_s1"),
            (2, 600, "mg_mod_s2"), (2, 1200, "mg_steps1200_s2"))}, MODERATOR, "moderator")),
    "star-candidates-quick": (["mg_quick", "mg_st_quick"], lambda R: suite_pair({
        "today's (600 steps)": R["mg_quick"]["attacks.json"], "1200 steps": R["mg_st_quick"]["attacks.json"]})),
    "mix-all": (["mg_s0", "mg_mix100_s0", "mixgen_s2", "mg_mix100_s2"], lambda R: report_table({
        "seed 0, today's (half mixed)": R["mg_s0"]["report.json"], "seed 0, all mixed": R["mg_mix100_s0"]["report.json"],
        "seed 2, today's (half mixed)": R["mixgen_s2"]["report.json"],
        "seed 2, all mixed": R["mg_mix100_s2"]["report.json"]}, SEED_ROWS)),
    "generic-tax": (["gen_tax"], lambda R: tax_table(R["gen_tax"]["tax.json"]).split("\n\nEach shape's nearest")[0]),
}


def provenance(records: dict) -> str:
    """One line per record under a table: its command, machine, threads, wall time and commit."""
    lines = []
    for name, r in records.items():
        rec = r["record"]
        wall = f", {rec['seconds']:.0f} s" if rec.get("seconds") is not None else ""
        note = f"; {rec['note']}" if rec.get("note") else ""
        code = rec.get("code_commit") or (BY_NAME[name].commit if name in BY_NAME else "")
        at = f" (code at commit {code})" if code else ""
        lines.append(f"- `{name}`: `{rec['command']}`{at}; {rec['machine']}, {rec['threads']} thread"
                     f"{'s' if rec['threads'] != 1 else ''}{wall}; recorded {rec['recorded']} at {rec['commit']}{note}")
    return "Recorded runs (`results/`):\n" + "\n".join(lines)


def load(name: str, results: Path = RESULTS_DIR) -> dict:
    folder = results / name
    if not (folder / "record.json").is_file():
        raise FileNotFoundError(f"{folder}/record.json is missing: `python -m lab.results --campaign="
                                f"{BY_NAME[name].section}` records it" if name in BY_NAME else f"{folder} is missing")
    return {p.name: json.loads(p.read_text()) for p in folder.glob("*.json") if p.name != "record.json"} | {
        "record": json.loads((folder / "record.json").read_text())}


def render(name: str, results: Path = RESULTS_DIR, sources: bool = True) -> str:
    """A table and, with sources, the lines naming its recorded runs."""
    names, make = TABLES[name]
    records = {n: load(n, results) for n in names}
    return make(records).rstrip() + ("\n\n" + provenance(records) if sources else "")


BLOCK = re.compile(r"(<!-- table (?P<name>[\w-]+): written by python -m lab\.results from results/ -->\n)(.*?)"
                   r"(<!-- end table -->)", re.S)


def rewrite(text: str, results: Path = RESULTS_DIR, sources: bool = True) -> tuple[str, list[str]]:
    """text with every marked table written anew; and the names of the tables that changed."""
    changed = []

    def one(m):
        if m["name"] not in TABLES:
            raise KeyError(f"RESULTS.md marks a table {m['name']!r} that lab/results.py does not know "
                           f"({', '.join(TABLES)})")
        new = render(m["name"], results, sources) + "\n"
        if new != m[3]:
            changed.append(m["name"])
        return m[1] + new + m[4]
    return BLOCK.sub(one, text), changed


# ---------------------------------------------------------------------------------------------------------
# recording runs
def machine() -> str:
    """The machine in words: CPU model, instruction set (float rounding differs between AVX2 and AVX-512), GPU."""
    import torch
    cpu, flags = platform.processor() or platform.machine(), ""
    if Path("/proc/cpuinfo").is_file():
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {cpu} ({isa}), {gpu}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(run: Run, seconds: float | None = None, note: str = "", threads: int | None = None,
           where: str = "", results: Path = RESULTS_DIR) -> Path:
    """Copy run's files from its folder into results/<name>/ with its record.json (atomically, as a folder)."""
    src = ROOT / run.folder
    files = [*run.files, *(f for f in RECORDS if (src / f).is_file())]
    missing = [f for f in run.files if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}/{missing[0]} is missing: run `{run.command}` first")
    contents = {f: json.loads((src / f).read_text()) for f in files}
    contents.get("tax.json", {}).pop("reports", None)  # the evaluation cache: the table reads only "result"
    if threads is None:  # the run's own record of its torch threads (run_record), else this process's
        runs = [r.get("run", r) for got in contents.values() for r in (got if isinstance(got, list) else [got])
                if isinstance(r, dict)]  # attacks.json is a list of runs, each with its record
        threads = next((t for r in runs if (t := r.get("hardware", {}).get("torch_threads"))), None) or int(
            os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    with atomic(results / run.name) as tmp:
        tmp.mkdir()
        for f, got in contents.items():
            write_json(tmp / f, got)
        write_json(tmp / "record.json", {
            "command": run.command, "section": run.section, "machine": where or machine(), "threads": threads,
            "seconds": seconds, "recorded": datetime.date.today().isoformat(), "commit": git_commit(),
            "code_commit": run.commit, "note": note})
    return results / run.name


def clear_outputs(run: Run) -> None:
    """Remove the files a run's record copies from its folder before it runs, so that a command that appends
    (attack.py adds to attacks.json) or one stopped half-way does not leave its older entries in the record."""
    for f in run.files:
        (ROOT / run.folder / f).unlink(missing_ok=True)


def campaign(sections: list[str], rerun: bool) -> None:
    """Run every selected run that has no record (all with rerun), record it, then rewrite RESULTS.md."""
    todo = [r for r in RUNS if "all" in sections or r.section in sections]
    if not todo:
        raise SystemExit(f"no recorded run in section(s) {', '.join(sections)}; sections: "
                         f"{', '.join(dict.fromkeys(r.section for r in RUNS))}")
    for run in todo:
        have = RESULTS_DIR / run.name / "record.json"
        if have.is_file() and not rerun:
            print(f"{run.name}: recorded ({have}), skipped")
            continue
        if run.commit:
            print(f"{run.name}: its code is at commit {run.commit}, not on this branch: `git checkout {run.commit}` "
                  f"and `{run.command}`, then `python -m lab.results --record={run.name}`; skipped")
            continue
        print(f"{run.name} (section {run.section}): {run.command}", flush=True)
        clear_outputs(run)
        t0 = time.time()
        # `python` is this interpreter (the virtual environment that runs the campaign)
        subprocess.run(re.sub(r"(^|&& )python ", lambda m: f"{m[1]}{sys.executable} ", run.command), shell=True,
                       cwd=ROOT, check=True)
        record(run, seconds=round(time.time() - t0, 1), threads=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    write_results()


def plan() -> str:
    """The campaign, section by section: each run, whether it is recorded, its recorded wall time and threads."""
    lines, total = [], 0.0
    for section in sorted({r.section for r in RUNS}, key=lambda s: [int(x) for x in s.split(".")]):
        runs = [r for r in RUNS if r.section == section]
        recs = {r.name: json.loads(p.read_text()) for r in runs if (p := RESULTS_DIR / r.name / "record.json").is_file()}
        secs = sum(rec.get("seconds") or 0 for rec in recs.values())
        total += secs
        lines.append(f"section {section}: {len(recs)} of {len(runs)} runs recorded, {secs / 60:.0f} min recorded")
        for r in runs:
            rec = recs.get(r.name)
            when = "not recorded" if rec is None else (
                f"{rec['seconds'] / 60:.1f} min" if rec.get("seconds") else "time not recorded") + (
                f", {rec['threads']} thread(s), {rec['machine']}" if rec else "")
            lines.append(f"  {r.name}: {r.command}" + (f" (at commit {r.commit})" if r.commit else "") + f"  [{when}]")
    return "\n".join(lines + [f"total recorded wall time: {total / 60:.0f} min (runs without a recorded time "
                                 f"not counted)"])


def write_results() -> None:
    for doc, sources in DOCS.items():
        text, changed = rewrite(doc.read_text(), sources=sources)
        with atomic(doc) as tmp:
            tmp.write_text(text)
        print(f"{doc.name}: {len(changed)} table(s) rewritten{': ' + ', '.join(changed) if changed else ''}")


@dataclasses.dataclass
class ResultsConfig:
    check: bool = option(False, "exit 1 when RESULTS.md's tables differ from what results/ gives; write nothing")
    plan: bool = option(False, "list the campaign's sections and runs, recorded or not, with their wall times")
    campaign: str = option("", "sections to re-run and record (comma-separated, e.g. 7.3,7.4; all: every one)")
    rerun: bool = option(False, "with --campaign: run recorded runs again too")
    record: str = option("", "record the named run (lab/results.py's RUNS) from its run folder as it stands")
    note: str = option("", "with --record: how the run ran (threads, other jobs beside it), kept in its record")
    seconds: float = option(0.0, "with --record: the run's wall time in seconds, when known")
    machine: str = option("", "with --record: the machine the run ran on, when not this one (as lab.results "
                          "words it: '2-core AMD EPYC (AVX2), no GPU')")


def main(cfg: ResultsConfig):
    """RESULTS.md's tables from results/ (rewrite, --check), or re-run and record runs (--campaign, --record)."""
    if cfg.plan:
        print(plan())
        return
    if cfg.check:
        stale = [f"{doc.name} ({', '.join(changed)})" for doc, sources in DOCS.items()
                 if (changed := rewrite(doc.read_text(), sources=sources)[1])]
        if stale:
            print(f"differs from results/: {'; '.join(stale)}; `python -m lab.results` rewrites them")
            sys.exit(1)
        n = sum(len(BLOCK.findall(doc.read_text())) for doc in DOCS)
        print(f"every marked table ({n}, in {' and '.join(d.name for d in DOCS)}) is what results/ gives")
        return
    if cfg.record:
        if cfg.record not in BY_NAME:
            raise SystemExit(f"--record: unknown run {cfg.record!r}; known: {', '.join(BY_NAME)}")
        got = record(BY_NAME[cfg.record], seconds=cfg.seconds or None, note=cfg.note, where=cfg.machine)
        print(f"wrote {got}; `python -m lab.results` rewrites the tables")
    elif cfg.campaign:
        campaign(cfg.campaign.split(","), cfg.rerun)
    else:
        write_results()


if __name__ == "__main__":
    cli(ResultsConfig, main)
