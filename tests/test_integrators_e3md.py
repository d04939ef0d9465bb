"""MD with the e3md potential itself: NVE energy conservation on ethanol (float64)."""

import ase.io
import jax
import numpy as np
from e3md.integrators.atoms import run_atoms
from e3md.potentials import ModelConfig, Potential

import e3md

ETHANOL = __import__("pathlib").Path(e3md.__file__).parent / "data" / "ethanol.xyz"


def test_shipped_ethanol_structure():
    atoms = ase.io.read(ETHANOL)
    assert atoms.get_chemical_formula() == "C2H6O" and not atoms.pbc.any()
    assert "CC0" in ETHANOL.read_text().splitlines()[1]


def test_nve_energy_conservation_ethanol_e3md():
    atoms = ase.io.read(ETHANOL)
    config = ModelConfig(
        species=(1, 6, 8), cutoff=4.0, max_degree=1, num_features=8, num_iterations=2,
        readout_features=8, dtype="float64",
    )  # fmt: skip
    pot = Potential.init(config, jax.random.PRNGKey(0))
    res = run_atoms(
        atoms, pot, ensemble="nve", dt_fs=0.25, temperature_K=300.0, steps=400,
        chunk_steps=100, seed=0,
    )  # fmt: skip
    assert res.state.position.dtype == np.float64
    assert res.traces == 1
    etot = res.thermo["etot_eV"]
    n = len(atoms)
    t_ps = res.thermo["time_ps"]
    drift = np.polyfit(t_ps, etot / n, 1)[0]
    max_dev = np.max(np.abs(etot - etot[0])) / n
    print(f"e3md ethanol NVE f64, dt 0.25 fs, {t_ps[-1]:.2f} ps: drift {drift:.2e} eV/atom/ps, "
          f"max |dE| {max_dev:.2e} eV/atom")  # fmt: skip
    # the dynamics are not trivial: energy flows between kinetic and potential
    assert np.ptp(res.thermo["ekin_eV"]) > 100 * np.ptp(etot)
    assert max_dev < 1e-5
    assert abs(drift) < 1e-4
    np.testing.assert_allclose(
        np.sum(np.asarray(res.state.momentum), axis=0), 0.0, atol=1e-10
    )  # free molecule: total momentum conserved from its initial zero
