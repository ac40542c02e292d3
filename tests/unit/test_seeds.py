"""Seeds as an axis (``--seeds``): one run per seed under OUT/seed-<s>/, and their aggregate (mean, sd, 95% CI).

Expected aggregates are recomputed here from the per-seed files with numpy/scipy, not with the package's
``aggregate``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from mtgraft.errors import MtgraftError
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model


@pytest.fixture(autouse=True)
def _mlflow_tmp(isolated_mlflow):
    """Every test here runs with its own tracking store (conftest ``isolated_mlflow``)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    pre = make_tiny_model("head", d / "pre", seed=1)
    ck = make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)
    return {"pre": pre, "ft": ck, "dir": d}


def cli(*args: str):
    from mtgraft.cli import app as appmod

    appmod._register()
    return CliRunner().invoke(appmod.app, list(args), catch_exceptions=False)


def expected(values: list[float]) -> tuple[float, float | None, list[float] | None]:
    """mean, sd (n − 1) and the 95% t-interval, computed independently of mtgraft."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(x.mean()), None, None
    sd = float(np.sqrt(((x - x.mean()) ** 2).sum() / (x.size - 1)))
    h = stats.t.ppf(0.975, x.size - 1) * sd / math.sqrt(x.size)
    return float(x.mean()), sd, [float(x.mean() - h), float(x.mean() + h)]


def check_agg(agg: dict, key: str, values: list[float]) -> None:
    mean, sd, ci = expected(values)
    assert agg["mean"][key] == pytest.approx(mean)
    if sd is None:
        assert agg["sd"][key] is None
    else:
        assert agg["sd"][key] == pytest.approx(sd)
        assert agg["ci95"][key] == pytest.approx(ci)


TRAIN = ["--model", "{pre}", "--k", "2", "--max-steps", "4", "--eval-every", "2", "--batch-size", "2",
         "--lr", "0.1", "--max-length", "32"]


def _train_args(tiny, *extra: str) -> list[str]:
    return ["train", "--task", example_task_yaml(), *[a.format(pre=tiny["pre"]) for a in TRAIN], *extra]


def test_train_seeds_one_checkpoint_per_seed_and_aggregate(tiny, tmp_path):
    out = tmp_path / "D"
    res = cli(*_train_args(tiny, "--seeds", "13,21", "--out", str(out), "--json"))
    assert res.exit_code == 0, res.output
    agg = json.loads(res.stdout)
    assert agg["seeds"] == [13, 21]
    assert not (out / "mtgraft.json").exists()  # several seeds: not the single-seed layout
    metas = {s: json.loads((out / f"seed-{s}" / "mtgraft.json").read_text()) for s in (13, 21)}
    assert {s: m["data"]["seed"] for s, m in metas.items()} == {13: 13, 21: 21}
    assert metas[13]["train_config"]["seed"] == 13 and metas[21]["train_config"]["seed"] == 21
    # the two checkpoints differ (different data and training seeds)
    from safetensors.numpy import load_file

    def weights(s: int) -> dict:
        files = sorted((out / f"seed-{s}").glob("*.safetensors"))
        assert files
        return {k: v for f in files for k, v in load_file(f).items()}

    w13, w21 = weights(13), weights(21)
    assert any(not np.array_equal(w13[k], w21[k]) for k in w13)
    # seeds.json = the --json output; its aggregate is the mean/sd of the per-seed test metrics
    on_disk = json.loads((out / "seeds.json").read_text())
    assert on_disk["mean"] == agg["mean"] and on_disk["per_seed"] == agg["per_seed"]
    for key in ("accuracy", "ece", "brier"):
        check_agg(agg, f"test.{key}", [metas[s]["metrics"]["test"][key] for s in (13, 21)])
    assert agg["per_seed"]["21"]["checkpoint"] == str(out / "seed-21")
    # --resume: finished seeds are read back from their checkpoints, not trained again
    stamps = {s: (out / f"seed-{s}" / "mtgraft.json").stat().st_mtime_ns for s in (13, 21)}
    again = cli(*_train_args(tiny, "--seeds", "13,21", "--out", str(out), "--resume", "--json"))
    assert again.exit_code == 0, again.output
    assert {s: (out / f"seed-{s}" / "mtgraft.json").stat().st_mtime_ns for s in (13, 21)} == stamps
    assert json.loads(again.stdout)["mean"] == pytest.approx(agg["mean"])


def test_train_one_seed_keeps_the_old_layout(tiny, tmp_path):
    out = tmp_path / "one"
    res = cli(*_train_args(tiny, "--seeds", "21", "--out", str(out), "--json"))
    assert res.exit_code == 0, res.output
    assert json.loads((out / "mtgraft.json").read_text())["data"]["seed"] == 21
    assert not (out / "seeds.json").exists()


def test_seed_and_seeds_together_is_one_clear_error(tiny, tmp_path):
    res = cli(*_train_args(tiny, "--seed", "13", "--seeds", "13,21", "--out", str(tmp_path / "x")))
    assert res.exit_code != 0
    assert "give either --seed or --seeds, not both" in res.output
    assert not (tmp_path / "x").exists()
    res = cli(*_train_args(tiny, "--seeds", "13,13", "--out", str(tmp_path / "x")))
    assert res.exit_code != 0 and "13 given twice" in res.output


def test_seeds_in_a_config_yaml_act_as_the_option(tiny, tmp_path):
    out = tmp_path / "Y"
    cfg = tmp_path / "train.yaml"
    cfg.write_text("seeds: [13, 21]\n")
    res = cli(*_train_args(tiny, "--config", str(cfg), "--out", str(out), "--json"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["seeds"] == [13, 21]
    assert {s: json.loads((out / f"seed-{s}" / "mtgraft.json").read_text())["data"]["seed"] for s in (13, 21)} \
        == {13: 13, 21: 21}
    # the command line wins over the YAML: --seed gives the one-seed layout
    one = tmp_path / "one"
    res = cli(*_train_args(tiny, "--config", str(cfg), "--seed", "21", "--out", str(one)))
    assert res.exit_code == 0, res.output
    assert json.loads((one / "mtgraft.json").read_text())["data"]["seed"] == 21
    # seed and seeds in one YAML: one clear error, nothing written
    cfg.write_text("seed: 13\nseeds: [13, 21]\n")
    res = cli(*_train_args(tiny, "--config", str(cfg), "--out", str(tmp_path / "z")))
    assert res.exit_code != 0 and "give either 'seed' or 'seeds', not both" in res.output
    assert not (tmp_path / "z").exists()


def test_parse_seeds():
    from mtgraft.workflows.seeds import parse_seeds

    assert parse_seeds(None) is None
    assert parse_seeds("13, 21,42") == [13, 21, 42]
    assert parse_seeds([5]) == [5]
    for bad in ("13,x", "", "1,2,1"):
        with pytest.raises(MtgraftError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(MtgraftError, match="not both"):
        parse_seeds("13", seed_given=True)


GRAFT = ["--task", example_task_yaml(), "--sparsity", "0.01,0.05", "--method", "graft,topk,random",
         "--updates", "2", "--max-test", "12", "--no-register"]


def test_graft_seeds_json_aggregates_per_method_and_sparsity(tiny, tmp_path):
    out = tmp_path / "G"
    res = cli("graft", "--finetuned", tiny["ft"], *GRAFT, "--seeds", "13,21,42", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    agg = json.loads(res.stdout)
    assert agg["seeds"] == [13, 21, 42]
    assert agg["finetuned"] == {str(s): tiny["ft"] for s in (13, 21, 42)}  # one checkpoint, selection seeds vary
    per_file = {s: json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (13, 21, 42)}
    assert {(r["method"], r["sparsity"]) for r in agg["results"]} == \
        {(m, s) for m in ("graft", "topk", "random") for s in (0.01, 0.05)}
    for r in agg["results"]:
        assert {"seeds", "per_seed", "mean", "sd", "ci95"} <= set(r)
        assert r["seeds"] == [13, 21, 42]
        own = {s: next(e for e in per_file[s]["results"] if e["method"] == r["method"]
                       and e["sparsity"] == r["sparsity"]) for s in (13, 21, 42)}
        for key in ("accuracy", "ece", "rel"):
            values = [own[s]["test"][key] for s in (13, 21, 42)]
            assert [r["per_seed"][str(s)][key] for s in (13, 21, 42)] == values
            if all(v is not None for v in values):
                check_agg(r, key, values)
        check_agg(r, "region_size", [own[s]["region_size"] for s in (13, 21, 42)])
    # the random baseline depends on the selection seed: its regions differ between seeds
    rnd = [next(e for e in per_file[s]["results"] if e["method"] == "random") for s in (13, 21)]
    assert rnd[0]["region_size"] == rnd[1]["region_size"]
    # graft against each other method at equal size, paired over seeds
    comp = [c for c in agg["comparisons_over_seeds"] if c["b"] == "topk" and c["metric"] == "accuracy"
            and c["sparsity"] == 0.01]
    assert len(comp) == 1
    g = next(r for r in agg["results"] if r["method"] == "graft" and r["sparsity"] == 0.01)
    t = next(r for r in agg["results"] if r["method"] == "topk" and r["sparsity"] == 0.01)
    diffs = [g["per_seed"][str(s)]["accuracy"] - t["per_seed"][str(s)]["accuracy"] for s in (13, 21, 42)]
    assert comp[0]["diffs"] == pytest.approx(diffs)
    assert comp[0]["min_possible_p"] == pytest.approx(0.25)
    assert json.loads((out / "seeds.json").read_text())["results"] == agg["results"]


def test_graft_over_a_seeds_folder_pairs_checkpoint_and_seed(tiny, tmp_path):
    d = tmp_path / "D"
    for s, move in ((13, 5), (21, 6)):
        make_tiny_checkpoint(d / f"seed-{s}", tiny["pre"], example_task_yaml(), seed=move)
    out = tmp_path / "G"
    res = cli("graft", "--finetuned", str(d), *GRAFT, "--method", "graft", "--sparsity", "0.01",
              "--seeds", "13,21", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    agg = json.loads(res.stdout)
    assert agg["finetuned"] == {"13": str(d / "seed-13"), "21": str(d / "seed-21")}
    from mtgraft.patches import SkillPatch

    for s in (13, 21):
        data = json.loads((out / f"seed-{s}" / "results.json").read_text())
        patch = SkillPatch.load(out / f"seed-{s}" / Path(data["results"][0]["patch"]).name)
        assert patch.header.seed == s
        assert Path(data["finetuned"]).resolve() == (d / f"seed-{s}").resolve()
    # --resume: finished seeds are read back from their results.json, not grafted again
    stamp = (out / "seed-21" / "results.json").stat().st_mtime_ns
    again = cli("graft", "--finetuned", str(d), *GRAFT, "--method", "graft", "--sparsity", "0.01",
                "--seeds", "13,21", "--out", str(out), "--resume", "--json")
    assert again.exit_code == 0, again.output
    assert (out / "seed-21" / "results.json").stat().st_mtime_ns == stamp
    assert json.loads(again.stdout)["results"] == agg["results"]
    # a seed the folder does not hold; and the folder without --seeds
    res = cli("graft", "--finetuned", str(d), *GRAFT, "--seeds", "13,42", "--out", str(tmp_path / "H"))
    assert res.exit_code != 0 and "none for 42" in res.output
    res = cli("graft", "--finetuned", str(d), *GRAFT, "--out", str(tmp_path / "H"))
    assert res.exit_code != 0 and "give --seeds" in res.output


def test_train_multitask_seeds(tiny, tmp_path):
    from mtgraft.testing import write_topic_task

    tasks = [example_task_yaml(), write_topic_task(tmp_path / "topic")]
    out = tmp_path / "MT"
    res = cli("train-multitask", "--tasks", ",".join(tasks), "--mode", "joint", "--model", tiny["pre"], "--k", "2",
              "--max-test", "all", "--max-length", "32", "--batch-size", "4", "--max-steps", "2", "--eval-every",
              "2", "--lr", "0.05", "--sampling", "uniform", "--seeds", "5,6", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    agg = json.loads(res.stdout)
    assert agg["seeds"] == [5, 6] and agg["mode"] == "joint" and len(agg["tasks"]) == 2
    metas = {s: json.loads((out / f"seed-{s}" / "mtgraft.json").read_text()) for s in (5, 6)}
    assert [metas[s]["data"]["seed"] for s in (5, 6)] == [5, 6]
    for name in agg["tasks"]:
        check_agg(agg, f"test.{name}.accuracy", [metas[s]["metrics"]["test"][name]["accuracy"] for s in (5, 6)])
    assert json.loads((out / "seeds.json").read_text())["mean"] == agg["mean"]


# ------------------------------------------------------------------------------ overlap-report --seeds

REGIONS = {  # seed -> (task a's region, task b's region) in a graftable body of P = 248 entries
    13: (np.arange(0, 40), np.arange(20, 60)),
    21: (np.arange(0, 40), np.arange(30, 70)),
    42: (np.arange(0, 48), np.arange(10, 60)),
}


def _seed_patch(task: str, idx, seed: int, method: str = "graft"):
    import torch

    from mtgraft.patches import SkillPatch

    graftable = [(f"backbone.encoder.layer.{i}.{m}.{w}", shape) for i in range(2)
                 for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                           "attention.output.dense", "intermediate.dense", "output.dense")
                 for w, shape in (("weight", [4, 4]), ("bias", [4]))]
    graftable += [(f"backbone.encoder.layer.{i}.output.LayerNorm.weight", [4]) for i in range(2)]
    assert sum(int(np.prod(s)) for _, s in graftable) == 248
    hdr = {"base_model": "tiny-bert", "base_hash": "sha256:00aa11bb", "graftable": graftable, "task": task,
           "tasks_info": {task: {"labels": ["negative", "positive"]}}, "model_type": "head", "method": method,
           "seed": seed, "metrics": {"test": {"accuracy": 0.75, "rel": 0.8}}}
    idx = np.asarray(idx, dtype=np.int64)
    return SkillPatch.from_flat_values(idx, torch.arange(idx.size, dtype=torch.float32), {}, hdr)


def _graft_folders(root: Path) -> list[str]:
    """Two tasks' 'graft --seeds' output folders: seed-<s>/results.json listing a graft and a topk patch."""
    folders = []
    for t, task in enumerate(("task_a", "task_b")):
        g = root / task
        for s, regions in REGIONS.items():
            d = g / f"seed-{s}"
            d.mkdir(parents=True)
            _seed_patch(task, regions[t], s).save(d / f"{task}-graft.skillpatch")
            _seed_patch(task, np.arange(200, 240), s, "topk").save(d / f"{task}-topk.skillpatch")
            (d / "results.json").write_text(json.dumps({"task": task, "results": [
                {"method": "graft", "patch": str(d / f"{task}-graft.skillpatch")},
                {"method": "topk", "patch": str(d / f"{task}-topk.skillpatch")}]}))
        folders.append(str(g))
    return folders


def test_overlap_report_seeds_aggregates_pair_metrics(tmp_path):
    folders = _graft_folders(tmp_path / "G")
    out = tmp_path / "R"
    res = cli("overlap-report", "--seeds", "13,21,42", "--patches", *folders, "--out", str(out), "--no-track",
              "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    agg = rep["seeds"]
    assert agg["seeds"] == [13, 21, 42] and len(agg["pairs"]) == 1
    pair = agg["pairs"][0]
    P = 248
    inter = {s: len(np.intersect1d(a, b)) for s, (a, b) in REGIONS.items()}
    jac = {s: inter[s] / len(np.union1d(a, b)) for s, (a, b) in REGIONS.items()}
    enr = {s: inter[s] / (len(a) * len(b) / P) for s, (a, b) in REGIONS.items()}
    assert [pair["per_seed"][str(s)]["intersection"] for s in REGIONS] == [20, 10, 38]
    check_agg(pair, "intersection", list(inter.values()))
    check_agg(pair, "jaccard", list(jac.values()))
    check_agg(pair, "enrichment", list(enr.values()))
    assert sum(pair["verdicts"].values()) == 3
    # the topk patches of the folders are not taken (method graft)
    assert all("graft" in Path(f).name for fs in agg["patches"].values() for f in fs)
    # overlap.json carries it, the Markdown page shows it
    assert json.loads((out / "overlap.json").read_text())["seeds"]["pairs"][0]["mean"]["jaccard"] == \
        pytest.approx(np.mean(list(jac.values())))
    md = (out / "report.md").read_text()
    assert "## Pairs over 3 seeds" in md
    m, _, ci = expected(list(jac.values()))
    assert f"{m:.4f} ± {(ci[1] - ci[0]) / 2:.4f}" in md
    assert "Pairs over 3 seeds" in (out / "report.html").read_text()


def test_overlap_report_seeds_from_patch_files_and_errors(tmp_path):
    files = []
    for s, (a, b) in REGIONS.items():
        for task, idx in (("task_a", a), ("task_b", b)):
            files.append(str(_seed_patch(task, idx, s).save(tmp_path / f"{task}-{s}.skillpatch")))
    res = cli("overlap-report", "--seeds", "13,42", *files, "--out", str(tmp_path / "R"), "--no-track", "--json")
    assert res.exit_code == 0, res.output
    pair = json.loads(res.stdout)["seeds"]["pairs"][0]
    assert pair["seeds"] == [13, 42] and [pair["per_seed"][k]["intersection"] for k in ("13", "42")] == [20, 38]
    res = cli("overlap-report", "--seeds", "13,99", *files, "--out", str(tmp_path / "R2"), "--no-track")
    assert res.exit_code != 0 and "seed 99: found 0" in res.output
    res = cli("overlap-report", "--seeds", "13,21", "--task", "task_a", "--out", str(tmp_path / "R3"))
    assert res.exit_code != 0 and "not registry selectors" in res.output


# -------------------------------------------------------------------------------------- study YAMLs


def test_study_with_seeds_runs_per_seed_aggregates_and_resumes(tiny, tmp_path):
    import yaml

    from mtgraft.testing import write_topic_task

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "seeds-smoke", "kind": "joint", "model": tiny["pre"], "seeds": [13, 21],
        "tasks": [example_task_yaml(), write_topic_task(tmp_path / "topic")],
        "train": {"k": 2, "max_steps": 2, "eval_every": 2, "batch_size": 4, "lr": 0.05, "max_length": 32,
                  "max_test": "all", "sampling": "uniform"},
        "graft": {"sparsity": [0.01], "method": ["graft", "topk"], "updates": 2, "recipe": "fast"},
        "report": {"min_enrichment": 2.0}}))
    out = tmp_path / "out"
    args = ["run", str(study), "--out", str(out), "--json"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])
    assert s["seeds"] == [13, 21]
    subs = {k: json.loads((out / f"seed-{k}" / "summary.json").read_text()) for k in (13, 21)}
    metas = {k: json.loads((out / f"seed-{k}" / "train" / "mtgraft.json").read_text()) for k in (13, 21)}
    assert [metas[k]["data"]["seed"] for k in (13, 21)] == [13, 21]
    # the aggregate of every graft equals the mean over the seeds' own summaries
    for r in s["grafts"]["results"]:
        own = [next(e for g in subs[k]["grafts"] if g["task"] == r["task"] for e in g["results"]
                    if e["method"] == r["method"]) for k in (13, 21)]
        check_agg(r, "accuracy", [e["test"]["accuracy"] for e in own])
        assert [e["test"]["accuracy"] for e in own] == [r["per_seed"][k]["accuracy"] for k in ("13", "21")]
    assert {c["b"] for c in s["grafts"]["comparisons_over_seeds"]} == {"topk"}
    rep = s["report_over_seeds"]
    assert rep["seeds"] == [13, 21]
    check_agg(rep["pairs"][0], "jaccard", [subs[k]["report"]["pairs"][0]["jaccard"] for k in (13, 21)])
    md = (out / "summary.md").read_text()
    assert "over 2 seeds (13, 21)" in md and "## Grafts" in md and "Over 2 seeds" in md
    # rerun: every seed's stages are skipped, same aggregate
    res2 = cli(*args)
    assert res2.exit_code == 0 and "skipped" in res2.output
    again = json.loads(res2.stdout.strip().splitlines()[-1])
    assert again["grafts"]["results"] == s["grafts"]["results"]


def test_study_duplicate_seeds_is_an_error(tmp_path):
    from mtgraft.workflows.study import load_study

    y = tmp_path / "s.yaml"
    y.write_text(f"name: x\nkind: single\ntasks: [{example_task_yaml()}]\nseeds: [13, 21, 13]\n")
    with pytest.raises(MtgraftError, match="13 given twice"):
        load_study(y)
    y.write_text(f"name: x\nkind: single\ntasks: [{example_task_yaml()}]\nseeds: [21]\n")
    assert load_study(y).seeds == [21]
