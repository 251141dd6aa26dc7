"""Configuration of the multi-microgrid model: plain frozen dataclasses and named presets.

Every number of the model lives here, with its unit in its name. A preset is a complete
:class:`EnvConfig`; a named preset never changes meaning silently (see ``docs/model.md``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = [
    "MicrogridConfig",
    "OPFConfig",
    "EnvConfig",
    "presets",
    "FEEDER_BUSES",
    "SIMBENCH_MIX",
    "make_config",
    "ConfigError",
]


PROFILE_FIELDS = ("load_profile", "pv_profile", "wind_profile")
"""The :class:`MicrogridConfig` fields that name dataset columns (checked against the dataset by the env)."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the problem."""


@dataclass(frozen=True)
class MicrogridConfig:
    """One microgrid: its bus, renewable/load sizes, devices and trade limits.

    Units are in the names: kW, kWp, kWh, kVar, € (EUR), h.
    """

    bus: int
    """pandapower bus index (0-based) of ``case33bw`` where the microgrid connects."""
    pv_kwp: float
    """PV peak power; P_PV(t) = pv_kwp * pv_pu(t)."""
    wt_kw: float
    """Wind turbine rating; P_WT(t) = wt_kw * wind_pu(t)."""
    load_peak_kw: float
    """Load peak; P_load(t) = load_peak_kw * load_pu(t)."""
    power_factor: float = 0.95
    """Load power factor; Q_load = P_load * tan(acos(pf))."""
    # Micro gas turbine (eq. 4, 20)
    mt_min_kw: float = 0.0
    mt_max_kw: float = 150.0
    mt_cost_a_eur_per_kw2h: float = 1e-4
    mt_cost_b_eur_per_kwh: float = 0.09
    mt_cost_c_eur_per_h: float = 1.0
    # Energy storage (eq. 5, 6, 21)
    ess_capacity_kwh: float = 400.0
    ess_charge_max_kw: float = 100.0
    ess_discharge_max_kw: float = 100.0
    ess_eta_charge: float = 0.95
    ess_eta_discharge: float = 0.95
    ess_cost_eur_per_kwh: float = 0.005
    soc_min: float = 0.1
    soc_max: float = 0.9
    soc_init: float = 0.5
    # Main-grid trade at the microgrid's point of common coupling (eq. 7, 8)
    grid_p_min_kw: float = -300.0
    grid_p_max_kw: float = 300.0
    grid_q_min_kvar: float = -200.0
    grid_q_max_kvar: float = 200.0
    # Which per-unit columns of the dataset drive this microgrid (e.g. a SimBench household or commercial load
    # shape of the bundled data, ``Dataset.columns``); P_load = load_peak_kw × load_profile(t) and so on
    load_profile: str = "load_pu"
    pv_profile: str = "pv_pu"
    wind_profile: str = "wind_pu"


@dataclass(frozen=True)
class OPFConfig:
    """Upper layer: the SOCP-relaxed branch-flow OPF between microgrids (docs/model.md, "Upper layer")."""

    topology: str = "reduced"
    """``"reduced"``: the microgrid buses plus the branching buses the tree needs (the paper's). ``"feeder"``: every
    bus and line of the feeder with its own load, the substation (the root) the only connection to the main grid;
    each microgrid's trades are delivered through it (docs/model.md, "The full feeder")."""
    substation_v_pu: float = 1.0
    """Voltage the substation holds at the root (p.u.; an on-load tap changer typically holds 1.02–1.05)."""
    grid_fee_eur_per_kwh: float = 0.0
    """Retail tariff: a fee on every kWh a microgrid buys from the main grid (its schedule and its balancing)."""
    export_fee_eur_per_kwh: float = 0.0
    """Retail tariff: a fee on every kWh a microgrid sells to the main grid."""
    sharing: bool = False
    """Full feeder: the microgrids' imbalances are netted against each other through the feeder (a deficit bought
    from a neighbour's surplus at the price c + ``sharing_fee_eur_per_kwh``, the seller earning c) before the rest is
    settled at the balancing prices (docs/model.md, "The full feeder")."""
    sharing_fee_eur_per_kwh: float = 0.01
    """The local fee on energy shared between microgrids (€/kWh; paid to the feeder, lost to the team)."""
    background_load_scale: float = 1.0
    """Full feeder: the feeder's own load is its nominal load (case33bw: 3715 kW) × this × the dataset's load_pu of
    the hour."""
    impedance_aggregation: str = "mean"
    """How an edge's impedance aggregates the feeder branches it stands for: ``"mean"`` (the paper) or
    ``"sum"`` (physical series impedance)."""
    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    current_limit_ka: float | None = None
    """Line current limit (case33bw's own ``max_i_ka`` is a placeholder); ``None`` = no limit."""
    balancing_kappa: float = 0.2
    """Imbalance mark-up κ: π⁺ = c + κ|c| (c ≥ 0) or κ|c| (c < 0); π⁻ = c − κ|c|."""
    loss_price_floor_eur_per_kwh: float = 0.02
    """Loss weight w_t = max(c_t, floor, margin − π⁻_t); keeps fictitious losses from ever being the cheapest
    outlet."""
    loss_price_margin_eur_per_kwh: float = 0.005
    """How much more a kWh lost costs than a kWh exported at a negative price (w_t ≥ margin − π⁻_t)."""
    reactive_cost_rel: float = 0.01
    reactive_cost_abs_eur_per_kvarh: float = 1e-4
    """c_q = reactive_cost_rel·|c_t| + reactive_cost_abs (€/kVArh) for |ΔQ|."""
    reactive_slack_cost_factor: float = 2.0
    """Unserved/absorbed reactive power beyond the ΔQ limits costs this multiple of c_q."""
    voll_eur_per_kwh: float = 10.0
    """Value of lost load: price of explicit load shedding."""
    curtailment_cost_eur_per_kwh: float = 1e-4
    """Curtailment is (almost) free; a tiny price keeps it from being used for nothing."""
    voltage_penalty_eur_per_pu_h: float = 1e5
    """Penalty per p.u. of squared-voltage limit violation and hour (soft voltage limits)."""
    solver_base_mva: float | None = None
    """Power base of the solver's own per-unit scaling (numerics only; results are reported in kW and on the
    feeder's base). ``None``: the sum of the microgrids' largest trade limits, so that flows are O(1)."""
    solver: str = "clarabel"
    """Primary solver of the fast path: ``"clarabel"`` (persistent, updated in place) or ``"ecos"``."""
    fallback_solver: str = "ecos"
    """Second solver on failure; after it, the documented safe dispatch."""


@dataclass(frozen=True)
class EnvConfig:
    """Everything that defines an environment instance."""

    microgrids: tuple[MicrogridConfig, ...]
    opf: OPFConfig = field(default_factory=OPFConfig)
    dataset: Any = "smard_lu_2024"
    """Name of a bundled dataset, a path to a CSV of the same schema, or a :class:`mmgrid_env.Dataset`."""
    dt_h: float = 1.0
    reward_mode: str = "shared"
    """``"shared"``: each agent gets r_t/N. ``"individual"``: own cost plus own share of the upper layer."""
    alpha: float = 1.0
    """Weight of the lower-layer € cost in the agent reward (eq. 26)."""
    beta: float = 50.0
    """Weight of the SoC soft-limit penalty cons(SoC) in the agent reward (€ per unit of SoC outside limits)."""
    export_discount: float = 0.0
    """Selling to the main grid earns c − d·|c| per kWh (= c(1 − d) for c ≥ 0; convex for any c)."""
    price_scale_eur_per_kwh: float = 0.1
    """Observation scale of the price: obs = c_t / price_scale."""
    obs_hour: bool = False
    """Append sin/cos of the hour of day to each observation and to the state."""
    obs_q_load: bool = False
    """Append Q_load / load_peak to each observation."""
    obs_price_forecast: int = 0
    """Append the day-ahead prices of the next k hours, k = this value (``True`` = 1, ``False`` = 0), each
    ÷ price_scale. The bundled prices are day-ahead auction results, published around 12:45 CET the day before, so
    k ≤ 11 is information a real operator has at every hour (at 12:00 the next 11 hours are still today; from
    13:00 tomorrow's prices are known). Beyond the data's last hour the last price repeats."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_number(v: Any) -> bool:
    """A real number (int, float or a NumPy scalar), not a bool or a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_number(where: str, v: Any, *, lo: float | None = None, hi: float | None = None,
                  lo_open: bool = False, what: str = "") -> None:
    """``v`` is a finite real number within [lo, hi] (or (lo, hi] with ``lo_open``); the error names the field."""
    _check(_is_number(v), f"{where} must be a number, got {v!r} ({type(v).__name__})")
    _check(math.isfinite(v), f"{where} must be finite, got {v!r}")
    if lo is not None:
        ok = v > lo if lo_open else v >= lo
        _check(ok, f"{where} must be {'>' if lo_open else '>='} {lo}{what}, got {v!r}")
    if hi is not None:
        _check(v <= hi, f"{where} must be <= {hi}{what}, got {v!r}")


def _check_int(where: str, v: Any, lo: int | None = None, hi: int | None = None) -> None:
    """An integer (not a bool, not a float with a fraction: 2.7 is never truncated to 2)."""
    _check(isinstance(v, numbers.Integral) and not isinstance(v, bool),
           f"{where} must be an integer, got {v!r} ({type(v).__name__})")
    _check(lo is None or v >= lo, f"{where} must be >= {lo}, got {v!r}")
    _check(hi is None or v <= hi, f"{where} must be <= {hi}, got {v!r}")


# Upper bounds: far beyond any microgrid on a distribution feeder, and within what the solver's numerics (and
# float arithmetic: v² of 1e155 overflows) survive. A value beyond one is a unit mistake, not a design.
MAX_POWER_KW = 1e5
"""100 MW: no microgrid rating, trade limit or capacity (kW, kWp, kVar, kWh) may exceed this."""
MAX_PRICE_EUR_PER_KWH = 1e3
"""No €/kWh cost coefficient may exceed this (VOLL: 1e4)."""

# Per MicrogridConfig field: (lower bound, strict?, upper bound, why). Every field is also checked finite.
_P, _C = MAX_POWER_KW, MAX_PRICE_EUR_PER_KWH
_MICROGRID_RULES: dict[str, tuple] = {
    "pv_kwp": (0.0, False, _P, ""), "wt_kw": (0.0, False, _P, ""),
    "load_peak_kw": (0.0, True, _P, " (a positive capacity)"),
    "power_factor": (0.0, True, 1.0, " (a power factor in (0, 1])"),
    "mt_min_kw": (0.0, False, _P, ""), "mt_max_kw": (0.0, True, _P, " (a positive capacity)"),
    "mt_cost_a_eur_per_kw2h": (0.0, False, 1.0, " (convex MT cost)"),
    "mt_cost_b_eur_per_kwh": (0.0, False, _C, " (a cost)"), "mt_cost_c_eur_per_h": (0.0, False, _C * _P, " (a cost)"),
    "ess_capacity_kwh": (0.0, True, 10 * _P, " (a positive capacity)"),
    "ess_charge_max_kw": (0.0, True, _P, " (a positive capacity)"),
    "ess_discharge_max_kw": (0.0, True, _P, " (a positive capacity)"),
    "ess_eta_charge": (0.0, True, 1.0, " (an efficiency in (0, 1])"),
    "ess_eta_discharge": (0.0, True, 1.0, " (an efficiency in (0, 1])"),
    "ess_cost_eur_per_kwh": (0.0, False, _C, " (a cost)"),
    "soc_min": (0.0, False, 1.0, ""), "soc_max": (0.0, False, 1.0, ""), "soc_init": (0.0, False, 1.0, ""),
    "grid_p_min_kw": (-_P, False, _P, ""), "grid_p_max_kw": (-_P, False, _P, ""),
    "grid_q_min_kvar": (-_P, False, _P, ""), "grid_q_max_kvar": (-_P, False, _P, ""),
}

# Per numeric OPFConfig field (None allowed where the field is optional): (lower bound, strict?, upper bound, why)
_OPF_RULES: dict[str, tuple] = {
    "v_min_pu": (0.5, False, 1.5, " (p.u.)"), "v_max_pu": (0.5, False, 1.5, " (p.u.)"),
    "current_limit_ka": (0.0, True, 1e3, " (or None: no limit)"),
    "balancing_kappa": (0.0, False, 10.0, ""),
    "loss_price_floor_eur_per_kwh": (0.0, True, _C, " (losses must always cost something: docs/model.md)"),
    "loss_price_margin_eur_per_kwh": (0.0, True, _C, " (losses must cost more than exporting: docs/model.md)"),
    "reactive_cost_rel": (0.0, False, 10.0, ""), "reactive_cost_abs_eur_per_kvarh": (0.0, False, _C, ""),
    "reactive_slack_cost_factor": (1.0, False, 1e3,
                                   " (reactive slack beyond the ΔQ limits may not be cheaper than ΔQ)"),
    "voll_eur_per_kwh": (0.0, True, 10 * _C, " (shedding load must cost, never earn)"),
    "curtailment_cost_eur_per_kwh": (0.0, False, _C, " (curtailing must not earn)"),
    "voltage_penalty_eur_per_pu_h": (0.0, True, 1e9, " (soft voltage limits need a positive penalty)"),
    "solver_base_mva": (1e-3, False, 1e3, " (or None: automatic)"),
    "substation_v_pu": (0.9, False, 1.1, " (p.u.)"), "background_load_scale": (0.0, False, 10.0, ""),
    "sharing_fee_eur_per_kwh": (0.0, False, _C, ""), "grid_fee_eur_per_kwh": (0.0, False, _C, ""),
    "export_fee_eur_per_kwh": (0.0, False, _C, ""),
}
_OPF_OPTIONAL = ("current_limit_ka", "solver_base_mva")


def validate_config(cfg: EnvConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid field.

    Every numeric field must be a finite number (NaN, ±inf, bools and strings are rejected) within its range:
    capacities > 0, costs and sizes >= 0, efficiencies and power factors in (0, 1], SoC values in [0, 1].
    """
    _check(isinstance(cfg.microgrids, tuple) and len(cfg.microgrids) >= 1,
           "microgrids: need at least one MicrogridConfig")
    for i, mg in enumerate(cfg.microgrids):
        _check(isinstance(mg, MicrogridConfig),
               f"microgrids[{i}] must be a MicrogridConfig (or a dict of its fields), got {type(mg).__name__}")
    for i, mg in enumerate(cfg.microgrids):
        where = f"microgrids[{i}]"
        _check_int(f"{where}.bus", mg.bus, lo=0)
        for name in PROFILE_FIELDS:
            _check(isinstance(getattr(mg, name), str) and getattr(mg, name),
                   f"{where}.{name} must name a per-unit column of the dataset, got {getattr(mg, name)!r}")
        for name, (lo, strict, hi, why) in _MICROGRID_RULES.items():
            _check_number(f"{where}.{name}", getattr(mg, name), lo=lo, hi=hi, lo_open=strict, what=why)
        _check(mg.mt_min_kw <= mg.mt_max_kw, f"{where}: mt_min_kw {mg.mt_min_kw} > mt_max_kw {mg.mt_max_kw}")
        _check(mg.soc_min < mg.soc_max,
               f"{where}: SoC bounds out of order, need 0 <= soc_min < soc_max <= 1, got "
               f"soc_min={mg.soc_min}, soc_max={mg.soc_max}")
        _check(mg.grid_p_min_kw <= mg.grid_p_max_kw,
               f"{where}: grid_p_min_kw {mg.grid_p_min_kw} > grid_p_max_kw {mg.grid_p_max_kw}")
        _check(mg.grid_q_min_kvar <= mg.grid_q_max_kvar,
               f"{where}: grid_q_min_kvar {mg.grid_q_min_kvar} > grid_q_max_kvar {mg.grid_q_max_kvar}")
    buses = [int(mg.bus) for mg in cfg.microgrids]
    _check(len(set(buses)) == len(buses), f"microgrids: duplicate buses {buses}; each microgrid needs its own bus")
    o = cfg.opf
    _check(isinstance(o, OPFConfig), f"opf must be an OPFConfig (or a dict of its fields), got {type(o).__name__}")
    _check(o.topology in ("reduced", "feeder"), f"opf.topology must be 'reduced' or 'feeder', got {o.topology!r}")
    _check(isinstance(o.sharing, bool), f"opf.sharing must be True or False, got {o.sharing!r}")
    _check(not o.sharing or o.topology == "feeder",
           "opf.sharing needs opf.topology='feeder' (on the reduced network the OPF itself routes one microgrid's "
           "surplus to another's deficit)")
    _check(o.impedance_aggregation in ("mean", "sum"),
           f"opf.impedance_aggregation must be 'mean' or 'sum', got {o.impedance_aggregation!r}")
    for name, (lo, strict, hi, why) in _OPF_RULES.items():
        v = getattr(o, name)
        if v is None and name in _OPF_OPTIONAL:
            continue
        _check_number(f"opf.{name}", v, lo=lo, hi=hi, lo_open=strict, what=why)
    _check(o.v_min_pu < o.v_max_pu, f"opf: need 0 < v_min_pu < v_max_pu, got {o.v_min_pu}, {o.v_max_pu}")
    _check(o.solver in ("clarabel", "ecos"), f"opf.solver must be 'clarabel' or 'ecos', got {o.solver!r}")
    _check(o.fallback_solver in ("clarabel", "ecos", "none"),
           f"opf.fallback_solver must be 'clarabel', 'ecos' or 'none', got {o.fallback_solver!r}")
    _check(cfg.reward_mode in ("shared", "individual"),
           f"reward_mode must be 'shared' or 'individual', got {cfg.reward_mode!r}")
    _check_number("dt_h", cfg.dt_h, lo=0.0, lo_open=True)
    _check(cfg.dt_h == 1.0, f"dt_h={cfg.dt_h!r}: the data are hourly and an episode is 24 steps of one hour, so "
                            f"dt_h must be 1.0 (other step lengths are not supported)")
    _check_number("alpha", cfg.alpha, lo=0.0, hi=1e6, what=" (the weight of the € cost in the reward)")
    _check_number("beta", cfg.beta, lo=0.0, hi=1e6, what=" (the weight of the SoC penalty in the reward)")
    _check_number("export_discount", cfg.export_discount, lo=0.0, hi=1.0)
    _check_number("price_scale_eur_per_kwh", cfg.price_scale_eur_per_kwh, lo=1e-6, hi=_C)
    for name in ("obs_hour", "obs_q_load"):
        _check(isinstance(getattr(cfg, name), bool), f"{name} must be True or False, got {getattr(cfg, name)!r}")
    _check(isinstance(cfg.obs_price_forecast, numbers.Integral) and 0 <= int(cfg.obs_price_forecast) <= 23,
           f"obs_price_forecast must be a number of hours in 0..23 (or a bool), got {cfg.obs_price_forecast!r}")


def _as_microgrid(i: int, mg: Any) -> MicrogridConfig:
    """A MicrogridConfig, or one built from a mapping of its fields (clear errors for unknown/missing ones)."""
    if isinstance(mg, MicrogridConfig):
        return mg
    if not isinstance(mg, Mapping):
        raise ConfigError(f"microgrids[{i}] must be a MicrogridConfig or a dict of its fields, "
                          f"got {type(mg).__name__}")
    known = [f.name for f in dataclasses.fields(MicrogridConfig)]
    unknown = sorted(set(mg) - set(known))
    required = [f.name for f in dataclasses.fields(MicrogridConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in mg]
    if unknown:
        raise ConfigError(f"microgrids[{i}]: unknown field(s) {unknown}; known: {known}")
    if missing:
        raise ConfigError(f"microgrids[{i}]: missing required field(s) {missing} (e.g. "
                          f"{{'bus': 17, 'pv_kwp': 300.0, 'wt_kw': 0.0, 'load_peak_kw': 200.0}})")
    return MicrogridConfig(**mg)


# The "paper" preset: four microgrids of a few hundred kW at case33bw buses [1, 2, 5, 24] with different mixes
# (PV-heavy, wind-heavy, load-heavy, mixed) so that mutual support matters. The paper gives no device numbers;
# these are realistic values for commercial microgrids (docs/model.md explains each choice).
_PAPER_MICROGRIDS = (
    MicrogridConfig(bus=1, pv_kwp=400.0, wt_kw=50.0, load_peak_kw=250.0,
                    mt_max_kw=120.0, mt_cost_b_eur_per_kwh=0.085,
                    ess_capacity_kwh=500.0, ess_charge_max_kw=125.0, ess_discharge_max_kw=125.0),
    MicrogridConfig(bus=2, pv_kwp=50.0, wt_kw=350.0, load_peak_kw=250.0,
                    mt_max_kw=100.0, mt_cost_b_eur_per_kwh=0.095,
                    ess_capacity_kwh=300.0, ess_charge_max_kw=75.0, ess_discharge_max_kw=75.0),
    MicrogridConfig(bus=5, pv_kwp=100.0, wt_kw=50.0, load_peak_kw=450.0,
                    mt_max_kw=200.0, mt_cost_b_eur_per_kwh=0.08, mt_cost_c_eur_per_h=1.5,
                    ess_capacity_kwh=400.0, ess_charge_max_kw=100.0, ess_discharge_max_kw=100.0,
                    grid_p_min_kw=-400.0, grid_p_max_kw=400.0),
    MicrogridConfig(bus=24, pv_kwp=200.0, wt_kw=150.0, load_peak_kw=300.0,
                    mt_max_kw=150.0, mt_cost_b_eur_per_kwh=0.09,
                    ess_capacity_kwh=400.0, ess_charge_max_kw=100.0, ess_discharge_max_kw=100.0),
)

# The "feeder" preset: the same four sets of ratings at the ends of the full case33bw feeder, each with its own
# SimBench load / PV / wind profile (household, commercial, agricultural), the feeder's own load on, a retail
# tariff and sharing between microgrids (docs/model.md, "The `feeder` preset", gives the source of each value).
FEEDER_BUSES = (17, 21, 24, 32)
"""The feeder preset's microgrid buses: the ends of case33bw's four laterals (buses 17, 21, 24, 32)."""

SIMBENCH_MIX = (  # (load, PV, wind) profile columns of the bundled dataset, one row per microgrid
    ("simbench_H0_load_pu", "simbench_pv3_pu", "simbench_wp4_pu"),  # household
    ("simbench_G1_load_pu", "simbench_pv5_pu", "simbench_wp7_pu"),  # commercial
    ("simbench_L0_load_pu", "simbench_pv3_pu", "simbench_wp7_pu"),  # agricultural
    ("simbench_G0_load_pu", "simbench_pv5_pu", "simbench_wp4_pu"),  # commercial
)
"""The feeder preset's profiles: (load, PV, wind) dataset columns of each microgrid."""

FEEDER_GRID_FEE_EUR_PER_KWH = 0.0710
"""Energy component of a published medium-voltage (20 kV) network tariff for withdrawals, < 3000 h/a of use
(Luxembourg, 2023; docs/model.md cites it with the range it sits in)."""

_FEEDER_MICROGRIDS = tuple(
    dataclasses.replace(mg, bus=bus, load_profile=load, pv_profile=pv, wind_profile=wind)
    for mg, bus, (load, pv, wind) in zip(_PAPER_MICROGRIDS, FEEDER_BUSES, SIMBENCH_MIX))

presets: Mapping[str, EnvConfig] = {
    "paper": EnvConfig(microgrids=_PAPER_MICROGRIDS),
    "paper_extras": EnvConfig(microgrids=_PAPER_MICROGRIDS, obs_hour=True, obs_price_forecast=True),
    "paper_day_ahead": EnvConfig(microgrids=_PAPER_MICROGRIDS, obs_hour=True, obs_price_forecast=11),
    "feeder": EnvConfig(
        microgrids=_FEEDER_MICROGRIDS, obs_hour=True, obs_price_forecast=11,
        opf=OPFConfig(topology="feeder", substation_v_pu=1.01, background_load_scale=1.0,
                      grid_fee_eur_per_kwh=FEEDER_GRID_FEE_EUR_PER_KWH, export_fee_eur_per_kwh=0.0,
                      sharing=True, sharing_fee_eur_per_kwh=0.01)),
}
"""Named, complete configurations. ``"paper"``: the BMAPPO setting (4 microgrids, observation of eq. 23).
``"paper_extras"``: the same system with hour-of-day and a one-hour price forecast in the observation.
``"paper_day_ahead"``: hour-of-day and the next 11 hours of day-ahead prices (what the auction has published at
every hour of the day). ``"feeder"``: the network that matters — the paper's four sets of ratings at the ends of
the full 33-bus feeder (:data:`FEEDER_BUSES`) with heterogeneous SimBench profiles (:data:`SIMBENCH_MIX`), the
feeder's own load, the substation at 1.01 p.u., a grid fee of 0.071 €/kWh on imports, sharing between microgrids
at 0.01 €/kWh, and the observation of ``"paper_day_ahead"``."""


def make_config(config: EnvConfig | str | None = None, *, microgrid_buses: Sequence[int] | None = None,
                opf: OPFConfig | Mapping[str, Any] | None = None, **overrides: Any) -> EnvConfig:
    """Build a validated :class:`EnvConfig` from a preset name (default ``"paper"``) or a config, plus overrides.

    ``microgrid_buses`` moves the preset's microgrids to other buses (same count); ``opf`` may be an
    :class:`OPFConfig` or a mapping of its fields to override; any other keyword is an :class:`EnvConfig` field.
    """
    if config is None:
        config = "paper"
    if isinstance(config, str):
        if config not in presets:
            raise ConfigError(f"unknown preset {config!r}; known presets: {sorted(presets)}")
        config = presets[config]
    if not isinstance(config, EnvConfig):
        raise ConfigError(f"config must be an EnvConfig or a preset name, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
    if "microgrids" in overrides:
        mgs = overrides["microgrids"]
        if isinstance(mgs, (MicrogridConfig, Mapping)) or not isinstance(mgs, Sequence):
            raise ConfigError(f"microgrids must be a sequence of MicrogridConfig (or dicts), got {type(mgs).__name__}")
        overrides["microgrids"] = tuple(_as_microgrid(i, mg) for i, mg in enumerate(mgs))
    cfg = dataclasses.replace(config, **overrides)
    if microgrid_buses is not None:
        buses = list(microgrid_buses)
        for k, b in enumerate(buses):
            _check_int(f"microgrid_buses[{k}]", b, lo=0)
        if len(buses) != len(cfg.microgrids):
            raise ConfigError(f"microgrid_buses has {len(buses)} values but the config has "
                              f"{len(cfg.microgrids)} microgrids; pass one bus per microgrid")
        cfg = dataclasses.replace(cfg, microgrids=tuple(
            dataclasses.replace(mg, bus=b) for mg, b in zip(cfg.microgrids, buses)))
    if opf is not None:
        if isinstance(opf, OPFConfig):
            cfg = dataclasses.replace(cfg, opf=opf)
        else:
            opf_known = {f.name for f in dataclasses.fields(OPFConfig)}
            bad = set(opf) - opf_known
            if bad:
                raise ConfigError(f"unknown opf field(s) {sorted(bad)}; known: {sorted(opf_known)}")
            cfg = dataclasses.replace(cfg, opf=dataclasses.replace(cfg.opf, **dict(opf)))
    validate_config(cfg)
    return cfg
