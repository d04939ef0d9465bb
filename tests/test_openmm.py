"""e3md inside OpenMM (``e3md.openmm``): PythonForce + openmm-ml registration.

The oracle is e3md's own jax-md path (``Potential.neighbor_list`` + ``energy_forces_stress``),
which builds its graph with jax-md neighbour lists and displacement functions, while the OpenMM
force builds edges with its own host-side cell-shift search and converts units at the boundary.
"""

import copy
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmml")

import ase.build  # noqa: E402
import openmm.app as app  # noqa: E402
from jax_md import space  # noqa: E402
from openmm import unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402

from e3md import potentials, units  # noqa: E402
from e3md.openmm import E3mdCompute, create_force  # noqa: E402

CUTOFF = 4.0  # Å, small so periodic test boxes stay small
KJ = unit.kilojoule_per_mole
PLATFORMS = ["Reference", "CPU"]


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A randomly initialised float64 H/C/O potential saved to a temporary model file."""
    # small (L = 1, one iteration) so that compiling stays cheap; the adapter does not care
    config = potentials.ModelConfig(
        species=(1, 6, 8),
        cutoff=CUTOFF,
        max_degree=1,
        num_features=4,
        num_iterations=1,
        self_product=False,
        readout_features=4,
        avg_num_neighbors=4.0,
        dtype="float64",
    )
    pot = potentials.Potential.init(config, jax.random.PRNGKey(3))
    path = tmp_path_factory.mktemp("openmm") / "random-hco.e3md"
    pot.save(path)
    return str(path)


@pytest.fixture(scope="module")
def pot(model_path):
    return potentials.load(model_path)


def make_topology(numbers, box_nm=None):
    """One residue per atom; ``box_nm``: rows = box vectors in nm (or None)."""
    top = app.Topology()
    chain = top.addChain()
    for k, z in enumerate(numbers):
        res = top.addResidue(f"R{k}", chain)
        top.addAtom(f"A{k}", app.Element.getByAtomicNumber(int(z)), res)
    if box_nm is not None:
        top.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box_nm] * unit.nanometer)
    return top


def context_for(system, platform, integrator=None):
    integrator = integrator or openmm.VerletIntegrator(0.5 * unit.femtosecond)
    props = {"Threads": "1"} if platform == "CPU" else {}
    plat = openmm.Platform.getPlatformByName(platform)
    return openmm.Context(system, integrator, plat, props)


def openmm_energy_forces(context, positions_A, groups=-1):
    """Set positions (Å); return (E kJ/mol, F [N, 3] kJ/mol/nm)."""
    context.setPositions(np.asarray(positions_A) / units.NM * unit.nanometer)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    e = state.getPotentialEnergy().value_in_unit(KJ)
    f = state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)
    return e, np.asarray(f)


def e3md_energy_forces(pot, numbers, R, cell=None, other_cells=()):
    """The jax-md path: (E eV, F eV/Å); ``cell`` rows = lattice vectors (Å) or None.

    ``other_cells``: more cells for the same atoms, evaluated with the same compiled function
    (``box=`` forwarded to the displacement); their results follow as extra pairs.
    """
    R = jnp.asarray(R, jnp.float64)
    if cell is None:
        displacement, _ = space.free()
        neighbor_fn, energy_fn = pot.neighbor_list(displacement, None, numbers)
    else:
        box = jnp.asarray(np.asarray(cell).T)  # jax-md: lattice vectors as columns
        displacement, _ = space.periodic_general(box, fractional_coordinates=False)
        neighbor_fn, energy_fn = pot.neighbor_list(
            displacement, box, numbers, disable_cell_list=True
        )

    @jax.jit
    def evaluate(R, nbrs, **kw):
        out = potentials.energy_forces_stress(energy_fn, R, nbrs, compute_virial=False, **kw)
        return out.energy, out.forces

    results = []
    for c in [cell, *other_cells]:
        kw = {} if c is None else {"box": jnp.asarray(np.asarray(c).T)}
        nbrs = neighbor_fn.allocate(R, **kw)
        e, f = evaluate(R, nbrs, **kw)
        assert not nbrs.did_buffer_overflow
        results += [float(e), np.asarray(f)]
    return tuple(results)


def assert_matches(e_omm, f_omm, e_ref_ev, f_ref_ev, rtol=1e-5):
    e_ref = e_ref_ev * units.EV_TO_KJ_PER_MOL
    f_ref = f_ref_ev * units.EV_PER_A_TO_KJ_PER_MOL_PER_NM
    np.testing.assert_allclose(e_omm, e_ref, rtol=rtol)
    scale = np.abs(f_ref).max()
    assert scale > 0
    np.testing.assert_allclose(f_omm, f_ref, rtol=rtol, atol=rtol * scale)


def ethanol():
    atoms = ase.build.molecule("CH3CH2OH")
    return atoms.numbers.copy(), atoms.positions.copy()


@pytest.fixture(scope="module")
def free_ref(pot):
    """Ethanol and its e3md (jax-md path) energy (eV) and forces (eV/Å), computed once."""
    numbers, R = ethanol()
    return (numbers, R, *e3md_energy_forces(pot, numbers, R))


@pytest.fixture(scope="module")
def periodic_ref(pot):
    """Random atoms in a triclinic cell with their e3md reference, computed once."""
    numbers, R, cell = random_periodic(np.random.default_rng(11))
    # the reference for a 5 % larger box as well (used by the box-change test)
    return (numbers, R, cell, *e3md_energy_forces(pot, numbers, R, cell, [1.05 * cell]))


def random_periodic(rng, n=24, min_dist=1.1):
    """n random H/C/O atoms in an OpenMM reduced-form triclinic cell (rows, Å) >= 2 cutoff."""
    a, by, cz = 9.0, 8.6, 8.8
    cell = np.array([[a, 0.0, 0.0], [0.3 * a, by, 0.0], [-0.2 * a, 0.25 * by, cz]])
    R = []
    while len(R) < n:
        x = rng.random(3) @ cell
        # minimum-image distance to the atoms so far (brute force over 27 images)
        imgs = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
        if all(np.min(np.linalg.norm(x - y + imgs @ cell, axis=1)) > min_dist for y in R):
            R.append(x)
    numbers = rng.choice([1, 6, 8], size=n)
    return numbers, np.array(R), cell


# ------------------------------------------------------------------------------------------------
# agreement with the e3md (jax-md) path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_free_molecule_matches_e3md(model_path, free_ref, platform):
    numbers, R, e_ref, f_ref = free_ref
    system = MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))
    assert not system.usesPeriodicBoundaryConditions()
    e, f = openmm_energy_forces(context_for(system, platform), R)
    assert_matches(e, f, e_ref, f_ref)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_periodic_box_matches_e3md(model_path, periodic_ref, platform):
    numbers, R, cell, e_ref, f_ref, _, _ = periodic_ref
    top = make_topology(numbers, box_nm=cell / units.NM)
    system = MLPotential("e3md", model=model_path).createSystem(top)
    assert system.usesPeriodicBoundaryConditions()
    ctx = context_for(system, platform)
    e, f = openmm_energy_forces(ctx, R)
    assert_matches(e, f, e_ref, f_ref)
    # moving atoms by lattice vectors changes nothing
    shifted = R.copy()
    shifted[::3] += cell[0] - 2 * cell[2]
    shifted[1::4] -= cell[1]
    e2, f2 = openmm_energy_forces(ctx, shifted)
    np.testing.assert_allclose(e2, e, rtol=1e-9)
    np.testing.assert_allclose(f2, f, atol=1e-8 * np.abs(f).max())


def test_box_vectors_from_state_are_used(model_path, periodic_ref):
    """A box changed on the Context (as a barostat does) is honoured."""
    numbers, R, cell, e_ref, _, e2_ref, f2_ref = periodic_ref
    system = MLPotential("e3md", model=model_path).createSystem(
        make_topology(numbers, box_nm=cell / units.NM)
    )
    ctx = context_for(system, "Reference")
    cell2 = cell * 1.05
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in cell2 / units.NM])
    e, f = openmm_energy_forces(ctx, R)
    assert_matches(e, f, e2_ref, f2_ref)
    # the box matters: a different box gives a different energy
    assert abs(e2_ref - e_ref) > 1e-4 * abs(e_ref)


def test_single_precision(model_path, free_ref):
    """``precision="single"`` reaches the force through createSystem and evaluates in float32."""
    numbers, R, e_ref, f_ref = free_ref
    system = MLPotential("e3md", model=model_path).createSystem(
        make_topology(numbers), precision="single"
    )
    e, f = openmm_energy_forces(context_for(system, "Reference"), R)
    assert_matches(e, f, e_ref, f_ref, rtol=1e-4)
    with pytest.raises(AssertionError):  # not float64-exact
        assert_matches(e, f, e_ref, f_ref, rtol=1e-12)


def test_subset_of_particles(model_path, free_ref):
    """Only the chosen particles feel the force; the others may even be unknown elements."""
    numbers, R, e_ref, f_ref = free_ref
    # two argon atoms (unknown to the model) before and after the molecule, far away
    all_numbers = np.concatenate([[18], numbers, [18]])
    all_R = np.concatenate([[[30.0, 0.0, 0.0]], R, [[-30.0, 0.0, 0.0]]])
    top = make_topology(all_numbers)
    system = openmm.System()
    for z in all_numbers:
        system.addParticle(app.Element.getByAtomicNumber(int(z)).mass)
    ml_atoms = list(range(1, 1 + len(numbers)))
    force = create_force(model_path, top, ml_atoms, force_group=3)
    assert list(force.getParticles()) == ml_atoms and force.getForceGroup() == 3
    system.addForce(force)
    e, f = openmm_energy_forces(context_for(system, "Reference"), all_R)
    assert_matches(e, f[1:-1], e_ref, f_ref)
    assert np.all(f[[0, -1]] == 0.0)


# ------------------------------------------------------------------------------------------------
# dynamics, minimisation, serialisation
# ------------------------------------------------------------------------------------------------


def test_minimizer_lowers_energy(model_path):
    numbers, R = ethanol()
    system = MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))
    ctx = context_for(system, "Reference")
    e0, f0 = openmm_energy_forces(ctx, R)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 100)
    state = ctx.getState(getEnergy=True, getPositions=True)
    e1 = state.getPotentialEnergy().value_in_unit(KJ)
    R1 = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.isfinite(e1) and e1 < e0 - 1.0
    # an untrained potential may pull atoms together; the minimiser stops at the 0.5 Å wall
    d = np.linalg.norm(R1[:, None] - R1[None], axis=-1)[np.triu_indices(len(R1), 1)]
    assert d.min() >= 0.5


def test_overlap_gives_inf_energy_then_a_clear_error(model_path, caplog):
    """Atoms closer than 0.5 Å: +inf energy (so minimiser line searches back off); an
    integrator that steps on gets NaN forces and the next evaluation names the overlap."""
    numbers, R = ethanol()
    R[5] = R[4] + np.array([0.3, 0.0, 0.0])  # two methylene H 0.3 Å apart
    system = MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))
    ctx = context_for(system, "Reference")
    ctx.setPositions(R / units.NM * unit.nanometer)
    with caplog.at_level("WARNING", logger="e3md.openmm"):
        e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    assert e == np.inf
    assert "closer than 0.5 Å between atoms 4 and 5" in caplog.text
    with pytest.raises(openmm.OpenMMException, match="after an evaluation with atoms closer"):
        ctx.getIntegrator().step(3)
    # the direct API raises right away
    compute = E3mdCompute(open(model_path, "rb").read(), numbers)
    with pytest.raises(ValueError, match="closer than 0.5 Å"):
        compute.energy_forces(R)


def test_verlet_conserves_energy(model_path):
    numbers, R = ethanol()
    system = MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))
    ctx = context_for(system, "Reference", openmm.VerletIntegrator(0.25 * unit.femtosecond))
    ctx.setPositions(R / units.NM * unit.nanometer)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    integrator = ctx.getIntegrator()
    total, potential = [], []
    for _ in range(40):
        integrator.step(10)
        s = ctx.getState(getEnergy=True)
        pe = s.getPotentialEnergy().value_in_unit(KJ)
        total.append(pe + s.getKineticEnergy().value_in_unit(KJ))
        potential.append(pe)
    total, potential = np.array(total), np.array(potential)
    assert np.all(np.isfinite(total))
    # energy flows between kinetic and potential, but the total stays put
    assert np.ptp(potential) > 0.2
    assert np.ptp(total) < 0.02 * np.ptp(potential)


def test_xml_round_trip_and_copies(model_path, free_ref):
    numbers, R, e_ref, f_ref = free_ref
    system = MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))
    xml = openmm.XmlSerializer.serialize(system)
    restored = openmm.XmlSerializer.deserialize(xml)
    for sys_ in (restored, copy.deepcopy(system)):
        e, f = openmm_energy_forces(context_for(sys_, "Reference"), R)
        assert_matches(e, f, e_ref, f_ref)
    # the callable pickles to plain data (the model file bytes), not jitted functions
    compute = E3mdCompute(open(model_path, "rb").read(), numbers)
    blob = pickle.dumps(compute)
    assert len(blob) < 2 * len(compute.model_bytes) + 10_000
    e2, f2 = pickle.loads(blob).energy_forces(R)
    np.testing.assert_allclose(e2, e_ref, rtol=1e-10)
    np.testing.assert_allclose(f2, f_ref, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_unknown_element_is_a_clear_error(model_path):
    numbers, _ = ethanol()
    numbers[3] = 17  # Cl
    with pytest.raises(ValueError, match=r"Cl at atom 3 A3 \(residue R3 4\).*H, C, O only"):
        MLPotential("e3md", model=model_path).createSystem(make_topology(numbers))


def test_small_box_is_a_clear_error(model_path):
    numbers, _ = ethanol()
    top = make_topology(numbers, box_nm=np.diag([1.0, 1.0, 0.7]))  # 7 Å < 2 x 4 Å
    with pytest.raises(ValueError, match="2 x cutoff = 8.0 Å"):
        MLPotential("e3md", model=model_path).createSystem(top)


def test_missing_or_bad_model_argument(tmp_path):
    with pytest.raises(ValueError, match="needs model="):
        MLPotential("e3md")
    with pytest.raises(FileNotFoundError):
        MLPotential("e3md", model=str(tmp_path / "nope.e3md"))
    with pytest.raises(ValueError, match="precision"):
        E3mdCompute(b"", [1], precision="half")


def test_import_is_lazy():
    """Importing e3md.openmm (which openmm-ml does on ``import openmmml``) pulls in no
    openmm and no jax."""
    code = (
        "import sys, e3md.openmm; "
        "assert 'openmm' not in sys.modules and 'jax' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('openmm', 'jax'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# ML/MM through openmm-ml's createMixedSystem
# ------------------------------------------------------------------------------------------------


def _load_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "openmm_mlmm_ethanol.py"
    spec = importlib.util.spec_from_file_location("openmm_mlmm_ethanol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixed_system_ml_part_is_e3md(model_path, free_ref):
    """In the ML/MM system the e3md force group is exactly e3md's ethanol energy."""
    numbers, R_eth, e_ref, f_ref = free_ref
    example = _load_example()
    topology, positions, mixed, mm_system, ml_atoms = example.build_mixed_system(
        model_path, padding_nm=0.8, cutoff_nm=0.7
    )
    assert mixed.usesPeriodicBoundaryConditions()
    forces = [f for f in mixed.getForces() if isinstance(f, openmm.PythonForce)]
    assert len(forces) == 1 and list(forces[0].getParticles()) == ml_atoms
    assert forces[0].getForceGroup() == 1 and forces[0].usesPeriodicBoundaryConditions()
    R = np.array([[v[0], v[1], v[2]] for v in positions.value_in_unit(unit.nanometer)])
    R = R * units.NM
    # Modeller may translate the solute; the energy is translation invariant
    moved = R[ml_atoms] - R_eth
    np.testing.assert_allclose(moved, np.broadcast_to(moved[0], moved.shape), atol=1e-6)
    ctx = context_for(mixed, "Reference")
    e, f = openmm_energy_forces(ctx, R, groups={1})
    assert_matches(e, f[ml_atoms], e_ref, f_ref)
    others = np.setdiff1d(np.arange(len(R)), ml_atoms)
    assert np.all(f[others] == 0.0)
    # the MM side no longer has ethanol-ethanol non-bonded interactions: every ML pair is an
    # exception with zero charge product and zero epsilon
    nb = next(f for f in mixed.getForces() if isinstance(f, openmm.NonbondedForce))
    pairs = {}
    for k in range(nb.getNumExceptions()):
        i, j, qq, _, eps = nb.getExceptionParameters(k)
        pairs[frozenset((i, j))] = (qq.value_in_unit(unit.elementary_charge**2), eps)
    for a in ml_atoms:
        for b in ml_atoms:
            if a < b:
                qq, eps = pairs[frozenset((a, b))]
                assert qq == 0.0 and eps.value_in_unit(KJ) == 0.0


def test_interpolated_mixed_system(model_path, free_ref):
    """openmm-ml's interpolation set-up (which deep-copies the force) works: at
    lambda_interpolate = 1 an ethanol-only system is pure e3md, at 0 pure force field."""
    import io

    numbers, R, e_ref, _ = free_ref
    example = _load_example()
    topology, _ = example.ethanol_topology()
    ff = app.ForceField(io.StringIO(example.ETHANOL_FFXML))
    mm_system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff)
    mixed = MLPotential("e3md", model=model_path).createMixedSystem(
        topology, mm_system, list(range(len(numbers))), interpolate=True
    )
    ctx = context_for(mixed, "Reference")
    e_mm, _ = openmm_energy_forces(context_for(mm_system, "Reference"), R)
    for lam, expected in ((1.0, e_ref * units.EV_TO_KJ_PER_MOL), (0.0, e_mm)):
        ctx.setParameter("lambda_interpolate", lam)
        e, _ = openmm_energy_forces(ctx, R)
        np.testing.assert_allclose(e, expected, rtol=1e-5, atol=1e-6)
    assert abs(e_mm - e_ref * units.EV_TO_KJ_PER_MOL) > 1.0


def test_sorted_evaluation_returns_openmms_order(model_path):
    """``sort_atoms``: large systems are evaluated in spatial order; the forces come back in
    OpenMM's order, equal to the unsorted evaluation (and the setting survives pickling)."""
    numbers, R, cell = random_periodic(np.random.default_rng(12), n=64)
    model = open(model_path, "rb").read()
    e0, f0 = E3mdCompute(model, numbers, periodic=True, sort_atoms=None).energy_forces(R, cell)
    compute = E3mdCompute(model, numbers, periodic=True, sort_atoms=1)
    from e3md.neighbors import SORT_ATOMS_FROM, spatial_order

    assert E3mdCompute(model, numbers).sort_atoms == SORT_ATOMS_FROM
    assert not np.array_equal(spatial_order(R, cell), np.arange(len(R)))
    for c in (compute, pickle.loads(pickle.dumps(compute))):
        assert c.sort_atoms == 1
        e1, f1 = c.energy_forces(R, cell)
        np.testing.assert_allclose(e1, e0, rtol=1e-12)
        np.testing.assert_allclose(f1, f0, atol=1e-10)
    assert np.abs(f0).max() > 1e-3
