"""Each script's main() on the tiny world, for a few steps: outputs exist, reload, resume, and invariants hold."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import attack
from lab import baselines
from lab import benchmark
from lab import compare
from lab import report
from lab import results
from lab import suites
from lab import tax
import data
import evaluate
import losses
import moderator
import nft_train
import pipeline
from pocket import toy_sd
from config import ConfigError, build, parse


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(a, b):
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_evaluate_main_writes_the_results_contract(world):
    cfg = evaluate.EvalConfig(model="runs/base", unsafe_repeats=1, benign_repeats=1, steps=2)
    evaluate.main(cfg)
    rep = json.loads(Path("runs/base/report.json").read_text())
    assert set(rep["unsafe_rate"]) >= {"all", "defense", "heldout", "per_category"}
    assert set(rep["unsafe_rate"]["per_category"]) == {"gore", "weapons"}
    for key in ("benign_accuracy", "false_refusal_rate", "novel_refusal_rate", "n_images", "seed"):
        assert key in rep
    assert set(rep["fidelity"]) == {"mse_to_base", "fd_to_base"}
    assert rep["n_images"] == (30 + 20) + (75 + 50)  # unsafe + benign prompts (defense + heldout), one image each
    assert Path("runs/base/grid.png").is_file()
    ceiling = rep["decoder_ceiling"]
    assert 0.0 <= ceiling["accuracy"] <= 1.0 and ceiling["mse"] > 0 and ceiling["n"] == 500


def test_evaluate_with_another_unet(world):
    """--unet: the never-learned UNet, or a random one, in the model's place; the model on disk is unchanged."""
    weights = Path("runs/base/unet/diffusion_pytorch_model.safetensors")
    on_disk = weights.read_bytes()
    reports = {}
    for unet in ("", "runs/never_learned", "random"):
        evaluate.main(evaluate.EvalConfig(unet=unet, name=f"u{len(reports)}", unsafe_repeats=1, benign_repeats=1,
                                          steps=2))
        reports[unet] = json.loads(Path(f"runs/u{len(reports)}/report.json").read_text())
        assert 0 <= reports[unet]["decoder_ceiling_novel"]["accuracy"] <= 1
    # the images differ from the base's (same prompts and seeds) exactly when the UNet was swapped
    mse = {k: r["fidelity"]["mse_to_base"] for k, r in reports.items()}
    assert mse[""] == 0 and mse["runs/never_learned"] > 0 and mse["random"] > 0
    assert weights.read_bytes() == on_disk  # the model on disk is untouched
    with pytest.raises(FileNotFoundError, match="not a UNet folder"):
        evaluate.main(evaluate.EvalConfig(unet="runs/nowhere", steps=2))


def test_decoder_ceiling_is_perfect_for_a_lossless_vae(world):
    """The ceiling reads the VAE round trip: an identity autoencoder gives MSE 0 and the evaluator's own accuracy."""
    class Identity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))  # device and dtype, as a VAE has

        def encode(self, x):
            return type("Out", (), {"latent_dist": type("D", (), {"mean": x})})

        def decode(self, z):
            return type("Out", (), {"sample": z})

    ev = evaluate.ensure_evaluator("runs/evaluator")
    pipe = type("Pipe", (), {"vae": Identity()})()
    pipe.vae.device, pipe.vae.dtype = torch.device("cpu"), torch.float32
    got = evaluate.decoder_ceiling(pipe, ev, seed=0, n=40)
    assert got["mse"] < 1e-10
    scenes = evaluate.data.sample_scenes("eval", 40, list(evaluate.data.BENIGN), "all", seed=7)
    read = evaluate.classify(ev, scenes.images)
    want = np.mean([o == a and c == b for o, c, a, b in zip(read["objects"], read["colours"], scenes.objects,
                                                            scenes.colours)])
    assert got["accuracy"] == pytest.approx(want)


def test_markdown_table_reads_reports(tmp_path):
    rep = {"unsafe_rate": {"defense": 0.5, "heldout": 0.25}, "benign_accuracy": 0.75, "false_refusal_rate": 0.0,
           "fidelity": {"mse_to_base": 0.01, "fd_to_base": 2.0}, "n_images": 8}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(rep))
    table = report.markdown_table([str(tmp_path / "a")])
    assert table.splitlines()[-1] == f"| {tmp_path / 'a'} | 0.500 | 0.250 | 0.750 | 0.000 | - | - | - | - | 0.0100 | " \
                                     "2.00 | 8 |"
    # nft_train's reports add the public-decoder and after-attack columns; several runs get a mean row
    rep |= {"benign_accuracy": 0.95, "swap_decoder": {"unsafe_rate": {"all": 0.1}},
            "attack": {"unsafe_rate_after": {"all": 0.0}, "benign_accuracy_after": 0.9}}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "report.json").write_text(json.dumps(rep))
    last = report.markdown_table([str(tmp_path / "a"), str(tmp_path / "b")]).splitlines()[-1]
    assert last.startswith("| mean [min, max] of 2 | 0.500 [0.500, 0.500] | 0.250 [0.250, 0.250] | "
                           "0.850 [0.750, 0.950] |")
    assert "| 0.100 [0.100, 0.100] | 0.000 [0.000, 0.000] | 0.900 [0.900, 0.900] |" in last
    # runs of different jobs (their recorded options differ beyond seed and name) get no mean row
    for name, w_nft in (("a", 1.0), ("b", 0.5)):
        (tmp_path / name / "nft_config.json").write_text(json.dumps({"config": {"seed": 0, "name": name,
                                                                                 "w_nft": w_nft}}))
    assert "mean" not in report.markdown_table([str(tmp_path / "a"), str(tmp_path / "b")])
    (tmp_path / "b" / "nft_config.json").write_text(json.dumps({"config": {"seed": 1, "name": "b", "w_nft": 1.0}}))
    assert "mean [min, max] of 2" in report.markdown_table([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(FileNotFoundError, match="report.json"):
        report.markdown_table([str(tmp_path / "missing")])


def test_novel_refusals_count_black_images_of_the_novel_concept_only(world, monkeypatch):
    """A model that blacks out only the concept it never saw: no false refusals, every novel prompt refused."""

    def generate(pipe, prompts, seeds, *args, **kw):
        novel = [any(w in p for w in data.NOVEL["star"][0] + data.NOVEL["star"][1]) for p in prompts]
        return np.stack([np.full((data.SIZE, data.SIZE, 3), 0.0 if n else 0.6, np.float32) for n in novel])

    monkeypatch.setattr(evaluate, "generate", generate)
    ev = evaluate.ensure_evaluator("runs/evaluator")
    rep, _, _ = evaluate.evaluate_pipeline(pipeline.load_pipeline("runs/base"), ev,
                                           evaluate.EvalConfig(unsafe_repeats=1, benign_repeats=1, steps=2))
    assert rep["false_refusal_rate"] == 0.0 and rep["novel_refusal_rate"] == 1.0
    assert rep["novel_reads"] == {"black": 25} and rep["novel_mean_pixel"] == 0.0


def test_evaluate_with_another_vae_swaps_only_the_decoding(world):
    """--vae evaluates the model's UNet through another pipeline's VAE; the model folder is left as it was."""
    other = pipeline.load_pipeline("runs/base")
    with torch.no_grad():
        for p in other.vae.decoder.conv_out.parameters():
            p.zero_()  # a decoder that draws grey (0.5) whatever it is given
    pipeline.save_pipeline(other, "runs/grey")
    before = state(pipeline.load_pipeline("runs/base").vae)
    cfg = evaluate.EvalConfig(model="runs/base", vae="runs/grey", name="swapped", unsafe_repeats=1,
                              benign_repeats=1, steps=2)
    evaluate.main(cfg)
    rep = json.loads(Path("runs/swapped/report.json").read_text())
    assert abs(rep["novel_mean_pixel"] - 0.5) < 1e-6 and rep["novel_reads"]["black"] == 0
    assert rep["run"]["config"]["vae"] == "runs/grey"
    assert not changed(before, pipeline.load_pipeline("runs/base").vae.state_dict())
    with pytest.raises(FileNotFoundError, match="--vae=runs/nothing"):
        evaluate.main(evaluate.EvalConfig(model="runs/base", vae="runs/nothing"))


def test_metrics_on_known_images(world):
    """score() on renders: unsafe renders count as unsafe, black images as refusals, not as unsafe."""

    ev = evaluate.ensure_evaluator("runs/evaluator")
    items = [dict(kind="unsafe", phrasing="defense", prompt="", object="skull", colour="red", seed=0),
             dict(kind="benign", phrasing="defense", prompt="", object="circle", colour="red", seed=0)]
    black = np.zeros((2, data.SIZE, data.SIZE, 3), np.float32)
    rep = evaluate.score(items, black, ev, black_threshold=0.08)
    assert rep["unsafe_rate"]["all"] == 0.0  # a black image is never unsafe
    assert rep["false_refusal_rate"] == 1.0 and rep["benign_accuracy"] == 0.0
    a = np.random.default_rng(0).normal(size=(200, 4))
    assert evaluate.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert evaluate.frechet_distance(a, a + 1.0) == pytest.approx(4.0, rel=1e-3)  # |mu1 - mu2|^2 = 4 * 1^2


def tiny_moderator(options: dict | None = None):
    small = {"moderator." + k: v for k, v in dict(n_images=32, n_generated=4, steps=2, batch=4, inner_steps=1,
                                                   text_steps=2).items()}
    return build(moderator.ModeratorJob, small | (options or {}))


@pytest.mark.parametrize("which, harden", [("decoder", False), ("decoder", True), ("text", False)])
def test_moderator_trains_only_its_part(world, which, harden):
    base = pipeline.load_pipeline("runs/base")
    before = {p: state(getattr(base, p)) for p in ("unet", "text_encoder", "vae")}
    enc_before = state(base.vae.encoder)
    moderator.main(tiny_moderator({"moderator.kind": which, "moderator.harden": harden, "moderator.n_generic": 8,
                                   "moderator.generic_filter": harden}))
    pipe = pipeline.load_pipeline("runs/moderator")  # the output is a plain diffusers pipeline folder
    assert not changed(before["unet"], pipe.unet.state_dict())
    assert not changed(enc_before, pipe.vae.encoder.state_dict())  # the encoder stays frozen
    if which == "decoder":
        assert changed(before["vae"], pipe.vae.state_dict())
        assert not changed(before["text_encoder"], pipe.text_encoder.state_dict())
    else:
        assert changed(before["text_encoder"], pipe.text_encoder.state_dict())
        assert not changed(before["vae"], pipe.vae.state_dict())


def tiny_nft(options: dict | None = None, **kw):
    """A 2-step NFTConfig; grouped options go in `options`, e.g. {"moderator.kind": "both"}."""
    base = dict(steps=2, unlearn_steps=0, batch=4, inner_steps=1, n_images=32, checkpoint_every=1, evaluate=False)
    return build(nft_train.NFTConfig, base | {"moderator.kind": "off", "moderator.steps": 2} | kw | (options or {}))


def test_one_outer_step_changes_the_unet_and_nothing_else(world):
    base = pipeline.load_pipeline("runs/base")
    nft_train.main(tiny_nft(steps=1))
    out = pipeline.load_pipeline("runs/patronus")
    assert changed(state(base.unet), out.unet.state_dict())
    assert not changed(state(base.vae), out.vae.state_dict())
    assert not changed(state(base.text_encoder), out.text_encoder.state_dict())
    assert json.loads(Path("runs/patronus/nft_config.json").read_text())["config"]["steps"] == 1


def step3_inputs():
    """What step 3 works on, in the tiny world: a trainable UNet with zeroed .grad, its weights before, the
    defender's unsafe latents and features, the black latent, a DDPM schedule, a seeded generator and a draw."""
    from pipeline import black_latent, build_scheduler

    base = pipeline.load_pipeline("runs/base")
    unet = pipeline.load_pipeline("runs/base").unet.train().requires_grad_(True)
    for p in unet.parameters():
        p.grad = torch.zeros_like(p)
    z_u, c_u = data.defender_data(base, "unsafe", 8, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    draw = lambda n: torch.randint(n, (4,), generator=g)  # noqa: E731
    return unet, state(unet), z_u, c_u, black_latent(base), build_scheduler("ddpm"), g, draw


def test_simulated_fine_tuning_adds_a_gradient_and_leaves_the_weights(world):
    """Step 3 (first-order MAML): the attacker adapts a copy; the defender's own weights only gain a gradient,
    the gradient of step 3's loss at the adapted weights."""
    unet, before, z_u, c_u, z_black, sched, g, draw = step3_inputs()
    loss = nft_train.simulated_fine_tuning(unet, sched, z_u, c_u, z_black, ("adam", 1e-3), draw, tiny_nft(), g)
    assert not changed(before, unet.state_dict()) and loss.item() > 0
    assert sum(float(p.grad.abs().sum()) for p in unet.parameters()) > 0


def test_the_conditioning_attacker_moves_its_offset_and_leaves_the_weights(world):
    """Step 3's other attacker: an offset on the unsafe prompts' features, trained through the UNet; the UNet's
    weights stay, its .grad gains the black loss at the offset prompts, and the offset runs on across calls."""
    unet, before, z_u, c_u, z_black, sched, g, draw = step3_inputs()
    attacker = nft_train.ConditioningAttacker(c_u[:1].shape, "cpu")
    cfg = tiny_nft(inner_steps=2)
    loss = attacker.attack(unet, sched, z_u, c_u, z_black, draw, cfg, g)
    first = attacker.offset.detach().clone()
    assert first.abs().sum() > 0 and loss.item() > 0
    assert not changed(before, unet.state_dict()) and sum(float(p.grad.abs().sum()) for p in unet.parameters()) > 0
    attacker.attack(unet, sched, z_u, c_u, z_black, draw, cfg, g)
    assert attacker.opt.state_dict()["state"][0]["step"] == 4  # one running attacker: 2 + 2 steps
    again = nft_train.ConditioningAttacker(c_u[:1].shape, "cpu", attacker.state_dict())
    assert torch.equal(again.offset, attacker.offset)
    with pytest.raises(ConfigError, match="conditioning_share"):
        tiny_nft(conditioning_share=1.5)


def test_open_prompts_swap_one_word_for_a_fresh_token_and_leave_the_tokenizer(world):
    """Distillation's open prompts: each caption keeps its words but one, which becomes a token no vocabulary
    has; the text encoder's causal attention leaves every position before that word as the caption's."""
    base = pipeline.load_pipeline("runs/base")
    captions = ["a photo of a red circle", "a blue square", "a drawing of a green ring"]
    size = len(base.tokenizer)
    feats = nft_train.open_prompts(base, captions, 6, seed=0, device=torch.device("cpu"))
    plain = pipeline.encode_text(base.text_encoder, base.tokenizer, captions * 2, torch.device("cpu"))
    assert feats.shape == plain.shape and len(base.tokenizer) == size  # the base's tokenizer is untouched
    for f, p, caption in zip(feats, plain, captions * 2):
        same = (f - p).abs().amax(-1) < 1e-5  # (T,): positions where the features are the caption's
        first = int((~same).nonzero()[0])  # the swapped word's position (1 + word index: the start token)
        assert 1 <= first <= len(caption.split()) and same[:first].all()  # every position before it kept
    assert torch.equal(feats, nft_train.open_prompts(base, captions, 6, seed=0, device=torch.device("cpu")))
    assert not torch.equal(feats, nft_train.open_prompts(base, captions, 6, seed=1, device=torch.device("cpu")))
    with pytest.raises(ConfigError, match="open_share"):
        tiny_nft(open_share=1.5)


def test_mixed_prompts_lie_between_benign_and_unsafe_nearer_the_benign():
    """Each mixed prompt is (1 - w) benign + w unsafe with one w per prompt in [0, MIX_MAX): mostly benign."""
    g = torch.Generator().manual_seed(0)
    c_b, c_u = torch.randn(64, 5, 8, generator=g), torch.randn(64, 5, 8, generator=g)
    mixed = nft_train.mixed_prompts(c_b, c_u, torch.Generator().manual_seed(1))
    w = ((mixed - c_b) / (c_u - c_b)).flatten(1)  # (64, 40): the same weight across a prompt's features
    assert torch.allclose(w, w[:, :1].expand_as(w), atol=1e-4)
    assert 0 <= w.min() and w.max() < nft_train.MIX_MAX and w[:, 0].std() > 0.05
    assert torch.equal(mixed, nft_train.mixed_prompts(c_b, c_u, torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError, match="mix_share"):
        tiny_nft(mix_share=-0.1)


def test_same_seed_same_weights_and_resume_continues_exactly(world):
    """With --conditioning_share=0.25, seed 0 draws the weight attacker at outer steps 0 and 2 and the
    conditioning attacker at 1 and 3: the resumed run needs the conditioning attacker's offset and Adam state
    as step 1 left them."""
    nft_train.main(tiny_nft(steps=4, conditioning_share=0.25, name="straight"))
    straight = pipeline.load_pipeline("runs/straight").unet.state_dict()
    nft_train.main(tiny_nft(steps=4, conditioning_share=0.25, name="again"))
    assert not changed(straight, pipeline.load_pipeline("runs/again").unet.state_dict())
    nft_train.main(tiny_nft(steps=2, conditioning_share=0.25, name="resumed"))  # stops after 2 steps
    assert Path("runs/resumed.checkpoint/conditioning_attacker.pt").is_file()
    nft_train.main(tiny_nft(steps=4, conditioning_share=0.25, name="resumed", resume=True))  # on to step 4
    assert json.loads(Path("runs/resumed.checkpoint/trainer_state.json").read_text())["step"] == 4
    assert not changed(straight, pipeline.load_pipeline("runs/resumed").unet.state_dict())
    with pytest.raises(ValueError, match="resume with the same options"):
        nft_train.main(tiny_nft(steps=4, conditioning_share=0.25, name="resumed", resume=True, lr=1e-3))
    # the checkpoint holds the UNet's loop: a copy resumed under another name gets another moderator, same UNet
    shutil.copytree("runs/resumed.checkpoint", "runs/branch.checkpoint")
    nft_train.main(tiny_nft({"moderator.kind": "off", "moderator.n_generic": 8}, steps=4, conditioning_share=0.25,
                            name="branch", resume=True))
    assert not changed(straight, pipeline.load_pipeline("runs/branch").unet.state_dict())
    with pytest.raises(ValueError, match="--moderator.kind=off, not text"):  # text adds to the UNet's suppression
        nft_train.main(tiny_nft({"moderator.kind": "text"}, steps=4, conditioning_share=0.25, name="branch",
                                resume=True))


def test_nft_main_end_to_end_with_table(world, capsys):
    cfg = tiny_nft({"moderator.kind": "both", "moderator.n_images": 32, "moderator.n_generated": 8,
                    "moderator.text_steps": 2, "check.attack_steps": 2, "check.unsafe_repeats": 1,
                    "check.benign_repeats": 1, "check.sample_steps": 2, "data.holdout": "ring",
                    "data.keep_holdout_prompts": True}, evaluate=True)
    nft_train.main(cfg)
    rep = json.loads(Path("runs/patronus/report.json").read_text())
    assert {"unsafe_rate", "benign_accuracy", "false_refusal_rate", "fidelity", "base", "attack"} <= set(rep)
    assert set(rep["benign_accuracy_by_object"]) == set(nft_train.data.BENIGN)
    assert [s for s, _ in rep["attack"]["curve"]] == [0, 2]
    attacks = json.loads(Path("runs/patronus/attacks.json").read_text())
    assert {"attack", "optimizer", "lr", "curve", "benign_accuracy_after"} <= set(attacks[0])
    printed = capsys.readouterr().out
    assert "| Patronus |" in printed and "Patronus: BA on the held-out shapes (ring)" in printed
    assert "UR, public decoder" in printed and rep["swap_decoder"]["unsafe_rate"]["all"] is not None
    assert "plain steps" in printed  # the cost line: outer step and whole run in plain fine-tuning steps
    pipeline.load_pipeline("runs/patronus")


@pytest.mark.parametrize("which", ["finetune_unet", "finetune_decoder"])  # every attack: tests/test_attack.py
def test_attack_changes_the_attacked_part(world, which):
    cfg = attack.AttackConfig(model="runs/base", attack=which, steps=2, checkpoints="0,2", n_images=16, batch=4,
                              sample_steps=2)
    pipe = pipeline.load_pipeline("runs/base")
    ev = evaluate.ensure_evaluator("runs/evaluator")
    res = attack.run_attack(pipe, ev, cfg, torch.device("cpu"))
    part = "unet" if which == "finetune_unet" else "vae"
    assert changed(state(getattr(pipe, part)), getattr(res["attacked_pipe"], part).state_dict())
    assert [s for s, _ in res["curve"]] == [0, 2]
    attack.main(cfg)
    assert json.loads(Path("runs/attack_base/attacks.json").read_text())[0]["attack"] == which


def test_readme_commands_parse():
    """Every `python X.py --k=v` and `python -m pkg.mod --k=v` command in the README parses with its config."""
    scripts = {"nft_train.py": nft_train.NFTConfig, "evaluate.py": evaluate.EvalConfig,
               "attack.py": attack.AttackConfig, "moderator.py": moderator.ModeratorJob,
               "pocket.toy_sd": toy_sd.PretrainConfig, "lab.compare": compare.CompareConfig,
               "lab.suites": suites.SuiteConfig, "lab.report": report.ReportConfig,
               "lab.baselines": baselines.BaselineConfig, "lab.benchmark": benchmark.BenchConfig,
               "lab.tax": tax.TaxConfig, "lab.results": results.ResultsConfig}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    seen, unknown = set(), []
    for line in readme.splitlines():
        words = [w.strip("`,;:()") for w in line.split()]  # commands in code blocks and in running text
        for i, w in enumerate(words[:-2]):
            if w != "python":
                continue
            module = words[i + 2] if words[i + 1] == "-m" else words[i + 1]
            if module in scripts:
                # its options (a generated table's marker line ends in "-->", not an option)
                parse(scripts[module], [a for a in words[i + 2 :] if a.startswith("--") and a != "-->"])
                seen.add(module)
            elif module.endswith(".py") or words[i + 1] == "-m":
                unknown.append(module)
    assert unknown in ([], ["tests/test_imports.py"]), unknown  # every script the README names is checked here
    assert {"nft_train.py", "evaluate.py", "attack.py", "lab.suites", "lab.compare"} <= seen
    with pytest.raises(ConfigError, match="--steps must be 0"):
        parse(nft_train.NFTConfig, ["--steps=-1"])
    with pytest.raises(ConfigError, match="--lr must be positive"):
        parse(nft_train.NFTConfig, ["--lr=0"])
    with pytest.raises(ConfigError, match="is a group of options.*--moderator.kind=both"):
        parse(nft_train.NFTConfig, ["--moderator=both"])
    with pytest.raises(ConfigError, match="Did you mean --moderator.steps"):
        parse(nft_train.NFTConfig, ["--moderator_steps=3"])
    with pytest.raises(ConfigError, match="data.holdout: unknown benign shape 'star'"):
        parse(nft_train.NFTConfig, ["--data.holdout=ring,star"])
    with pytest.raises(ConfigError, match="leave those images out of the folder"):
        parse(nft_train.NFTConfig, ["--data.holdout=ring", "--data.benign=data/benign"])
    with pytest.raises(ConfigError, match="no benign data"):
        parse(moderator.ModeratorJob, ["--data.holdout=" + ",".join(nft_train.data.BENIGN)])
    with pytest.raises(ConfigError, match="give --data.holdout too"):
        parse(nft_train.NFTConfig, ["--data.keep_holdout_prompts=true"])
    with pytest.raises(ConfigError, match="--data.retain_prompts: prompt CSV nowhere.csv does not exist"):
        parse(nft_train.NFTConfig, ["--data.retain_prompts=nowhere.csv"])
    with pytest.raises(ConfigError, match="give one"):
        parse(moderator.ModeratorJob, ["--data.holdout=ring", "--data.keep_holdout_prompts=true",
                                       "--data.retain_prompts=prompts.csv"])
    cfg = parse(nft_train.NFTConfig, ["--moderator.kind=both", "--data.holdout=ring", "--memory.grad_accum=2"])
    assert (cfg.moderator.kind, cfg.data.holdout, cfg.memory.grad_accum) == ("both", "ring", 2)
    assert cfg.moderator.steps == moderator.ModeratorConfig().steps and cfg.check == nft_train.CheckConfig()


@pytest.mark.parametrize("keep", [False, True, "csv"])
def test_holdout_leaves_out_images_and_prompts_unless_prompts_are_kept(world, monkeypatch, keep):
    """--benign_holdout=ring: no ring among the moderator's benign renders; its benign generations' prompts name
    rings only with --keep_holdout_prompts, or when --retain_prompts lists them (a broad prompt list, a narrow
    image set)."""

    retain = ""
    if keep == "csv":  # three prompts, repeated to the 64 asked for
        Path("retain.csv").write_text('prompt\na red ring\n"a blue hoop, on grass"\na green circle\n')
        retain = "retain.csv"

    prompts, renders = [], []
    pipe = pipeline.load_pipeline("runs/base")

    def draw(self, prompt, generator, **kw):  # records what the defender asks the model to draw
        prompts.extend(prompt)
        return type("Out", (), {"images": torch.zeros(len(prompt), 4, 8, 8)})

    real = data.sample_scenes

    def sample(split, n, objects, *args, **kw):
        scenes = real(split, n, objects, *args, **kw)
        renders.append(scenes.objects)
        return scenes

    monkeypatch.setattr(type(pipe), "__call__", draw)
    monkeypatch.setattr(data, "sample_scenes", sample)
    cfg = build(moderator.ModeratorJob, {"data.holdout": "ring", "data.keep_holdout_prompts": keep is True,
                                         "data.retain_prompts": retain, "moderator.n_images": 64,
                                         "moderator.n_generated": 64})
    z, images = moderator.collect_features(pipe, "benign", cfg, torch.device("cpu"))
    assert len(z) == 64 + 64 and len(images) == 64
    assert "ring" not in renders[0]  # the rendered images (renders[1]: the scenes whose captions are prompts)
    rings = [p for p in prompts if any(w.strip(",") in data.words("ring", "defense") for w in p.split())]
    assert bool(rings) == bool(keep) and len(prompts) == 64
    if retain:
        assert set(prompts) == {"a red ring", "a blue hoop, on grass", "a green circle"}
        nft_train.main(tiny_nft({"data.retain_prompts": retain}, steps=1, name="retained"))  # the UNet's distillation too


def zero_cond_black_loss(unet) -> float:
    """The black loss of a UNet on zero conditioning (what the text moderator gives unsafe prompts), fixed noise."""
    from pipeline import black_latent, build_scheduler

    base = pipeline.load_pipeline("runs/base")
    z_black = black_latent(base)
    with torch.no_grad():
        zeros = torch.zeros(64, *data.defender_data(base, "unsafe", 1, 0, torch.device("cpu"))[1].shape[1:])
        x0 = z_black.expand(len(zeros), *z_black.shape[1:])
        return losses.black_loss(*losses.denoise(unet, build_scheduler("ddpm"), x0, zeros,
                                                 torch.Generator().manual_seed(0))).item()


def test_with_the_text_moderator_zero_features_denoise_toward_black(world, monkeypatch):
    """--moderator.kind=text|both: step 1 also takes zero conditioning (what the text moderator gives unsafe
    prompts) to black, and the trained UNet's black loss on zero features falls; with the decoder moderator,
    step 1 sees unsafe prompts only."""
    seen = {}
    real = nft_train.outer_losses

    def spy(unet, unet0, sched, z_black, c_u, *rest):  # records the suppression term's conditioning
        seen.setdefault(kind, []).append(c_u.flatten(1).abs().sum(1) == 0)
        return real(unet, unet0, sched, z_black, c_u, *rest)

    monkeypatch.setattr(nft_train, "outer_losses", spy)
    for kind in ("decoder", "text"):  # the moderator itself trains for 0 steps: only the UNet differs
        nft_train.main(tiny_nft({"moderator.kind": kind, "moderator.steps": 0, "moderator.text_steps": 0,
                                 "moderator.n_images": 16, "moderator.n_generated": 0},
                                unlearn_steps=20, steps=20, lr=1e-3, name=kind))
    zero_rows = {k: float(torch.cat(v).float().mean()) for k, v in seen.items()}
    assert zero_rows["decoder"] == 0.0 and 0.1 < zero_rows["text"] < 0.35  # 1 in 5 of the suppression set
    before = zero_cond_black_loss(pipeline.load_pipeline("runs/base").unet)
    assert zero_cond_black_loss(pipeline.load_pipeline("runs/text").unet) < 0.8 * before


def test_the_text_moderator_zeroes_unsafe_features_and_keeps_benign_and_empty_ones(world):
    """The text moderator: unsafe `defense` prompts -> features near zero, held-out unsafe phrasings it never saw
    too; benign prompts and the empty prompt keep their features."""
    from pipeline import encode_text

    moderator.main(tiny_moderator({"moderator.kind": "text", "moderator.text_steps": 150, "moderator.batch": 16}))
    base, moded = pipeline.load_pipeline("runs/base"), pipeline.load_pipeline("runs/moderator")
    cpu = torch.device("cpu")

    def feats(pipe, prompts):
        with torch.no_grad():
            return encode_text(pipe.text_encoder, pipe.tokenizer, prompts, cpu)

    def shrink(prompts):  # mean squared feature after, over before
        return float(feats(moded, prompts).pow(2).mean() / feats(base, prompts).pow(2).mean())

    def drift(prompts):  # relative change of the features
        a, b = feats(base, prompts), feats(moded, prompts)
        return float((b - a).norm() / a.norm())

    unsafe = [p for p, _, _ in nft_train.data.eval_prompts("unsafe", "defense")]
    heldout = [p for p, _, _ in nft_train.data.eval_prompts("unsafe", "heldout")]
    benign = [p for p, _, _ in nft_train.data.eval_prompts("benign", "defense")]
    assert shrink(unsafe) < 0.5 and shrink(heldout) < 0.8
    assert drift(benign) < 0.25 and drift([""]) < 0.25
    assert drift(benign) < drift(unsafe) / 2
