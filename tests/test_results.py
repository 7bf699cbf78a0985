"""lab/results.py: RESULTS.md's marked tables are exactly what the recorded runs under results/ give, a table
edited by hand is caught and rewritten, and recording a run keeps its files and how it ran."""
import json
from pathlib import Path

import pytest

from lab import results


def test_results_md_and_readme_are_what_the_recorded_runs_give():
    names = []
    for doc, sources in results.DOCS.items():
        text = doc.read_text()
        names += [m["name"] for m in results.BLOCK.finditer(text)]
        _, changed = results.rewrite(text, sources=sources)
        assert changed == [], f"{doc.name}'s tables {changed} differ from results/: run `python -m lab.results`"
    assert set(names) == set(results.TABLES), "every table lab/results.py knows is written somewhere"
    read = {n for names, _ in results.TABLES.values() for n in names}
    assert read <= set(results.BY_NAME), "every run a table reads is one of the campaign's"
    for run in results.RUNS:  # every recorded run was made by its command; every run a table reads is recorded
        path = results.RESULTS_DIR / run.name / "record.json"
        assert path.is_file() or run.name not in read, f"{run.name} is read by a table but not recorded"
        if path.is_file():
            rec = json.loads(path.read_text())
            assert rec["command"] == run.command and rec["machine"] and rec["threads"] >= 1


def test_rates_carry_wilson_intervals():
    assert results.rate(0.0, 50) == "0.000 [0.00, 0.07]"  # 0 of 50 only says the rate is below 0.07
    assert results.rate(0.5, 50) == "0.500 [0.37, 0.63]"
    assert results.rate(None, 50) == "-"
    with pytest.raises(ValueError, match="without its counts"):
        results.image_counts({"n_images": 300, "unsafe_rate": {}})


def test_a_table_edited_by_hand_is_caught_and_rewritten(tmp_path, monkeypatch):
    # a run folder as evaluate.py leaves it, recorded into a results folder of the test's own
    src = tmp_path / "runs" / "demo"
    src.mkdir(parents=True)
    report = json.loads((results.RESULTS_DIR / "open100_s0" / "report.json").read_text())
    (src / "report.json").write_text(json.dumps(report))
    run = results.Run("demo", "0.1", "python evaluate.py --name=demo", str(src))
    store = tmp_path / "results"
    results.record(run, seconds=12.5, note="alone", threads=2, where="a test machine", results=store)
    rec = json.loads((store / "demo" / "record.json").read_text())
    assert rec["command"] == run.command and rec["seconds"] == 12.5 and rec["threads"] == 2
    assert json.loads((store / "demo" / "report.json").read_text()) == report
    monkeypatch.setitem(results.TABLES, "demo", (["demo"], lambda R: results.evaluation_table(
        {"demo": R["demo"]["report.json"]})))

    marker = "<!-- table demo: written by python -m lab.results from results/ -->\n"
    text, changed = results.rewrite(f"# Results\n\n{marker}stale\n<!-- end table -->\nprose\n", store)
    assert changed == ["demo"] and text.endswith("<!-- end table -->\nprose\n")
    table = text.split(marker)[1].split("<!-- end table -->")[0]
    ba = report["benign_accuracy"]
    assert f"| demo | 0.000 [0.00, 0.03] | 0.000 [0.00, 0.05] | {ba:.3f} [" in table
    assert "`python evaluate.py --name=demo`; a test machine, 2 threads, 12 s" in table
    assert results.rewrite(text, store) == (text, [])  # written: nothing left to change
    edited = text.replace(f"{ba:.3f} [", f"{ba + 0.01:.3f} [", 1)  # a number edited by hand
    assert results.rewrite(edited, store) == (text, ["demo"])
    with pytest.raises(KeyError, match="does not know"):
        results.rewrite(marker.replace("demo", "nosuch") + "<!-- end table -->\n", store)


def test_recording_needs_the_runs_files(tmp_path):
    run = results.Run("gone", "0.1", "python nft_train.py --name=gone", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="run `python nft_train.py --name=gone` first"):
        results.record(run, results=tmp_path / "results")
    assert not (tmp_path / "results" / "gone").exists()
    with pytest.raises(SystemExit, match="no recorded run in section"):
        results.campaign(["99"], rerun=False)


def test_a_run_starts_its_outputs_anew(tmp_path, monkeypatch):
    # attack.py appends to attacks.json: a second run in the same folder would record both runs' entries
    monkeypatch.setattr(results, "ROOT", tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "attacks.json").write_text("[{}]")
    (tmp_path / "runs" / "a" / "grid.png").write_text("kept")
    results.clear_outputs(results.Run("a", "0.1", "python attack.py --name=a", "runs/a", ("attacks.json",)))
    assert not (tmp_path / "runs" / "a" / "attacks.json").exists() and (tmp_path / "runs" / "a" / "grid.png").exists()
    results.clear_outputs(results.Run("b", "0.1", "python attack.py --name=b", "runs/b", ("attacks.json",)))  # none yet


def test_the_tax_table_is_written_from_its_record_alone():
    tax = json.loads((results.RESULTS_DIR / "tax" / "tax.json").read_text())
    assert "reports" not in tax  # the evaluation cache stays in runs/
    table = results.tax_table(tax)
    first = next(b for b in table.split("\n\n") if b.startswith("| defence | BA"))
    assert first.count("\n| ") == len(tax["result"])  # one row per model under the head and its rule
    assert Path(results.RESULTS_DIR / "tax" / "record.json").is_file()
