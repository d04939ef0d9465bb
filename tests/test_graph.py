"""Edge vectors from jax-md neighbour lists and from explicit image shifts."""

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, space

from e3md.graph import edge_vectors, edge_vectors_from_shifts, row_edge_vectors, rows_to_edge_index


def test_edge_vectors_free_space_convention_and_padding(rng):
    R = rng.uniform(0, 4, size=(7, 3))
    disp, _ = space.free()
    N = len(R)
    idx = np.array([[0, 1, 2, N, N], [1, 0, 5, N, 3]])  # receivers row 0, senders row 1
    r, src, dst, mask = edge_vectors(disp, jnp.asarray(R), jnp.asarray(idx))
    np.testing.assert_array_equal(np.asarray(mask), [True, True, True, False, False])
    np.testing.assert_allclose(np.asarray(r[:3]), R[idx[1, :3]] - R[idx[0, :3]], atol=1e-14)
    np.testing.assert_array_equal(np.asarray(r[3:]), 0.0)
    np.testing.assert_array_equal(np.asarray(src), idx[1])
    np.testing.assert_array_equal(np.asarray(dst), idx[0])


def test_edge_vectors_periodic_minimum_image_and_kwargs(rng):
    box = np.array([[8.0, 1.0, 0.5], [0.0, 7.5, 0.3], [0.0, 0.0, 9.0]])
    disp, _ = space.periodic_general(box, fractional_coordinates=True)
    S = np.array([[0.02, 0.5, 0.5], [0.97, 0.5, 0.5]])
    idx = jnp.asarray([[0], [1]])
    r, *_ = edge_vectors(disp, jnp.asarray(S), idx)
    np.testing.assert_allclose(np.asarray(r[0]), box @ np.array([-0.05, 0.0, 0.0]), atol=1e-12)
    # box= and perturbation= are forwarded to the displacement function
    box2 = 1.1 * box
    r2, *_ = edge_vectors(disp, jnp.asarray(S), idx, box=jnp.asarray(box2))
    np.testing.assert_allclose(np.asarray(r2), 1.1 * np.asarray(r), atol=1e-12)
    P = np.eye(3) + np.array([[0.0, 0.01, 0.0], [0.01, 0.0, 0.0], [0.0, 0.0, 0.02]])
    r3, *_ = edge_vectors(disp, jnp.asarray(S), idx, perturbation=jnp.asarray(P))
    np.testing.assert_allclose(np.asarray(r3[0]), P @ np.asarray(r[0]), atol=1e-12)


def test_edge_vectors_from_shifts_match_jax_md(rng):
    """Explicit image shifts (ASE convention, cell rows) == jax-md minimum image."""
    box = np.array([[7.0, 0.8, 0.4], [0.0, 7.2, -0.6], [0.0, 0.0, 6.9]])
    cell = box.T
    S = rng.uniform(size=(6, 3))
    R = S @ box.T
    disp, _ = space.periodic_general(box, fractional_coordinates=False)
    nf = partition.neighbor_list(
        disp, box, 3.0, format=partition.Sparse, fractional_coordinates=False
    )
    nbrs = nf.allocate(jnp.asarray(R))
    r, src, dst, mask = edge_vectors(disp, jnp.asarray(R), nbrs.idx)
    m = np.asarray(mask)
    s, d = np.asarray(src)[m], np.asarray(dst)[m]
    # integer shifts that reproduce the minimum image
    frac = (R[s] - R[d]) @ np.linalg.inv(cell)
    shifts = -np.round(frac)
    r_sh = edge_vectors_from_shifts(
        jnp.asarray(R), jnp.asarray(s), jnp.asarray(d), jnp.asarray(shifts), jnp.asarray(cell)
    )
    np.testing.assert_allclose(np.asarray(r_sh), np.asarray(r)[m], atol=1e-10)
    assert m.sum() > 0


def test_row_edge_vectors_are_the_edge_vectors_of_the_rows(rng):
    """A Dense list's rows: the same vectors, indices, mask and position gradient as the edge
    list of rows_to_edge_index (padding slots included)."""
    box = np.array([[8.0, 1.0, 0.5], [0.0, 7.5, 0.3], [0.0, 0.0, 9.0]])
    disp, _ = space.periodic_general(box, fractional_coordinates=False)
    R = jnp.asarray(rng.uniform(size=(6, 3)) @ box.T)
    idx = jnp.asarray([[1, 2, 6], [0, 6, 6], [3, 4, 5], [2, 6, 6], [2, 5, 6], [2, 4, 6]])
    got = row_edge_vectors(disp, R, idx)
    want = edge_vectors(disp, R, rows_to_edge_index(idx))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.asarray(got[3]).all()  # there are padding slots

    weights = jnp.arange(1.0, idx.size + 1)[:, None]  # no cancellation between i<-j and j<-i

    def energy(fn, idx):
        return lambda R: jnp.sum(weights * fn(disp, R, idx)[0] ** 3)

    g = jax.grad(energy(row_edge_vectors, idx))(R)
    np.testing.assert_allclose(g, jax.grad(energy(edge_vectors, rows_to_edge_index(idx)))(R))
    assert np.abs(np.asarray(g)).sum(-1).min() > 0  # every atom has an edge
