"""A joint run on two real offline tasks (tiny model), then ``graft --all-tasks`` on its checkpoint."""

from __future__ import annotations

import pytest

from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.patches import SkillPatch
from mtgraft.testing import make_tiny_model
from mtgraft.training.multitask import MultitaskConfig, train_multitask


@pytest.mark.integration
def test_joint_on_real_tasks_then_graft_all_tasks(tmp_path, mlflow_local_uri):
    model = make_tiny_model("head", tmp_path / "tiny", seed=7)
    cfg = MultitaskConfig(tasks="rotten_tomatoes,debate_party", mode="joint", model=model, k=4, max_test=40,
                          max_length=32, batch_size=4, max_steps=4, eval_every=2, lr=0.05, out=str(tmp_path / "joint"),
                          tracking_uri=mlflow_local_uri)
    r = train_multitask(cfg, show_progress=False)
    assert r.tasks == ["rotten_tomatoes", "debate_party"]
    assert r.test["debate_party"]["n"] == 40 and r.data["n_train"] == {"rotten_tomatoes": 8, "debate_party": 12}
    res = run_graft(GraftConfig(all_tasks=True, finetuned=r.checkpoint, sparsity=[0.01], method=["graft"], updates=2,
                                out=str(tmp_path / "grafts"), track=False, do_register=False), show_progress=False)
    assert [g.task for g in res] == r.tasks
    for g in res:
        patch = SkillPatch.load(g.results[0]["patch"])
        assert patch.header.task == g.task and patch.header.finetuned["mode"] == "joint"
        # one head per task: each patch carries only its own task's head
        assert set(patch.head) == {f"heads.{g.task}.weight", f"heads.{g.task}.bias"}
        # the graft run's fine-tuned reference is the joint model on that task
        assert g.reference["finetuned"]["accuracy"] == pytest.approx(r.test[g.task]["accuracy"])
