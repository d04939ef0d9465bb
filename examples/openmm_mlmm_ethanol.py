"""ML/MM with OpenMM: one ethanol molecule by an e3md potential, TIP3P water by amber14.

The system is built with ``openmm.app.Modeller`` (ethanol solvated in a cubic TIP3P box) and
split with openmm-ml::

    MLPotential("e3md", model=...).createMixedSystem(topology, mm_system, ethanol_atoms)

which removes the ethanol's internal MM terms (bonds, angles, torsions, intramolecular
non-bonded pairs) and adds the e3md force for those atoms ("mechanical embedding": ethanol-water
interactions stay with the force field).

How the MM side gets ethanol without GAFF: amber14 has no ethanol, and openmmforcefields (GAFF /
SMIRNOFF template generators) is not an e3md dependency. The ML/MM split only needs the
ethanol's *non-bonded* parameters (charges and Lennard-Jones) for the ethanol-water
interaction, because all of its internal terms are replaced by the ML potential. So this script
gives OpenMM a small residue template (``ETHANOL_FFXML``) with OPLS-AA all-atom ethanol charges
and Lennard-Jones parameters (Jorgensen, Maxwell & Tirado-Rives, JACS 118, 11225 (1996)) and no
bonded terms at all. It is loaded next to ``amber14/tip3p.xml``.

The potential: ``--model`` takes a shipped name or an ``*.e3md`` file. By default the shipped
``rmd17-ethanol`` is used when this e3md has it; otherwise a randomly initialised (untrained!)
potential for H, C, O is built, which is fine for exercising the machinery but not physics.

Run::

    python examples/openmm_mlmm_ethanol.py --steps 500
"""

import argparse
import io
import os
import sys
import tempfile

import numpy as np

ETHANOL_RESIDUE = "EOH"

# OPLS-AA ethanol: charges (e), sigma (nm), epsilon (kJ/mol). Net charge 0. The 1-4 scales must
# equal amber14's (OpenMM merges NonbondedForce tags); they never act, because ethanol has no
# MM-side intramolecular pairs left after createMixedSystem.
ETHANOL_FFXML = f"""<ForceField>
 <AtomTypes>
  <Type name="e3md-eoh-CT3" class="e3md-eoh-CT" element="C" mass="12.011"/>
  <Type name="e3md-eoh-CT2" class="e3md-eoh-CT" element="C" mass="12.011"/>
  <Type name="e3md-eoh-OH" class="e3md-eoh-OH" element="O" mass="15.999"/>
  <Type name="e3md-eoh-HO" class="e3md-eoh-HO" element="H" mass="1.008"/>
  <Type name="e3md-eoh-HC" class="e3md-eoh-HC" element="H" mass="1.008"/>
 </AtomTypes>
 <Residues>
  <Residue name="{ETHANOL_RESIDUE}">
   <Atom name="C1" type="e3md-eoh-CT3" charge="-0.180"/>
   <Atom name="C2" type="e3md-eoh-CT2" charge="0.145"/>
   <Atom name="O" type="e3md-eoh-OH" charge="-0.683"/>
   <Atom name="HO" type="e3md-eoh-HO" charge="0.418"/>
   <Atom name="H21" type="e3md-eoh-HC" charge="0.060"/>
   <Atom name="H22" type="e3md-eoh-HC" charge="0.060"/>
   <Atom name="H11" type="e3md-eoh-HC" charge="0.060"/>
   <Atom name="H12" type="e3md-eoh-HC" charge="0.060"/>
   <Atom name="H13" type="e3md-eoh-HC" charge="0.060"/>
   <Bond atomName1="C1" atomName2="C2"/>
   <Bond atomName1="C2" atomName2="O"/>
   <Bond atomName1="O" atomName2="HO"/>
   <Bond atomName1="C2" atomName2="H21"/>
   <Bond atomName1="C2" atomName2="H22"/>
   <Bond atomName1="C1" atomName2="H11"/>
   <Bond atomName1="C1" atomName2="H12"/>
   <Bond atomName1="C1" atomName2="H13"/>
  </Residue>
 </Residues>
 <NonbondedForce coulomb14scale="0.8333333333333334" lj14scale="0.5">
  <UseAttributeFromResidue name="charge"/>
  <Atom type="e3md-eoh-CT3" sigma="0.350" epsilon="0.276144"/>
  <Atom type="e3md-eoh-CT2" sigma="0.350" epsilon="0.276144"/>
  <Atom type="e3md-eoh-OH" sigma="0.312" epsilon="0.711280"/>
  <Atom type="e3md-eoh-HO" sigma="0.100" epsilon="0.0"/>
  <Atom type="e3md-eoh-HC" sigma="0.250" epsilon="0.125520"/>
 </NonbondedForce>
</ForceField>
"""

# Ethanol in the order of ase.build.molecule("CH3CH2OH"): names and bonds of the template.
_ETHANOL_NAMES = ("C1", "C2", "O", "HO", "H21", "H22", "H11", "H12", "H13")
_ETHANOL_BONDS = ((0, 1), (1, 2), (2, 3), (1, 4), (1, 5), (0, 6), (0, 7), (0, 8))


def ethanol_topology():
    """One ethanol molecule: ``(openmm.app.Topology, positions Quantity [9, 3] nm)``."""
    import ase.build
    import openmm.app as app
    from openmm import unit

    atoms = ase.build.molecule("CH3CH2OH")
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue(ETHANOL_RESIDUE, chain)
    added = [
        topology.addAtom(name, app.Element.getByAtomicNumber(int(z)), residue)
        for name, z in zip(_ETHANOL_NAMES, atoms.numbers, strict=True)
    ]
    for i, j in _ETHANOL_BONDS:
        topology.addBond(added[i], added[j])
    positions = unit.Quantity(atoms.positions / 10.0, unit.nanometer)  # Å -> nm
    return topology, positions


def build_mixed_system(model, padding_nm: float = 1.0, cutoff_nm: float = 0.9):
    """Solvate ethanol in TIP3P and build the ML/MM System.

    Args:
      model: anything ``MLPotential('e3md', model=...)`` accepts.
      padding_nm: water padding around ethanol, nm (box edge ~ ethanol size + 2 padding).
      cutoff_nm: MM non-bonded cutoff (PME), nm.
    Returns:
      ``(topology, positions, mixed_system, mm_system, ml_atoms)``.
    """
    import openmm.app as app
    from openmm import unit
    from openmmml import MLPotential

    forcefield = app.ForceField("amber14/tip3p.xml", io.StringIO(ETHANOL_FFXML))
    topology, positions = ethanol_topology()
    modeller = app.Modeller(topology, positions)
    modeller.addSolvent(forcefield, model="tip3p", padding=padding_nm * unit.nanometer)
    mm_system = forcefield.createSystem(
        modeller.topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff_nm * unit.nanometer,
        constraints=app.HBonds,
        rigidWater=True,
    )
    ml_atoms = [a.index for a in modeller.topology.atoms() if a.residue.name == ETHANOL_RESIDUE]
    potential = MLPotential("e3md", model=model)
    mixed = potential.createMixedSystem(modeller.topology, mm_system, ml_atoms, forceGroup=1)
    return modeller.topology, modeller.positions, mixed, mm_system, ml_atoms


def default_model(tmpdir: str):
    """The shipped ``rmd17-ethanol`` if present, else a random H/C/O potential saved in tmpdir.

    The fallback is small (L = 1, one iteration: quick to compile) and its output is scaled
    down (``scale`` = 0.05 eV) so that its arbitrary, untrained forces do not overwhelm the
    thermostat; it only shows the machinery working.
    """
    import jax

    from e3md import potentials

    if "rmd17-ethanol" in potentials.available():
        return "rmd17-ethanol", "shipped rmd17-ethanol"
    config = potentials.ModelConfig(
        species=(1, 6, 8),
        cutoff=5.0,
        max_degree=1,
        num_features=8,
        num_iterations=1,
        self_product=False,
        readout_features=8,
        avg_num_neighbors=6.0,
        scale=0.05,
    )
    pot = potentials.Potential.init(config, jax.random.PRNGKey(0))
    path = os.path.join(tmpdir, "random-hco.e3md")
    pot.save(path)
    return path, "randomly initialised H/C/O potential (untrained: machinery demo only)"


def run(
    model=None,
    steps: int = 500,
    padding_nm: float = 1.0,
    cutoff_nm: float = 0.9,
    temperature_K: float = 300.0,
    dt_fs: float = 0.5,
    report_every: int = 100,
    platform: str = "CPU",
    seed: int = 1,
):
    """Minimise, then run Langevin dynamics; returns a dict of what happened.

    The MM cutoff ``cutoff_nm`` must not exceed half the box edge (which Modeller makes about
    twice ``padding_nm``).

    Returns:
      ``dict`` with ``model`` (description), ``num_atoms``, ``num_waters``, ``ml_atoms``,
      ``energies_kj_per_mol`` (total potential energy at each report), ``ml_energies_kj_per_mol``
      (force group 1 = e3md), ``temperatures_K``.
    """
    import openmm
    from openmm import unit

    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            model, description = default_model(tmp)
        else:
            description = str(model)
        topology, positions, system, _, ml_atoms = build_mixed_system(model, padding_nm, cutoff_nm)
    num_waters = sum(1 for r in topology.residues() if r.name == "HOH")
    print(f"e3md ML/MM: {description}")
    print(f"  {topology.getNumAtoms()} atoms: ethanol {ml_atoms} by e3md, {num_waters} TIP3P")

    integrator = openmm.LangevinMiddleIntegrator(
        temperature_K * unit.kelvin, 1.0 / unit.picosecond, dt_fs * unit.femtosecond
    )
    integrator.setRandomNumberSeed(seed)
    properties = {"Threads": "1"} if platform == "CPU" else {}
    context = openmm.Context(
        system, integrator, openmm.Platform.getPlatformByName(platform), properties
    )
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 100)
    context.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed)

    dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3
    out = dict(
        model=description,
        num_atoms=topology.getNumAtoms(),
        num_waters=num_waters,
        ml_atoms=ml_atoms,
        energies_kj_per_mol=[],
        ml_energies_kj_per_mol=[],
        temperatures_K=[],
    )
    kj = unit.kilojoule_per_mole
    done = 0
    while done < steps:
        n = min(report_every, steps - done)
        integrator.step(n)
        done += n
        state = context.getState(getEnergy=True)
        e = state.getPotentialEnergy().value_in_unit(kj)
        e_ml = context.getState(getEnergy=True, groups={1}).getPotentialEnergy().value_in_unit(kj)
        ke = state.getKineticEnergy().value_in_unit(kj)
        temp = 2.0 * ke / (dof * unit.MOLAR_GAS_CONSTANT_R.value_in_unit(kj / unit.kelvin))
        out["energies_kj_per_mol"].append(e)
        out["ml_energies_kj_per_mol"].append(e_ml)
        out["temperatures_K"].append(temp)
        print(
            f"  step {done:6d}  E_pot {e:14.3f} kJ/mol  E_e3md {e_ml:14.3f} kJ/mol  T {temp:7.1f} K"
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="shipped name or *.e3md file")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--padding-nm", type=float, default=1.0)
    parser.add_argument("--cutoff-nm", type=float, default=0.9, help="MM cutoff (PME)")
    parser.add_argument("--temperature-K", type=float, default=300.0)
    parser.add_argument("--dt-fs", type=float, default=0.5)
    parser.add_argument("--platform", default="CPU")
    args = parser.parse_args(argv)
    out = run(
        model=args.model,
        steps=args.steps,
        padding_nm=args.padding_nm,
        cutoff_nm=args.cutoff_nm,
        temperature_K=args.temperature_K,
        dt_fs=args.dt_fs,
        platform=args.platform,
    )
    if not np.all(np.isfinite(out["energies_kj_per_mol"])):
        print("non-finite energies", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
