"""End to end in real mode: feedback over ``POST /{app}/update`` moves an application's
traffic from a failing model to a good one (real server, real model containers)."""

from __future__ import annotations

import numpy as np

from clipperlab.experiments.selection_real import deploy, real_server
from clipperlab.workloads.zoo import Switchable, load_zoo


def test_feedback_moves_traffic_from_a_failing_model_to_a_good_one() -> None:
    """Two containers behind one Exp3 application: ``bad`` answers a wrong class every
    time (a ``Switchable`` whose flag is set), ``good`` is the zoo's RBF SVM.  Traffic
    starts split; after labels come back for each answer, nearly all of it goes to
    ``good`` and the answers are right.  Switching the policy through the admin API takes
    effect without a restart, and an update by input (no query id) joins with the cache."""
    zoo = load_zoo("digits-10")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, zoo.pool_y.size, 160)
    with real_server(seed=0) as rig:
        flag = rig.tmp / "bad.flag"
        flag.touch()
        deploy(rig.admin, "bad", Switchable(zoo.models["logreg"], str(flag), 10))
        deploy(rig.admin, "good", zoo.models["rbf_svm"])
        rig.admin.add_app("e2e", slo_ms=2000, default_output=-1, policy="exp3",
                          policy_params={"eta": 0.3, "gamma": 0.02}, input_shape=[64])
        rig.admin.link("e2e", ["bad", "good"])
        rig.admin.wait_ready(app="e2e", timeout_s=120)
        c = rig.client()
        p0 = rig.admin.inspect()["selection"]["e2e"]["probabilities"]
        assert abs(p0["good"] - 0.5) < 1e-9
        used: list[str] = []
        right: list[bool] = []
        for i in idx.tolist():
            r = c.predict("e2e", zoo.pool_x[i])
            assert not r["default"] and len(r["models"]) == 1
            used.append(r["models"][0])
            right.append(r["output"] == int(zoo.pool_y[i]))
            u = c.update("e2e", int(zoo.pool_y[i]), query_id=r["query_id"])
            assert set(u["losses"]) == {r["models"][0]}
        p = rig.admin.inspect()["selection"]["e2e"]["probabilities"]
        assert p["good"] > 0.95
        assert "bad" in used[:40]
        assert used[-40:].count("good") >= 36 and sum(right[-40:]) >= 34
        # policy switch through the admin API, no restart
        rig.admin.set_policy("e2e", "static", {"model": "bad"})
        r = c.predict("e2e", zoo.pool_x[0])
        assert r["models"] == ["bad"] and r["output"] != int(zoo.pool_y[0])
        # feedback by input joins with the prediction cached by that query
        u = c.update("e2e", int(zoo.pool_y[0]), input=zoo.pool_x[0])
        assert u["from_cache"] == 1 and u["computed"] == 0 and u["losses"] == {"bad": 1.0}
        c.close()
