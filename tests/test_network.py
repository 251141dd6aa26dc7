"""The reduced inter-microgrid network built from pandapower's case33bw ."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mmgrid_env.network import Network, NetworkError, build_network

pp = pytest.importorskip("pandapower")
pn = pytest.importorskip("pandapower.networks")

# case33bw's branch table as published (Baran & Wu 1989; pandapower line index -> (from, to, r ohm, x ohm)).
# Only the lines used by the hand checks below; the full table is compared against pandapower at run time.
CASE33_LINES = {
    0: (0, 1, 0.0922, 0.0470),
    1: (1, 2, 0.4930, 0.2511),
    2: (2, 3, 0.3660, 0.1864),
    3: (3, 4, 0.3811, 0.1941),
    4: (4, 5, 0.8190, 0.7070),
    17: (1, 18, 0.1640, 0.1565),
    18: (18, 19, 1.5042, 1.3554),
    19: (19, 20, 0.4095, 0.4784),
    20: (20, 21, 0.7089, 0.9373),
    21: (2, 22, 0.4512, 0.3083),
    22: (22, 23, 0.8980, 0.7091),
    23: (23, 24, 0.8960, 0.7011),
}
BASE_KV, BASE_MVA = 12.66, 10.0
Z_BASE = BASE_KV ** 2 / BASE_MVA  # 16.027556 ohm


@pytest.fixture(scope="module")
def feeder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pn.case33bw()


def _edge(net: Network, from_bus: int, to_bus: int) -> int:
    """Index of the edge from_bus -> to_bus (fails the test if there is none)."""
    for k in range(net.n_edges):
        if net.buses[net.parent[k + 1]] == from_bus and net.buses[k + 1] == to_bus:
            return k
    raise AssertionError(f"no edge {from_bus}->{to_bus} in {net.table()}")


def _edges(net: Network) -> set[tuple[int, int]]:
    return {(net.buses[net.parent[k + 1]], net.buses[k + 1]) for k in range(net.n_edges)}


# ---------------------------------------------------------------------------------------------- the feeder
def test_hand_table_matches_pandapower(feeder):
    """The hand-copied branch data used below is what pandapower's case33bw holds (built at run time)."""
    for idx, (f, t, r, x) in CASE33_LINES.items():
        line = feeder.line.loc[idx]
        assert (int(line.from_bus), int(line.to_bus)) == (f, t)
        assert line.r_ohm_per_km * line.length_km == pytest.approx(r, abs=1e-9)
        assert line.x_ohm_per_km * line.length_km == pytest.approx(x, abs=1e-9)
    assert float(feeder.sn_mva) == BASE_MVA
    assert np.allclose(feeder.bus.vn_kv, BASE_KV)


# ---------------------------------------------------------------------------------------------- default placement
def test_default_placement_edges_and_paths(feeder):
    """Built from pandapower's case33bw at run time (no feeder passed): the paper's default placement."""
    net = build_network([1, 2, 5, 24])
    again = build_network([1, 2, 5, 24], feeder=feeder)
    assert again.buses == net.buses and again.edge_lines == net.edge_lines
    assert np.array_equal(again.r_pu, net.r_pu) and np.array_equal(again.x_pu, net.x_pu)
    assert net.buses == (1, 2, 5, 24)  # no branching bus needed; root first
    assert net.buses[0] == 1 and net.parent[0] == -1
    assert list(net.mg_node) == [0, 1, 2, 3]
    assert _edges(net) == {(1, 2), (2, 5), (2, 24)}
    assert net.edge_lines[_edge(net, 1, 2)] == (1,)
    assert net.edge_lines[_edge(net, 2, 5)] == (2, 3, 4)
    assert net.edge_lines[_edge(net, 2, 24)] == (21, 22, 23)
    assert net.n_nodes == 4 and net.n_edges == 3
    assert list(net.edge_to) == [1, 2, 3]
    assert all(net.parent[k] < k for k in range(1, net.n_nodes))  # parents before children


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_impedances_by_hand(aggregation, feeder):
    net = build_network([1, 2, 5, 24], aggregation=aggregation, feeder=feeder)
    agg = np.mean if aggregation == "mean" else np.sum
    hand = {
        (1, 2): (0.4930, 0.2511),
        (2, 5): (agg([0.3660, 0.3811, 0.8190]), agg([0.1864, 0.1941, 0.7070])),
        (2, 24): (agg([0.4512, 0.8980, 0.8960]), agg([0.3083, 0.7091, 0.7011])),
    }
    # the same numbers written out, so that a wrong aggregation cannot hide behind np.mean/np.sum
    written = {"mean": {(2, 5): (0.522033, 0.362500), (2, 24): (0.748400, 0.572833)},
               "sum": {(2, 5): (1.5661, 1.0875), (2, 24): (2.2452, 1.7185)}}[aggregation]
    for edge, (r, x) in written.items():
        assert hand[edge] == pytest.approx((r, x), abs=1e-6)
    for (f, t), (r, x) in hand.items():
        k = _edge(net, f, t)
        assert net.r_ohm[k] == pytest.approx(r, rel=1e-12)
        assert net.x_ohm[k] == pytest.approx(x, rel=1e-12)
        assert net.r_pu[k] == pytest.approx(r / Z_BASE, rel=1e-12)
        assert net.x_pu[k] == pytest.approx(x / Z_BASE, rel=1e-12)
    assert net.aggregation == aggregation


def test_mean_and_sum_differ_only_on_multi_branch_paths(feeder):
    mean = build_network([1, 2, 5, 24], "mean", feeder=feeder)
    total = build_network([1, 2, 5, 24], "sum", feeder=feeder)
    for k in range(mean.n_edges):
        n = len(mean.edge_lines[k])
        assert total.r_ohm[k] == pytest.approx(n * mean.r_ohm[k], rel=1e-12)
        assert total.x_ohm[k] == pytest.approx(n * mean.x_ohm[k], rel=1e-12)
    assert total.r_ohm[_edge(total, 2, 5)] > mean.r_ohm[_edge(mean, 2, 5)]


def test_per_unit_base(feeder):
    net = build_network([1, 2, 5, 24], feeder=feeder)
    assert net.base_kv == pytest.approx(BASE_KV)
    assert net.base_mva == pytest.approx(BASE_MVA)
    assert net.base_kw == pytest.approx(BASE_MVA * 1000)
    assert net.z_base_ohm == pytest.approx(Z_BASE)
    assert net.i_base_ka == pytest.approx(BASE_MVA / (np.sqrt(3) * BASE_KV))


# ---------------------------------------------------------------------------------------------- branching buses
def test_branching_buses_are_added(feeder):
    net = build_network([17, 21, 32], feeder=feeder)
    assert set(net.buses) == {1, 5, 17, 21, 32}
    assert net.buses[0] == 1  # the branching bus nearest the substation is the root
    assert [net.buses[j] for j in net.mg_node] == [17, 21, 32]  # microgrid order kept
    assert _edges(net) == {(1, 5), (1, 21), (5, 17), (5, 32)}
    assert net.edge_lines[_edge(net, 1, 5)] == (1, 2, 3, 4)
    assert net.edge_lines[_edge(net, 1, 21)] == (17, 18, 19, 20)
    assert net.edge_lines[_edge(net, 5, 17)] == tuple(range(5, 17))
    assert net.edge_lines[_edge(net, 5, 32)] == tuple(range(24, 32))
    total = build_network([17, 21, 32], aggregation="sum", feeder=feeder)
    k = _edge(total, 1, 21)
    assert total.r_ohm[k] == pytest.approx(0.1640 + 1.5042 + 0.4095 + 0.7089, rel=1e-12)
    assert total.x_ohm[k] == pytest.approx(0.1565 + 1.3554 + 0.4784 + 0.9373, rel=1e-12)


def test_root_can_be_a_branching_bus_and_chains_need_none(feeder):
    net = build_network([18, 22], feeder=feeder)  # paths 1-18 and 1-2-22 meet at bus 1
    assert net.buses[0] == 1 and 1 not in [net.buses[j] for j in net.mg_node]
    assert _edges(net) == {(1, 18), (1, 22)}
    chain = build_network([2, 5], feeder=feeder)  # 5 lies below 2: no extra node
    assert chain.buses == (2, 5) and chain.edge_lines == ((2, 3, 4),)
    single = build_network([7], feeder=feeder)
    assert single.buses == (7,) and single.n_edges == 0 and list(single.mg_node) == [0]


def test_random_placements_form_a_valid_reduced_tree(feeder):
    """Property check over random bus sets: closure, parent order, contiguous feeder paths, no node skipped."""
    rng = np.random.default_rng(0)
    line_ends = {int(i): (int(r.from_bus), int(r.to_bus)) for i, r in feeder.line[feeder.line.in_service].iterrows()}
    for _ in range(30):
        buses = [int(b) for b in rng.choice(33, size=rng.integers(1, 9), replace=False)]
        net = build_network(buses, aggregation=str(rng.choice(["mean", "sum"])), feeder=feeder)
        assert set(buses) <= set(net.buses)
        assert [net.buses[j] for j in net.mg_node] == buses
        assert net.parent[0] == -1 and all(0 <= net.parent[k] < k for k in range(1, net.n_nodes))
        children = np.bincount(net.parent[1:], minlength=net.n_nodes)
        for j, b in enumerate(net.buses):  # an added node is a branching node (root: >= 1 child if it is extra)
            if b not in buses:
                assert children[j] >= (1 if j == 0 else 2), (buses, net.table())
        for k in range(net.n_edges):
            path = net.edge_lines[k]
            u = net.buses[net.parent[k + 1]]
            for li in path:  # walk the path from the parent bus down to the child bus
                f, t = line_ends[li]
                assert u in (f, t)
                u = t if u == f else f
                if li != path[-1]:
                    assert u not in net.buses  # no other node inside an edge's path
            assert u == net.buses[k + 1]
            r = sum(float(feeder.line.r_ohm_per_km[li] * feeder.line.length_km[li]) for li in path)
            expect = r if net.aggregation == "sum" else r / len(path)
            assert net.r_ohm[k] == pytest.approx(expect, rel=1e-12)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad", [33, 99, -1])
def test_unknown_bus_is_named(bad, feeder):
    with pytest.raises(NetworkError, match=rf"unknown bus {bad}\b"):
        build_network([1, bad, 5], feeder=feeder)


def test_duplicate_bus_is_named(feeder):
    with pytest.raises(NetworkError, match="duplicate") as exc:
        build_network([3, 7, 3], feeder=feeder)
    assert "3" in str(exc.value)


def test_empty_bus_list(feeder):
    with pytest.raises(NetworkError, match="empty"):
        build_network([], feeder=feeder)


def test_bad_options(feeder):
    with pytest.raises(NetworkError, match="aggregation"):
        build_network([1, 2], aggregation="median", feeder=feeder)
    with pytest.raises(NetworkError, match="topology"):
        build_network([1, 2], topology="full33", feeder=feeder)
    assert issubclass(NetworkError, ValueError)


# ---------------------------------------------------------------------------------------------- table, pandapower
@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_table(aggregation, feeder):
    net = build_network([1, 2, 5, 24], aggregation=aggregation, feeder=feeder)
    text = net.table()
    lines = text.splitlines()
    assert len(lines) == 1 + net.n_edges + 1  # header, one row per edge, footer
    for b in (1, 2, 5, 24):
        assert f"bus{b}" in text
    assert "[2, 3, 4]" in text and "[21, 22, 23]" in text and "[1]" in text
    assert aggregation in lines[0]
    row = next(line for line in lines[1:] if "[2, 3, 4]" in line).split()
    assert (int(row[1]), int(row[2])) == (2, 5)
    assert float(row[3]) == pytest.approx(net.r_ohm[_edge(net, 2, 5)], abs=1e-4)
    assert "12.66" in lines[-1] and "root bus 1" in lines[-1]


def test_to_pandapower_topology_and_no_load_flow(feeder):
    net = build_network([17, 21, 32], aggregation="sum", feeder=feeder)
    ppnet = net.to_pandapower(np.zeros(net.n_nodes), np.zeros(net.n_nodes))
    assert len(ppnet.bus) == net.n_nodes and len(ppnet.line) == net.n_edges and len(ppnet.sgen) == net.n_nodes
    assert int(ppnet.ext_grid.bus.iloc[0]) == 0
    assert float(ppnet.sn_mva) == net.base_mva
    for k in range(net.n_edges):
        line = ppnet.line.loc[k]
        assert (int(line.from_bus), int(line.to_bus)) == (int(net.parent[k + 1]), k + 1)
        assert line.r_ohm_per_km * line.length_km == pytest.approx(net.r_ohm[k])
        assert line.x_ohm_per_km * line.length_km == pytest.approx(net.x_ohm[k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(ppnet, numba=False, lightsim2grid=False)
    assert np.allclose(ppnet.res_bus.vm_pu, 1.0, atol=1e-10)
    assert abs(ppnet.res_line.pl_mw.sum()) < 1e-12


# ---------------------------------------------------------------------------------------------- full feeder topology
def test_full_feeder_topology_of_case33bw():
    """Every bus a node, every in-service line its own edge with its own impedance, every bus with its own load."""
    import pandapower.networks as pn

    ref = pn.case33bw()
    net = build_network([17, 21, 24, 32], topology="feeder")
    assert net.topology == "feeder" and net.n_nodes == 33 and net.n_edges == 32 and net.buses[0] == 0
    assert net.background_p_kw.sum() == pytest.approx(1000 * ref.load.p_mw.sum())  # 3715 kW
    assert net.background_q_kvar.sum() == pytest.approx(1000 * ref.load.q_mvar.sum())  # 2300 kVar
    for k in range(net.n_edges):
        (li,) = net.edge_lines[k]
        line = ref.line.loc[li]
        assert {int(line.from_bus), int(line.to_bus)} == {net.buses[net.parent[k + 1]], net.buses[k + 1]}
        assert net.r_ohm[k] == pytest.approx(line.r_ohm_per_km * line.length_km)
    assert [net.buses[j] for j in net.mg_node] == [17, 21, 24, 32]
    assert "feeder topology" in net.table() and "3715.0 kW" in net.table()


def test_full_feeder_exported_to_pandapower_has_case33bw_power_flow():
    """The network as data, exported back to pandapower with its loads, gives case33bw's own AC power flow: the
    same voltages at every bus (v_min 0.913 p.u. at bus 17) and the same losses (~203 kW)."""
    import pandapower as pp
    import pandapower.networks as pn

    ref = pn.case33bw()
    pp.runpp(ref)
    net = build_network([17], topology="feeder")
    mine = net.to_pandapower()
    pp.runpp(mine)
    v_ref = ref.res_bus.vm_pu.loc[list(net.buses)].to_numpy()
    np.testing.assert_allclose(mine.res_bus.vm_pu.to_numpy(), v_ref, atol=1e-9)
    assert mine.res_line.pl_mw.sum() == pytest.approx(ref.res_line.pl_mw.sum(), rel=1e-9)
    assert v_ref.min() == pytest.approx(0.913, abs=1e-3) and 1000 * ref.res_line.pl_mw.sum() == pytest.approx(203, abs=1)


def test_another_radial_pandapower_feeder_kerber():
    """A Kerber low-voltage feeder: its substation transformer's secondary bus becomes the root."""
    import pandapower.networks as pn

    kerber = pn.create_kerber_landnetz_freileitung_1()
    net = build_network([5, 9], topology="feeder", feeder=kerber)
    assert net.buses[0] == 1 and net.base_kv == pytest.approx(0.4)  # the trafo's LV bus
    assert net.n_nodes == 14 and net.n_edges == 13
    assert net.background_p_kw.sum() == pytest.approx(1000 * kerber.load.p_mw.sum())
    reduced = build_network([5, 9], topology="reduced", feeder=kerber)
    assert reduced.buses[0] in net.buses


def test_meshed_or_unsupported_feeders_are_refused():
    import pandapower.networks as pn

    meshed = pn.case33bw()
    meshed.line.loc[:, "in_service"] = True  # the five tie lines closed
    with pytest.raises(NetworkError, match="meshed network: line .* closes a loop"):
        build_network([17], topology="feeder", feeder=meshed)
    with pytest.raises(NetworkError, match="meshed"):
        build_network([17], topology="reduced", feeder=meshed)  # the reduced topology was silently wrong before
    two = pn.case33bw()
    import pandapower as pp

    pp.create_ext_grid(two, bus=17)
    with pytest.raises(NetworkError, match="exactly one in-service ext_grid"):
        build_network([5], topology="feeder", feeder=two)
    with pytest.raises(NetworkError, match="topology must be"):
        build_network([5], topology="full")
