"""Helpers of benchmarks/bench_train.py and benchmarks/bench_graft.py (no model, no training)."""

from __future__ import annotations

import importlib.util
import resource
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_graft = _load("bench_graft")
bench_train = _load("bench_train")


def test_throughput_skips_warmup():
    stamps = [1.0, 2.0, 4.0, 6.0, 8.0]  # 2 warm-up steps, then 3 steps in 6 s
    assert bench_train.throughput(stamps, 2, 8) == pytest.approx(3 * 8 / 6.0)
    with pytest.raises(ValueError):
        bench_train.throughput(stamps, 0, 8)
    with pytest.raises(ValueError):
        bench_train.throughput(stamps[:2], 2, 8)


def test_token_rate_counts_timed_steps_only():
    stamps = [(0.0, 0.0, 100), (1.0, 1.0, 300), (3.0, 2.0, 700)]
    assert bench_train.token_rate(stamps, 1) == pytest.approx((700 - 100) / 3.0)


def test_run_measured_reports_child_peak_memory():
    # a child's ru_maxrss starts at the parent's peak (fork), so allocate well above this test process's
    mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 + 64
    code = (f"b = bytearray({mib} * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); "
            "print('{\"ok\": 1}')")
    r = bench_graft.run_measured([sys.executable, "-c", code])
    assert r["rc"] == 0
    assert r["peak_rss_mib"] >= mib
    assert bench_graft._json(r["stdout"]) == {"ok": 1}
    small = bench_graft.run_measured([sys.executable, "-c", "raise SystemExit(3)"])
    assert small["rc"] == 3
    assert small["peak_rss_mib"] < r["peak_rss_mib"]


def test_bench_graft_parent_stays_small():
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import bench_graft; "
            "print(sorted(m for m in ('torch', 'mtgraft', 'transformers') if m in sys.modules))")
    r = bench_graft.run_measured([sys.executable, "-c", code])
    assert r["rc"] == 0, r["stderr_tail"]
    assert r["stdout"].strip() == "[]"


def test_patch_file_stats_reads_safetensors_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "p.safetensors"
    save_file({"idx/a": torch.arange(10, dtype=torch.int32), "val/a": torch.zeros(10),
               "head/h.weight": torch.zeros(6)}, path, metadata={"x": "y"})
    st = bench_graft.patch_file_stats(path, 10)
    assert st["head_bytes"] == 24
    assert st["region_bytes"] == 80  # int32 index + float32 value per entry
    assert st["bytes_per_grafted_param"] == pytest.approx(8.0)
    assert st["header_bytes"] + st["head_bytes"] + st["region_bytes"] == path.stat().st_size


def test_cli_options_and_variant_settings():
    assert bench_graft.cli_options({"lr": 1e7, "updates": 20, "step_rule": "gd"}) == [
        "--lr", "1e+07", "--updates", "20", "--step-rule", "gd"]
    recipes = {"paper": {"candidates": None, "budget": "free", "updates": 100},
               "fast": {"candidates": 10, "budget": "strict", "updates": 20}}
    v = {"recipe": "paper", "options": {"budget": "strict", "updates": 10}}
    assert bench_graft.variant_settings(v, recipes) == {"candidates": None, "budget": "strict", "updates": 10}
    # every variant that wants all entries as candidates must start from a recipe without a candidate cap
    for name, var in bench_graft.VARIANTS.items():
        if "call" in name:
            assert var["recipe"] == "paper" and "candidates" not in var["options"]


def _row(variant, s, rel, seconds, peak=1000.0, budget="strict", region=100):
    return {"variant": variant, "sparsity": s, "rel": rel, "seconds": seconds, "peak_rss_mib": peak,
            "region_size": region, "wall_s": seconds + 10, "cpu_s": seconds + 20, "learn_settings": {"budget": budget}}


def test_goals_choose_the_best_variant_that_meets_goal_a():
    rows = [_row("paper", 1e-3, 0.80, 100.0, budget="free", region=400),
            _row("slow-good", 1e-3, 0.85, 50.0),  # too slow (> a fifth)
            _row("fast-ok", 1e-3, 0.795, 10.0),  # within 0.01, a tenth of the time
            _row("fast-better", 1e-3, 0.81, 20.0),  # exactly a fifth: allowed
            _row("fast-bad", 1e-3, 0.70, 5.0)]
    g = bench_graft.goals(rows, {}, default="fast-ok")
    assert g["choice"]["variant"] == "fast-better"
    assert g["choice"]["meets_goal_a"] is True
    assert g["a"]["slow-good@0.001"]["time_ok"] is False
    assert g["a"]["fast-bad@0.001"]["rel_ok"] is False
    assert g["a"]["fast-ok@0.001"]["time_fraction"] == pytest.approx(0.1)


def test_goals_b_compares_graft_with_finetuning():
    rows = [_row("paper", 1e-3, 0.8, 100.0), _row("fast", 1e-3, 0.8, 10.0, peak=1300.0)]
    ft = {"wall_s": 30.0, "train_seconds": 25.0, "peak_rss_mib": 1000.0}
    b = bench_graft.goals(rows, ft)["b"]["0.001"]
    assert b["wall_ratio"] == pytest.approx(20.0 / 30.0)
    assert b["time_ok"] is True
    assert b["peak_ok"] is False  # 1.3x > 1.2x


def test_markdown_renders_every_row_and_goal():
    settings = {"budget": "strict", "step_rule": "gd", "lr": 1e8, "updates": 10, "candidates": 10, "patience": 2}
    rows = []
    for name, sec, rel in (("paper", 100.0, 0.8), ("fast", 10.0, 0.79)):
        r = _row(name, 1e-3, rel, sec)
        r.update({"k": 100, "accuracy": 0.7, "updates_run": 3, "best_update": 1,
                  "learn_settings": dict(settings, budget="free" if name == "paper" else "strict")})
        rows.append(r)
    rows[1]["patch"] = {"file_bytes": 2000, "header_bytes": 900, "head_bytes": 300, "region_bytes": 800,
                        "bytes_per_grafted_param": 8.0}
    ft = {"command": "train ...", "wall_s": 30.0, "train_seconds": 25.0, "peak_rss_mib": 1000.0,
          "test_accuracy": 0.74}
    result = {"rows": rows, "finetune": ft, "goals": bench_graft.goals(rows, ft)}
    md = bench_graft.markdown(result)
    assert "| paper |" in md and "| fast |" in md
    assert "| 0.10 |" in md  # fast's time as a fraction of the paper recipe's
    assert "| 8.00 |" in md  # bytes per grafted parameter
    assert "**fast**" in md


def test_core_cpu_subtracts_the_topk_command_at_the_same_sparsity():
    rows = [_row("topk", 1e-3, 0.5, 0.0), _row("fast", 1e-3, 0.5, 10.0), _row("fast", 1e-4, 0.5, 10.0)]
    rows[0]["cpu_s"], rows[1]["cpu_s"], rows[2]["cpu_s"] = 60.0, 95.0, 90.0
    bench_graft.add_core_cpu(rows)
    assert rows[1]["core_cpu_s"] == pytest.approx(35.0)
    assert "core_cpu_s" not in rows[0] and "core_cpu_s" not in rows[2]  # no top-k child at 1e-4


bench_localize = _load("bench_localize")


def _record(task: str, seed: int, rel_topk: float, rel_x: float, learned: bool = True) -> dict:
    """A setting with P0 = 0.5, P1 = 0.7 (gain 0.2), top-k and graft at rel_topk, x at rel_x."""
    p0, gain = 0.5, 0.2
    rows = [{"method": m, "sparsity": s, "rel": r, "accuracy": p0 + r * gain, "select_seconds": t,
             "peak_mib_above_start": 10.0}
            for s in (1e-4, 1e-3) for m, r, t in (("topk", rel_topk, 0.1), ("x", rel_x, 1.0), ("graft", rel_topk, 2.0))]
    jitter = [0.002 * ((i % 5) - 2) for i in range(200)]
    return {"task": task, "seed": seed, "learned_clearly": learned, "rows": rows,
            "pretrained": {"accuracy": p0}, "finetuned": {"accuracy": p0 + gain},
            "gain_samples": [gain + j for j in jitter],
            "acc_diff_samples": {f"{m}@{s:g}": [(rel_x - rel_topk) * gain + j if m == "x" else 0.0 for j in jitter]
                                 for s in (1e-4, 1e-3) for m in ("x", "graft")}}


def test_bench_localize_goal_needs_the_difference_and_both_intervals():
    a = bench_localize.parse_args(["--methods", "topk", "x", "graft"])
    recs = [_record("a", 13, 0.2, 0.45), _record("a", 21, 0.3, 0.5), _record("b", 13, 0.1, 0.32),
            _record("b", 21, 0.25, 0.4, learned=False)]
    summ = bench_localize.summarise(recs, a)
    g = summ["all"]["goal"]
    assert g["x"]["met"] and g["x"]["met_including_time"]  # 1.0 s a region, the default 2.0 s
    row = next(r for r in summ["all"]["rows"] if (r["method"], r["sparsity"]) == ("x", 1e-4))
    assert row["vs_topk"]["mean_diff"] > 0.1 and row["vs_topk"]["ci95"][0] > 0
    assert row["vs_topk"]["pooled_diff"] == pytest.approx((0.25 + 0.2 + 0.22 + 0.15) / 4)  # equal gains
    assert row["vs_topk"]["pooled_bootstrap_ci95"][0] > 0
    assert row["rel_pooled"] == pytest.approx((0.45 + 0.5 + 0.32 + 0.4) / 4)
    assert not g["graft"]["met"]  # no difference at all
    assert summ["learned_clearly"]["settings"] == ["a/seed-13", "a/seed-21", "b/seed-13"]
    small = [_record("a", 13, 0.2, 0.25), _record("a", 21, 0.3, 0.35), _record("b", 13, 0.1, 0.15)]
    assert not bench_localize.summarise(small, a)["all"]["goal"]["x"]["met"]  # +0.05 < 0.10
    assert "met by x" in bench_localize.markdown(summ, a)


def test_bench_localize_parent_imports_no_torch():
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import bench_localize; "
            "print(sorted(m for m in ('torch', 'mtgraft.grafting.methods') if m in sys.modules))")
    r = bench_graft.run_measured([sys.executable, "-c", code])
    assert r["rc"] == 0, r["stderr_tail"]
    assert r["stdout"].strip() == "[]"


def test_bench_scale_table_reads_its_measurements():
    bench_scale = _load("bench_scale")
    ft = {"s_per_step": 0.5, "peak_rss_mib": 1000.0, "wall_s": 100.0}
    g = {"sparsity": 1e-4, "region_size": 1065, "graft_seconds": 12.5, "wall_s": 50.0, "time_ratio": 0.5,
         "peak_rss_mib": 1100.0, "peak_ratio": 1.1, "rel": 0.25, "patch": {"bytes_per_grafted_param": 8.0}}
    res = {"models": [{"model": "minilm", "graftable_size": 10646784, "finetune": ft, "grafts": [g],
                       "overlap": {"k": 10647, "body": 10646784, "seconds": 0.0125}}]}
    row = bench_scale.markdown(res).splitlines()[2]
    assert row == ("| minilm | 10,646,784 | 0.50 | 1000 | 0.0001 | 1,065 | 12.5 | 50 / 100 = 0.50 | 1100 (1.10×) "
                   "| 8.00 | 0.25 |")
    assert "12.5 ms" in bench_scale.markdown(res)
