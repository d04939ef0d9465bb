"""SO(3)/O(3) math: real spherical harmonics, Clebsch-Gordan coefficients, Wigner-D matrices.

All constant tables are float64 NumPy arrays computed in-package, cached per process, and meant
to enter ``jit`` as literals.
"""

from e3md.so3._common import cartesian_permutation, cartesian_permutation_for_degree
from e3md.so3.clebsch_gordan import clebsch_gordan, clebsch_gordan_for_degrees
from e3md.so3.harmonics import spherical_harmonics, spherical_harmonics_numpy
from e3md.so3.matrix_basis import matrix_basis, matrix_degree
from e3md.so3.rotations import random_rotation, wigner_d

__all__ = [
    "cartesian_permutation",
    "cartesian_permutation_for_degree",
    "clebsch_gordan",
    "clebsch_gordan_for_degrees",
    "matrix_basis",
    "matrix_degree",
    "random_rotation",
    "spherical_harmonics",
    "spherical_harmonics_numpy",
    "wigner_d",
]
