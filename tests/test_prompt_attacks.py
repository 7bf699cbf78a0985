"""The text-side attacks of attack.py (attack.PromptAttack): textual inversion, the optimised conditioning and
the discrete prompt search, on the tiny world; where their stand-ins go in a prompt; the text suite's references."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import attack
import pipeline
from pocket import evaluator
from lab import suites
from config import ConfigError, parse

CPU = torch.device("cpu")


def tiny(**kw):
    base = dict(model="runs/base", steps=2, checkpoints="0,2", n_images=16, batch=4, sample_steps=2, lr=0.1)
    return attack.AttackConfig(**(base | kw))


def test_a_stand_in_replaces_the_concepts_words_or_goes_first():
    pocket = SimpleNamespace(concepts=attack.concepts_of(""))
    fill = {"swords": "<swords>", "skull": "<skull>"}
    stand_in = attack.PromptAttack.stand_in
    assert stand_in(pocket, "a photo of a red pair of swords", fill) == ("a photo of a red <swords>", 0)
    assert stand_in(pocket, "crimson death head on a plain background", fill) == (
        "crimson <skull> on a plain background", 1)
    assert stand_in(pocket, "a red crossed blades", fill)[0] == "a red <swords>"
    assert stand_in(pocket, "a blue ring", fill) == ("a blue ring", -1)  # a prompt naming no concept stays
    real = SimpleNamespace(concepts=attack.concepts_of("some/folder"))
    assert stand_in(real, "a nude person", {"unsafe": "<unsafe>"}) == ("<unsafe> a nude person", 0)


def test_textual_inversion_trains_only_its_rows_and_its_file_loads_in_diffusers(world):
    from safetensors.torch import load_file

    base = pipeline.load_pipeline("runs/base")
    ev = evaluator.ensure_evaluator("runs/evaluator")
    res = attack.run_attack(base, ev, tiny(attack="textual_inversion", tokens=2), CPU)
    attacked, cond = res["attacked_pipe"], res["prompt_attack"]
    old = len(base.tokenizer)
    assert len(attacked.tokenizer) == old + 4 and len(base.tokenizer) == old  # 2 concepts x 2 tokens; input kept
    table = attacked.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[:old], base.text_encoder.get_input_embeddings().weight)  # the vocabulary's rows stay
    assert not torch.allclose(table[old:], table[:old].mean(0).expand(4, -1))  # new ones moved (from the mean)
    assert torch.equal(attacked.unet.conv_in.weight, base.unet.conv_in.weight)
    assert cond.prompts(["a red skull", "a red ring"]) == ["a red <skull> <skull>_1", "a red ring"]
    # attack.main saves diffusers' textual-inversion files: loaded into the plain base, the token is the learned
    # rows, and diffusers writes "<skull>" out as the same tokens the attack's prompts use
    attack.main(tiny(attack="textual_inversion", tokens=2, name="ti"))
    rec = json.loads(Path("runs/ti/attacks.json").read_text())[-1]
    assert rec["tokens"] == 2 and 0 <= rec["unsafe_rate_no_colour"] <= 1 and rec["n_no_colour"] == 50
    assert not Path("runs/ti/model").exists()  # no weight changed: only what was learned is saved
    saved = load_file("runs/ti/learned_embeds_skull.safetensors")["<skull>"]
    fresh = pipeline.load_pipeline("runs/base")
    fresh.load_textual_inversion("runs/ti/learned_embeds_skull.safetensors", token="<skull>")
    assert saved.shape == (2, table.shape[1])
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[-2:], saved)
    assert fresh.maybe_convert_prompt("a red <skull>", fresh.tokenizer) == "a red <skull> <skull>_1"


def test_prompt_search_finds_readable_words_and_saves_them(world, capsys):
    attack.main(tiny(attack="prompt_search", tokens=2, name="ps", steps=3, checkpoints="0,3"))
    out = capsys.readouterr().out
    rec = json.loads(Path("runs/ps/attacks.json").read_text())[-1]
    assert [s for s, _ in rec["found"]] == [0, 3]
    words = rec["found"][-1][1]
    assert json.loads(Path("runs/ps/prompts.json").read_text()) == words
    base = pipeline.load_pipeline("runs/base")
    vocab = set(attack.readable_vocabulary(base.tokenizer))
    for concept, text in words.items():
        assert f"{concept} -> {text!r}" in out  # printed
        ids = base.tokenizer(text, add_special_tokens=False).input_ids
        assert len(ids) == 2 and set(ids) <= vocab  # two readable words that read back as themselves
    # the projection: the placeholder rows hold the nearest vocabulary words of the soft embeddings
    ev = evaluator.ensure_evaluator("runs/evaluator")
    cond = attack.run_attack(base, ev, tiny(attack="prompt_search", tokens=2), CPU)["prompt_attack"]
    ids = torch.tensor(sorted(vocab))
    rows = torch.nn.functional.normalize(cond.table[ids], dim=1)
    nearest = ids[(torch.nn.functional.normalize(cond.soft, dim=1) @ rows.T).argmax(1)]
    assert torch.equal(nearest, cond.ids) and torch.equal(cond.table[cond.new], cond.table[nearest])
    skull = cond.found()["skull"]
    assert cond.prompts(["a red cranium"]) == [f"a red {skull}"] and len(base.tokenizer) == len(cond.tokenizer) - 4


@pytest.mark.parametrize("step", attack.PROMPT_STEPS)
def test_a_text_side_attack_after_the_decoder_swap_leaves_every_weight(world, step):
    base, ref = pipeline.load_pipeline("runs/base"), pipeline.load_pipeline("runs/base")
    with torch.no_grad():  # a stand-in for a defended decoder, so that the swap shows
        for p in base.vae.decoder.parameters():
            p.add_(0.05)
    before = {part: {k: v.clone() for k, v in getattr(base, part).state_dict().items()}
              for part in ("unet", "vae", "text_encoder")}
    ev = evaluator.ensure_evaluator("runs/evaluator")
    res = attack.run_attack(base, ev, tiny(attack=f"swap_decoder+{step}"), CPU, reference=ref)
    json.dumps({k: v for k, v in res.items() if k not in ("attacked_pipe", "prompt_attack")})  # plain JSON
    assert [s for s, _ in res["curve"]] == [0, 2] and res["tokens"] == 1
    attacked = res["attacked_pipe"]
    for part, weights in before.items():  # the input keeps its weights
        assert all(torch.equal(v, getattr(base, part).state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(v, attacked.unet.state_dict()[k]) for k, v in before["unet"].items())  # frozen
    assert torch.equal(attacked.vae.decoder.conv_out.weight, ref.vae.decoder.conv_out.weight)  # swapped


def test_embedding_offsets_only_the_prompts_naming_a_concept(world):
    base = pipeline.load_pipeline("runs/base")
    ev = evaluator.ensure_evaluator("runs/evaluator")
    res = attack.run_attack(base, ev, tiny(attack="embedding"), CPU)
    cond = res["prompt_attack"]
    assert cond.offset.abs().sum() > 0
    texts = ["a red ring", "a red skull", "a blue crossed swords"]
    plain = pipeline.encode_text(base.text_encoder, base.tokenizer, texts, CPU)
    got = cond.embeds(texts)
    assert torch.equal(got[0], plain[0])  # benign: its own text features
    assert torch.allclose(got[1], plain[1] + cond.offset[1]) and torch.allclose(got[2], plain[2] + cond.offset[0])
    assert cond.prompts(texts) == texts


def test_tokens_option_is_checked_and_the_text_suite_has_no_scratch_row():
    with pytest.raises(ConfigError, match="--tokens"):
        parse(attack.AttackConfig, ["--tokens=0"])
    assert attack.parse_attack("swap_text_encoder+textual_inversion") == (["swap_text_encoder"], "textual_inversion")
    for step in attack.PROMPT_STEPS:
        assert not suites.faces("scratch", [], step, "unsafe")  # nothing trains: no from-scratch reference
        assert suites.faces(suites.NEVER_LEARNED, ["swap_decoder"], step, "unsafe")  # through its own UNet
    assert suites.faces("scratch", [], "finetune_unet", "unsafe")


def test_the_text_suite_attacks_defended_base_and_never_learned(world, monkeypatch):
    spec = dict(suites.SUITES["text"], steps=2, checkpoints="0,2", seeds="0", n_images=16,
                attacks=("textual_inversion", "swap_decoder+embedding"),
                grid={"*": [("adam", 1e-3)], "textual_inversion": [("adam", 1e-2)], "embedding": [("adam", 1e-2)]})
    monkeypatch.setitem(suites.SUITES, "text", spec)
    entries = suites.main(suites.SuiteConfig(model="runs/base", suite="text", name="txt", batch=2, sample_steps=2))
    rows = {(e["attack"], e["model"]) for e in entries}
    assert rows == {(a, m) for a in spec["attacks"] for m in ("defended", "base", suites.NEVER_LEARNED)}
    assert all(e["task"] == "unsafe" for e in entries)  # no benign fine-tuning in this suite
    md = Path("runs/txt/attacks.md").read_text()
    table = md.split("The text-side attacks, every run")[1]
    rows = [r for r in table.splitlines() if r.startswith(("| textual_inversion |", "| swap_decoder+embedding |"))]
    # one row per run: here the "defended" model is the base, whose runs the base's row reuses
    assert len(rows) == len({e["key"] for e in entries}) == 4 and len(entries) == 6
