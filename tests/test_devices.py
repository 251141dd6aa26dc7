"""The scalar per-microgrid step (what the env runs) against the vectorised device functions (the oracle's)."""

import numpy as np
import pytest

from mmgrid_env import make_config
from mmgrid_env.devices import (STEP_FIELDS, action_to_setpoints, cost_term_names, ess_step, fleet_from_config,
                                lower_layer_costs,
                                microgrid_params, microgrid_step, soc_penalty)


@pytest.mark.parametrize("export_discount", [0.0, 0.3])
def test_microgrid_step_matches_the_vectorised_functions(export_discount):
    fleet = fleet_from_config(make_config("paper"))
    params = microgrid_params(fleet)
    rng = np.random.default_rng(7)
    dt = 1.0
    for trial in range(300):
        # actions partly outside [-1, 1] (clipped), SoC at and near its physical limits, negative prices
        act = rng.uniform(-1.6, 1.6, (fleet.n, 4))
        soc = rng.choice([0.0, 1.0, 0.02, 0.98, 0.5], fleet.n) if trial % 3 == 0 else rng.uniform(0, 1, fleet.n)
        price = rng.uniform(-0.1, 0.4)
        sell = price - export_discount * abs(price)
        pv, wt, load = rng.uniform(0, 300, fleet.n), rng.uniform(0, 300, fleet.n), rng.uniform(50, 400, fleet.n)
        q_load = load * fleet.tan_phi
        # reference: the vectorised functions
        clipped = np.clip(act, -1, 1)
        setp = action_to_setpoints(fleet, clipped)
        p_ess, p_cha, p_dis, soc_next = ess_step(fleet, soc, setp[:, 1], dt)
        f_mg, f_mt, f_ess = lower_layer_costs(fleet, price, setp[:, 0], setp[:, 2], p_cha, p_dis, dt, export_discount)
        ref = {
            "p_mt_kw": setp[:, 0], "p_ess_kw": p_ess, "p_ess_requested_kw": setp[:, 1], "p_charge_kw": p_cha,
            "p_discharge_kw": p_dis, "p_grid_kw": setp[:, 2], "q_grid_kvar": setp[:, 3],
            "p_net_kw": pv + wt + setp[:, 0] + p_ess + setp[:, 2] - load, "q_net_kvar": setp[:, 3] - q_load,
            "soc": soc_next, "soc_violation": soc_penalty(fleet, soc_next),
            "actions_clipped": np.count_nonzero(np.abs(act) > 1, axis=1), "cost_grid_eur": f_mg,
            "cost_mt_eur": f_mt, "cost_ess_eur": f_ess,
        }
        for i in range(fleet.n):
            out = microgrid_step(params[i], float(soc[i]), act[i].tolist(), pv[i], wt[i], load[i], q_load[i],
                                 price, sell, dt)
            assert len(out) == len(STEP_FIELDS) + 1  # the physical values, then the cost terms' €
            for name, value in [*zip(STEP_FIELDS, out), *zip(cost_term_names(), out.costs_eur)]:
                assert value == pytest.approx(ref[name][i], rel=1e-12, abs=1e-9), (trial, i, name)
            assert 0.0 <= out[STEP_FIELDS.index("soc")] <= 1.0
