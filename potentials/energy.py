r"""jax-md entry point and derived quantities: energy, forces, stress/virial.

``neighbor_fn, energy_fn = neighbor_list(config, params, displacement_fn, box, species)``
follows ``jax_md.energy.*_neighbor_list``: ``energy_fn(R, neighbor, **kwargs)`` returns the
total energy in eV (0-d), computes edge vectors through ``displacement_fn`` and forwards
``box=`` and ``perturbation=`` to it, so ``jax_md.quantity.stress`` and
``jax_md.simulate.npt_nose_hoover`` work unchanged.

Sign conventions (both reported by :func:`energy_forces_stress`):

* forces :math:`\mathbf F_i = -\partial E/\partial \mathbf R_i` (eV/Å), from ``jax.grad``. With
  ``periodic_general(fractional_coordinates=True)`` jax-md's ``transform`` JVP makes the
  gradient with respect to fractional positions the *real-space* gradient, so this still gives
  Cartesian forces.
* stress (ASE convention): :math:`\sigma = \frac1V\,\partial E/\partial\varepsilon`
  at :math:`\varepsilon=0`, where every edge vector is strained as
  :math:`\mathbf r \to (\mathbf 1+\varepsilon)\mathbf r` (``perturbation = 1 + ε``);
  positive = tensile (the cell wants to shrink), eV/Å³. jax-md's
  ``quantity.stress`` returns :math:`-\sigma` (plus a kinetic term).
* virial :math:`W = -\partial E/\partial\varepsilon = -\sigma V` (eV).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from e3md.potentials.config import ModelConfig
from e3md.potentials.model import EDGE_CHUNK, atomic_energies, species_index
from jaxtyping import Array, ArrayLike, Float

from e3md import neighbors as _neighbors
from e3md.graph import edge_vectors, row_edge_vectors
from e3md.nn.cpu_kernels import reverse_mode_only

__all__ = ["EnergyForcesStress", "energy_forces_stress", "neighbor_list"]

_DISP_KWARGS = ("box", "perturbation")


def neighbor_list(
    config: ModelConfig,
    params: dict,
    displacement_fn: Any,
    box: Any,
    species: ArrayLike,
    *,
    per_atom: bool = False,
    dr_threshold: float = 0.5,
    capacity_multiplier: float | None = None,
    fractional_coordinates: bool = False,
    disable_cell_list: bool = False,
    periodic: bool | None = None,
    edge_chunk: int | None = EDGE_CHUNK,
    format: str = "dense",
    **nl_kwargs: Any,
):
    """Build ``(neighbor_fn, energy_fn)`` for an e3md model, jax-md style.

    Args:
      config: model configuration.
      params: model parameters (flax variables dict).
      displacement_fn: jax-md displacement function (``space.free()``,
        ``space.periodic(side)``, ``space.periodic_general(box, fractional_coordinates=...)``);
        on the CPU, :func:`e3md.space.periodic` and :func:`e3md.space.periodic_general`
        compute the same periodic displacements faster.
      box: jax-md box in Å (lattice vectors as columns) or ``None`` for free space.
      species: atomic numbers ``[N]`` (host array; unknown elements raise here).
      per_atom: if True, ``energy_fn`` returns per-atom energies ``[N]`` instead of the sum.
      dr_threshold: neighbour-list skin in Å.
      capacity_multiplier: spare neighbour capacity (default: 1.1 for ``"dense"``, 1.25 for
        ``"sparse"``; :func:`e3md.neighbors.neighbor_list`).
      fractional_coordinates: must match the ``displacement_fn``.
      disable_cell_list: test all pairs (O(N^2)).
      periodic: see :func:`e3md.neighbors.neighbor_list` (default ``box is not None``).
      edge_chunk: edges per block of message passing (see
        :func:`e3md.potentials.model.atomic_energies`; ``None``: all at once). The default
        was chosen on CPU; on a GPU, larger blocks or ``None`` may be faster (measure with
        ``benchmarks/bench_performance.py --edge-chunk``).
      format: neighbour-list format (:func:`e3md.neighbors.neighbor_list`): ``"dense"``
        (default; rows of a symmetric list, evaluated with ``atomic_energies(...,
        symmetric_rows=M)``: 1.3-1.7x faster energy + forces on CPU, reverse-mode
        derivatives only) or ``"sparse"`` (also ``jax.jvp``/``jax.hessian`` of the energy).
      **nl_kwargs: forwarded to ``jax_md.partition.neighbor_list``.

    Returns:
      ``(neighbor_fn, energy_fn)``. ``neighbor_fn.allocate(R, **kwargs)`` validates on the host
      (finite positions, cell >= 2 x cutoff, no atoms closer than 0.5 Å) and must be re-called
      when ``nbrs.did_buffer_overflow`` (see :func:`e3md.neighbors.update`).
      ``energy_fn(R, neighbor, **kwargs)`` -> energy in eV (0-d, dtype ``config.dtype``);
      ``box=`` and ``perturbation=`` kwargs go to ``displacement_fn``, ``params=`` overrides
      the parameters (for training), other kwargs are ignored.

    Raises:
      ValueError: unknown elements, or a periodic cell thinner than ``2 * config.cutoff``.
    """
    z_idx = jnp.asarray(species_index(config, species))
    num_atoms = z_idx.shape[0]
    neighbor_fn = _neighbors.neighbor_list(
        displacement_fn,
        box,
        config.cutoff,
        dr_threshold=dr_threshold,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_coordinates,
        disable_cell_list=disable_cell_list,
        periodic=periodic,
        format=format,
        **nl_kwargs,
    )
    default_params = params

    from jax_md import partition

    def energy_fn(R: Float[Array, "N 3"], neighbor: Any, **kwargs: Any) -> Float[Array, ""]:
        if R.shape[0] != num_atoms:
            raise ValueError(f"energy_fn built for {num_atoms} atoms, got R of shape {R.shape}")
        p = kwargs.get("params", default_params)
        dkw = {k: kwargs[k] for k in _DISP_KWARGS if k in kwargs}
        if partition.is_sparse(neighbor.format):
            rows = None
            r, src, dst, mask = edge_vectors(displacement_fn, R, neighbor.idx, **dkw)
        else:
            rows = neighbor.idx.shape[-1]
            # rows of a symmetric list promise reverse mode (atomic_energies' kernels), so the
            # senders' gather may take its kernel too
            with reverse_mode_only():
                r, src, dst, mask = row_edge_vectors(displacement_fn, R, neighbor.idx, **dkw)
        atom_mask = jnp.ones(num_atoms, bool)
        e_i = atomic_energies(
            config,
            p,
            r,
            z_idx,
            src,
            dst,
            mask,
            atom_mask,
            edge_chunk=edge_chunk,
            symmetric_rows=rows,
        )
        return e_i if per_atom else jnp.sum(e_i)

    return neighbor_fn, energy_fn


class EnergyForcesStress(NamedTuple):
    """Results of :func:`energy_forces_stress` (see module docstring for sign conventions).

    Attributes:
      energy: total energy, eV, shape ``[]``.
      energies: per-atom energies, eV, ``[N]`` (None unless ``energy_fn`` is per-atom).
      forces: :math:`-\\partial E/\\partial R`, eV/Å, ``[N, 3]``.
      virial: :math:`W = -\\partial E/\\partial \\varepsilon`, eV, ``[3, 3]`` (symmetric).
      stress: ASE stress :math:`\\sigma = -W/V`, eV/Å³, ``[3, 3]`` (None without a box).
    """

    energy: Any
    energies: Any
    forces: Any
    virial: Any
    stress: Any


def energy_forces_stress(
    energy_fn: Any,
    R: Float[Array, "N 3"],
    neighbor: Any,
    *,
    box: Any = None,
    compute_virial: bool = True,
    **kwargs: Any,
) -> EnergyForcesStress:
    r"""Energy, forces and (if ``box``) stress, all exact derivatives of one energy function.

    jit-friendly (wrap it in :func:`e3md.compiler.jit`, or ``jax.jit``, with ``energy_fn``
    closed over).

    Args:
      energy_fn: from :func:`neighbor_list` (total or per-atom).
      R: positions ``[N, 3]`` (Å, or fractional for fractional spaces).
      neighbor: jax-md neighbour list.
      box: jax-md box (Å, lattice vectors as columns); forwarded to ``energy_fn`` and used for
        the volume. None: free space (no stress, virial still computed).
      compute_virial: if False skip the strain derivative (virial/stress None).
      **kwargs: forwarded to ``energy_fn``.

    Returns:
      :class:`EnergyForcesStress` with ASE-convention stress
      :math:`\sigma = \frac1V \partial E/\partial\varepsilon` and virial :math:`W=-\sigma V`.
    """
    dim = R.shape[-1]
    kw = dict(kwargs)
    if box is not None:
        kw["box"] = box
    eye = jnp.eye(dim, dtype=R.dtype)

    def total(R, eps):
        call_kw = dict(kw)
        if eps is not None:
            call_kw["perturbation"] = eye + eps
        out = energy_fn(R, neighbor, **call_kw)
        if out.ndim == 1:
            return jnp.sum(out), out
        return out, None

    if compute_virial:
        eps0 = jnp.zeros((dim, dim), R.dtype)
        (energy, e_i), (g_R, g_eps) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
            R, eps0
        )
        dE_deps = 0.5 * (g_eps + g_eps.T)
        virial = -dE_deps
        stress = None
        if box is not None:
            vol = jnp.abs(jnp.linalg.det(_box_matrix(box, dim, R.dtype)))
            stress = dE_deps / vol
    else:
        (energy, e_i), g_R = jax.value_and_grad(lambda R: total(R, None), has_aux=True)(R)
        virial = stress = None
    return EnergyForcesStress(energy, e_i, -g_R, virial, stress)


def _box_matrix(box, dim, dtype):
    b = jnp.asarray(box, dtype)
    if b.ndim == 0:
        return jnp.eye(dim, dtype=dtype) * b
    if b.ndim == 1:
        return jnp.diag(b)
    return b
