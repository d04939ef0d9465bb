"""Unit conversion factors, derived once from ``ase.units`` (CODATA 2014), never retyped.

Inside e3md lengths are Å, energies eV, masses amu, charges e, and time is jax-md's derived unit
Å·sqrt(amu/eV) ≈ 10.18 fs. Public arguments in any other unit carry a suffix (``dt_fs``,
``temperature_K``, ``pressure_bar``) and are converted here.
"""

import ase.units as _u

#: one femtosecond in jax-md's time unit Å·sqrt(amu/eV)
FS = _u.fs
#: one picosecond in jax-md's time unit
PS = 1000.0 * _u.fs
#: Boltzmann constant in eV/K
KB_EV_PER_K = _u.kB
#: one bar in eV/Å³
BAR = _u.bar
#: one GPa in eV/Å³
GPA = _u.GPa
#: kcal/mol in eV
KCAL_PER_MOL = _u.kcal / _u.mol
#: kJ/mol in eV
KJ_PER_MOL = _u.kJ / _u.mol
#: eV in kJ/mol (OpenMM's energy unit)
EV_TO_KJ_PER_MOL = 1.0 / KJ_PER_MOL
#: nm in Å (OpenMM's length unit)
NM = 10.0
#: eV/Å in kJ/mol/nm (OpenMM's force unit)
EV_PER_A_TO_KJ_PER_MOL_PER_NM = EV_TO_KJ_PER_MOL * NM
