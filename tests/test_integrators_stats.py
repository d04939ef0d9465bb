"""Statistical checks of the thermostats and the barostat on Lennard-Jones argon.

Tolerances come from the data: the standard error of a time average is estimated by block
averaging (blocks much longer than the correlation time), and the target must lie within a few
standard errors. The canonical ensemble also fixes the *size* of the kinetic-energy
fluctuations, :math:`\\mathrm{sd}(T)/T = \\sqrt{2/(3N)}`, which a broken thermostat misses.
"""

import jax
import numpy as np
import pytest
from ase.build import bulk
from e3md.integrators import make_space, run_md
from jax_md import energy, partition

SIGMA, EPSILON, R_CUT = 3.4, 0.0104, 1.5


def lj_run(reps, **kw):
    jax.clear_caches()
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((reps, reps, reps))
    sp = make_space(atoms, R_CUT * SIGMA)
    nfn, efn = energy.lennard_jones_neighbor_list(
        sp.displacement_fn, sp.box, sigma=SIGMA, epsilon=EPSILON, r_onset=1.2, r_cutoff=R_CUT,
        format=partition.Sparse, capacity_multiplier=2.0, **sp.neighbor_kwargs,
    )  # fmt: skip
    res = run_md(
        nfn, efn, sp.shift_fn, sp.positions, atoms.get_masses(), box=sp.box, fractional=True, **kw
    )
    return atoms, res


def block_mean_se(x, blocks=10):
    x = np.asarray(x)
    n = len(x) // blocks * blocks
    means = x[:n].reshape(blocks, -1).mean(axis=1)
    return x[:n].mean(), means.std(ddof=1) / np.sqrt(blocks)


def check_canonical_temperature(T, n_atoms, target):
    mean, se = block_mean_se(T)
    print(f"<T> = {mean:.2f} +- {se:.2f} K (target {target} K)")
    assert abs(mean - target) < 4 * se + 0.01 * target
    rel_sd = np.std(T) / np.mean(T)
    expected = np.sqrt(2 / (3 * n_atoms))
    print(f"sd(T)/T = {rel_sd:.4f}, canonical {expected:.4f}")
    assert 0.7 * expected < rel_sd < 1.3 * expected


def test_langevin_reaches_target_temperature():
    target = 100.0
    atoms, res = lj_run(
        2, ensemble="nvt", temperature_K=target, dt_fs=5.0, friction_per_ps=10.0, steps=3000,
        chunk_steps=500, log_every=10, seed=1,
    )  # fmt: skip
    T = res.thermo["temperature_K"][40:]  # drop 2 ps of equilibration
    check_canonical_temperature(T, len(atoms), target)


@pytest.mark.slow
def test_nose_hoover_reaches_target_temperature():
    target = 100.0
    atoms, res = lj_run(
        3, ensemble="nvt-nh", temperature_K=target, dt_fs=5.0, tau_thermostat_fs=200.0,
        steps=20000, chunk_steps=1000, log_every=10, seed=2,
    )  # fmt: skip
    T = res.thermo["temperature_K"][200:]
    check_canonical_temperature(T, len(atoms), target)


@pytest.mark.slow
def test_npt_mean_pressure_near_target():
    target_p = 500.0  # bar
    atoms, res = lj_run(
        3, ensemble="npt", temperature_K=80.0, pressure_bar=target_p, dt_fs=5.0,
        tau_thermostat_fs=250.0, tau_barostat_fs=1000.0, steps=24000, chunk_steps=1000,
        log_every=10, seed=3,
    )  # fmt: skip
    p = res.thermo["pressure_bar"][400:]  # drop 20 ps
    V = res.thermo["volume_A3"][400:]
    mean, se = block_mean_se(p)
    print(f"<P> = {mean:.1f} +- {se:.1f} bar (target {target_p}), <V> = {V.mean():.1f} A^3")
    assert abs(mean - target_p) < 4 * se + 50.0
    assert V.std() > 0  # the box does fluctuate
    T_mean, _ = block_mean_se(res.thermo["temperature_K"][400:])
    assert abs(T_mean - 80.0) < 5.0
