r"""Thermodynamic ensembles as thin wrappers over ``jax_md.simulate``, with public units.

Four ensembles, each delegating the integration to jax-md:

========  =====================================  =========================================
name      jax-md integrator                      extra public inputs
========  =====================================  =========================================
``nve``   ``simulate.nve`` (velocity Verlet)     --
``nvt``   ``simulate.nvt_langevin`` (BAOAB)      ``temperature_K``, ``friction_per_ps``
``nvt-nh``  ``simulate.nvt_nose_hoover`` (chain)  ``temperature_K``, ``tau_thermostat_fs``
``npt``   ``simulate.npt_nose_hoover``           ``temperature_K``, ``pressure_bar``, taus
========  =====================================  =========================================

Units (the one place they are converted; factors from :mod:`e3md.units`): positions Å,
energies eV, masses amu, so jax-md's time unit is :math:`\text{Å}\sqrt{\text{amu}/\text{eV}}
\approx 10.18` fs and

.. math::

    \Delta t = \texttt{dt\_fs}\cdot\texttt{FS},\quad
    k_BT = \texttt{temperature\_K}\cdot k_B,\quad
    P = \texttt{pressure\_bar}\cdot\texttt{BAR}\ [\text{eV/Å}^3],\quad
    \gamma = \texttt{friction\_per\_ps}/\texttt{PS}.

Every ensemble is returned with one signature, ``init_fn(R, mass, momenta, neighbor, box)``
and ``step_fn(state, neighbor)``; ``neighbor`` (and, for NPT, the current box) is forwarded to
``energy_fn`` as jax-md expects.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from e3md import units
from e3md.compiler import jit

#: the ensembles the drivers know
ENSEMBLES = ("nve", "nvt", "nvt-nh", "npt")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    """What to integrate, in public units (JSON-serialisable; stored in checkpoints).

    Attributes:
      ensemble: one of :data:`ENSEMBLES`.
      dt_fs: time step in fs.
      temperature_K: target temperature in K (also the Maxwell-Boltzmann temperature of the
        initial velocities, NVE included).
      pressure_bar: target pressure in bar (NPT only).
      friction_per_ps: Langevin friction :math:`\\gamma` in 1/ps (``nvt`` only).
      tau_thermostat_fs: Nosé-Hoover thermostat time scale in fs; ``None`` = 100 dt.
      tau_barostat_fs: Nosé-Hoover barostat time scale in fs; ``None`` = 1000 dt.
      chain_length: Nosé-Hoover chain length.
    """

    ensemble: str = "nve"
    dt_fs: float = 0.5
    temperature_K: float = 300.0
    pressure_bar: float = 1.0
    friction_per_ps: float = 10.0
    tau_thermostat_fs: float | None = None
    tau_barostat_fs: float | None = None
    chain_length: int = 3

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; expected one of {ENSEMBLES}")
        if not (self.dt_fs > 0 and jnp.isfinite(self.dt_fs)):
            raise ValueError(f"dt_fs must be positive and finite, got {self.dt_fs}")
        if not self.temperature_K >= 0:
            raise ValueError(f"temperature_K must be >= 0, got {self.temperature_K}")
        if self.ensemble in ("nvt", "nvt-nh", "npt") and not self.temperature_K > 0:
            raise ValueError(f"ensemble {self.ensemble!r} needs temperature_K > 0")
        if not self.friction_per_ps > 0:
            raise ValueError(f"friction_per_ps must be > 0, got {self.friction_per_ps}")
        for name in ("tau_thermostat_fs", "tau_barostat_fs"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")

    @property
    def dt(self) -> float:
        """Time step in jax-md units (Å·sqrt(amu/eV))."""
        return self.dt_fs * units.FS

    @property
    def kT(self) -> float:
        """:math:`k_B T` in eV."""
        return self.temperature_K * units.KB_EV_PER_K

    @property
    def pressure(self) -> float:
        """Target pressure in eV/Å³."""
        return self.pressure_bar * units.BAR

    @property
    def periodic_required(self) -> bool:
        return self.ensemble == "npt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EnsembleConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ensemble config keys {sorted(unknown)}")
        return cls(**d)


def maxwell_boltzmann(
    key: Array, masses: Float[ArrayLike, " N"], temperature_K: float, dtype=None
) -> Float[Array, "N 3"]:
    r"""Momenta drawn from the Maxwell-Boltzmann distribution, centre-of-mass motion removed.

    .. math::

        p_{i\alpha} = \sqrt{m_i k_B T}\,\xi_{i\alpha},\quad \xi\sim\mathcal N(0,1),\qquad
        p_i \leftarrow p_i - \frac{m_i}{\sum_j m_j}\sum_j p_j .

    Args:
      key: PRNG key (the seed of the run).
      masses: atomic masses in amu.
      temperature_K: temperature in K.
      dtype: floating dtype of the result (default: that of ``masses``).

    Returns:
      Momenta in amu·Å/(jax-md time unit), i.e. :math:`\sqrt{\text{amu eV}}`, with
      :math:`\sum_i p_i = 0`.
    """
    masses = jnp.asarray(masses, dtype=dtype)
    kT = temperature_K * units.KB_EV_PER_K
    xi = jax.random.normal(key, (masses.shape[0], 3), dtype=masses.dtype)
    p = jnp.sqrt(masses * kT)[:, None] * xi
    return p - masses[:, None] / jnp.sum(masses) * jnp.sum(p, axis=0, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Integrator:
    """``init_fn(R, mass, momenta, key, neighbor, box) -> state``, ``step_fn(state, neighbor,
    box) -> state`` (``box`` only used by NPT) plus ``box_fn(state)`` (current box or None)."""

    init_fn: Callable
    step_fn: Callable
    box_fn: Callable


def make_integrator(config: EnsembleConfig, energy_fn: Callable, shift_fn: Callable) -> Integrator:
    """Build the jax-md integrator for ``config`` with a uniform calling convention.

    Args:
      config: ensemble and its parameters in public units.
      energy_fn: ``energy_fn(R, neighbor=..., **kwargs) -> []`` eV (jax-md convention;
        forwards ``box=`` and ``perturbation=``).
      shift_fn: jax-md shift function of the space ``R`` lives in (for NPT a
        ``periodic_general`` space with fractional coordinates).

    Returns:
      An :class:`Integrator`.
    """
    from jax_md import simulate

    dt, kT = config.dt, config.kT
    ens = config.ensemble
    nh = {"chain_length": config.chain_length, "chain_steps": 2, "sy_steps": 3}
    tau_t = None if config.tau_thermostat_fs is None else config.tau_thermostat_fs * units.FS
    tau_p = None if config.tau_barostat_fs is None else config.tau_barostat_fs * units.FS

    if ens == "nve":
        init, step = simulate.nve(energy_fn, shift_fn, dt)

        def init_fn(R, mass, momenta, key, neighbor, box=None):
            return init(key, R, kT, mass=mass, momenta=momenta, neighbor=neighbor)

    elif ens == "nvt":
        gamma = config.friction_per_ps / units.PS
        init, step = simulate.nvt_langevin(energy_fn, shift_fn, dt, kT, gamma=gamma)

        def init_fn(R, mass, momenta, key, neighbor, box=None):
            return init(key, R, mass=mass, momenta=momenta, neighbor=neighbor)

    elif ens == "nvt-nh":
        init, step = simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, kT, tau=tau_t, **nh)

        def init_fn(R, mass, momenta, key, neighbor, box=None):
            return init(key, R, mass=mass, momenta=momenta, neighbor=neighbor)

    else:  # npt
        thermo = dict(nh, **({} if tau_t is None else {"tau": tau_t}))
        baro = dict(nh, **({} if tau_p is None else {"tau": tau_p}))
        init, step = simulate.npt_nose_hoover(
            energy_fn, shift_fn, dt, config.pressure, kT, baro, thermo
        )

        def init_fn(R, mass, momenta, key, neighbor, box=None):
            return init(key, R, box, mass=mass, momenta=momenta, neighbor=neighbor)

        def step_fn(state, neighbor):
            return step(state, neighbor=neighbor)

        return Integrator(jit(init_fn), step_fn, simulate.npt_box)

    def step_fn(state, neighbor):
        return step(state, neighbor=neighbor)

    # jit the init too (jax-md's NPT init is not jitted; op-by-op it would evaluate the padded
    # neighbour slots of pair potentials eagerly, tripping jax_debug_nans on masked NaNs)
    return Integrator(jit(init_fn), step_fn, lambda state: None)
