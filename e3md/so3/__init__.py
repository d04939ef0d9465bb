"""SO(3)/O(3) math: real spherical harmonics, Clebsch-Gordan coefficients, Wigner-D matrices."""
