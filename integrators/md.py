r"""Run molecular dynamics in jitted chunks, overflow-safe, restartable: :func:`run_md`.

The loop (host side, one device sync per chunk)::

    state, nbrs = init(...)                     # or restored from a checkpoint
    while step < steps:
        saved = state, nbrs
        new_state, new_nbrs, stats = chunk(state, nbrs, n)   # jit: fori_loop of n steps,
                                                             # neighbour update inside
        if new_nbrs overflowed:                 # host check of jax-md's error bits
            nbrs = reallocate(saved positions, more capacity)
            replay the chunk from `saved`       # no step lost or counted twice
        blow-up guard (NaN / max |F| > max_force) -> MDBlowUpError, last good state kept
        log, trajectory, checkpoint             # host work only between chunks

The chunk length ``n`` is a traced argument, so chunks of any length share one compilation;
only a change of neighbour capacity (a static shape) recompiles. After a replay the
trajectory is the one a run with enough capacity from the start would produce: padded
neighbour slots contribute exact zeros and the order of the real pairs does not depend on the
capacity.

Units: see :mod:`e3md.integrators.ensembles`. Positions live in the coordinates of the given
``shift_fn`` (fractional for periodic spaces built by :func:`e3md.integrators.make_space`,
Cartesian Å otherwise); trajectories are always written in Cartesian Å.
"""

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from e3md.integrators.checkpoint import load_checkpoint, save_checkpoint
from e3md.integrators.ensembles import EnsembleConfig, make_integrator, maxwell_boltzmann
from e3md.integrators.reporters import (
    ThermoLog,
    TrajectoryWriter,
    check_trajectory_path,
    make_frame,
)
from jaxtyping import ArrayLike, Float

from e3md import units
from e3md.compiler import jit

log = logging.getLogger(__name__)

# jax-md PartitionErrorCode bits (jax_md.partition.PEC), repeated here to avoid importing
# jax_md at module import time.
_NEIGHBOR_LIST_OVERFLOW = 1
_CELL_LIST_OVERFLOW = 2
_CELL_SIZE_TOO_SMALL = 4
# jax-md 0.2.29 sets MALFORMED_BOX (8) when the box *is* upper triangular (inverted
# predicate in partition.neighbor_list), so that bit is ignored; boxes are validated on the host.
_REALLOCATE = _NEIGHBOR_LIST_OVERFLOW | _CELL_LIST_OVERFLOW | _CELL_SIZE_TOO_SMALL


class MDBlowUpError(RuntimeError):
    """The blow-up guard stopped the run (NaN, or a force above ``max_force``).

    Attributes:
      step: the last good step (its state is in :attr:`state` and in the checkpoint file).
      state: the last good jax-md state.
    """

    def __init__(self, message: str, step: int, state: Any):
        super().__init__(message)
        self.step = step
        self.state = state


@dataclasses.dataclass
class MDResult:
    """What :func:`run_md` returns.

    Attributes:
      state: final jax-md state (leading replica axis if ``replicas > 1``).
      neighbor: final neighbour list.
      step: steps done in total (including those before a restart).
      thermo: per reported step, arrays ``step``, ``time_ps``, ``epot_eV``, ``ekin_eV``,
        ``etot_eV``, ``temperature_K`` (+ ``pressure_bar``, ``volume_A3`` for NPT); shape
        ``[rows]`` or ``[rows, B]``.
      reallocations: neighbour-list reallocations (each one replays a chunk).
      traces: how often the chunk function was traced (compiled).
      timings: seconds: ``total``, ``device`` (dispatching and waiting for chunks, compile
        included), ``host`` (the rest: setup, allocation, output), ``loop`` (the chunk loop
        after the first compiled call) and ``loop_host`` (host work between chunks in it).
    """

    state: Any
    neighbor: Any
    step: int
    thermo: dict[str, np.ndarray]
    reallocations: int
    traces: int
    timings: dict[str, float]

    @property
    def positions(self) -> np.ndarray:
        return np.asarray(self.state.position)


def _thermo_columns(ensemble: str, replicas: int) -> list[str]:
    cols = ["step", "time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]
    if ensemble == "npt":
        cols += ["pressure_bar", "volume_A3"]
    return (["replica"] if replicas > 1 else []) + cols


def _replica_path(path: Path, b: int, replicas: int) -> Path:
    if replicas == 1:
        return Path(path)
    path = Path(path)
    return path.with_name(f"{path.stem}.r{b}{path.suffix}")


def run_md(
    neighbor_fn: Any,
    energy_fn: Callable,
    shift_fn: Callable,
    positions: Float[ArrayLike, "*B N 3"],
    masses: Float[ArrayLike, " N"],
    *,
    steps: int,
    ensemble: str = "nve",
    dt_fs: float = 0.5,
    temperature_K: float = 300.0,
    pressure_bar: float = 1.0,
    friction_per_ps: float = 10.0,
    tau_thermostat_fs: float | None = None,
    tau_barostat_fs: float | None = None,
    box: Float[ArrayLike, "3 3"] | None = None,
    fractional: bool = False,
    numbers: np.ndarray | None = None,
    seed: int = 0,
    momenta: Float[ArrayLike, "*B N 3"] | None = None,
    replicas: int = 1,
    chunk_steps: int = 100,
    log_path: str | Path | None = None,
    log_every: int | None = None,
    trajectory: str | Path | None = None,
    trajectory_every: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    restart: str | Path | None = None,
    max_force: float = 100.0,
    capacity_growth: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MDResult:
    r"""Run ``steps`` MD steps of one system (or ``replicas`` independent copies) in one call.

    Args:
      neighbor_fn: jax-md ``NeighborListFns`` (``allocate``, ``update``) matching
        ``energy_fn``.
      energy_fn: ``energy_fn(R, neighbor, **kwargs) -> []`` in eV; forwards ``box=`` and
        ``perturbation=`` (jax-md convention, e.g. ``Potential.neighbor_list`` or
        ``jax_md.energy.lennard_jones_neighbor_list``).
      shift_fn: jax-md shift function of the space ``positions`` live in.
      positions: initial positions, ``[N, 3]`` (or ``[B, N, 3]`` with ``replicas=B``), in the
        coordinates of ``shift_fn`` (fractional if ``fractional``, else Å).
      masses: atomic masses in amu, ``[N]``.
      steps: total number of steps (a restart continues up to this step count).
      ensemble: ``"nve"`` | ``"nvt"`` (Langevin) | ``"nvt-nh"`` (Nosé-Hoover chain) |
        ``"npt"`` (Nosé-Hoover, needs ``box`` and ``fractional=True``).
      dt_fs: time step in fs.
      temperature_K: target temperature in K; also the temperature of the initial
        Maxwell-Boltzmann velocities (centre of mass at rest), NVE included.
      pressure_bar: NPT target pressure in bar.
      friction_per_ps: Langevin friction in 1/ps.
      tau_thermostat_fs: Nosé-Hoover thermostat time scale in fs (default 100 dt).
      tau_barostat_fs: Nosé-Hoover barostat time scale in fs (default 1000 dt).
      box: ``[3, 3]`` box in Å with lattice vectors as **columns** (jax-md), or ``None`` for
        free space.
      fractional: whether ``positions`` are fractional coordinates of ``box``.
      numbers: atomic numbers ``[N]`` (needed for trajectories).
      seed: seed of the initial velocities and of the Langevin noise (replica ``b`` uses
        ``fold_in(seed, b)``).
      momenta: initial momenta in sqrt(amu·eV) instead of Maxwell-Boltzmann ones.
      replicas: number of independent copies integrated at once (vmap).
      chunk_steps: steps per jitted chunk (host work happens only between chunks).
      log_path: thermodynamic CSV log (written to ``<log_path>.part`` then renamed).
      log_every: log stride in steps (default ``chunk_steps``).
      trajectory: ``.extxyz``/``.xyz``/``.traj`` file (``stem.r<b>.ext`` per replica).
      trajectory_every: frame stride in steps (default ``log_every``).
      checkpoint: checkpoint file (``.npz``), rewritten atomically.
      checkpoint_every: checkpoint stride in steps (default ``10 * chunk_steps``; the last
        step is always checkpointed).
      restart: checkpoint to continue from (of the same atoms in the same order, checked
        by their atomic numbers); the run then continues bit-identically.
      max_force: blow-up guard threshold on any atomic force norm, in eV/Å.
      capacity_growth: factor by which the neighbour capacity grows on overflow (default 1.1
        for jax-md ``Dense`` lists, whose every slot costs time, 1.5 for ``Sparse`` lists).
      progress: called as ``progress(step, steps)`` after each chunk.

    Returns:
      An :class:`MDResult`.

    Raises:
      ValueError: inconsistent or non-finite input, or a checkpoint that does not match.
      MDBlowUpError: the blow-up guard stopped the run (last good state checkpointed).
    """
    t_start = time.perf_counter()
    config = EnsembleConfig(
        ensemble=ensemble,
        dt_fs=float(dt_fs),
        temperature_K=float(temperature_K),
        pressure_bar=float(pressure_bar),
        friction_per_ps=float(friction_per_ps),
        tau_thermostat_fs=tau_thermostat_fs,
        tau_barostat_fs=tau_barostat_fs,
    )
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    if int(replicas) != replicas or replicas < 1:
        raise ValueError(f"replicas must be a positive integer, got {replicas}")
    if chunk_steps < 1:
        raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
    log_every = log_every or chunk_steps
    trajectory_every = trajectory_every or log_every
    checkpoint_every = checkpoint_every or 10 * chunk_steps
    for name, v in [("log_every", log_every), ("trajectory_every", trajectory_every)]:
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if trajectory is not None:
        check_trajectory_path(trajectory)
        if numbers is None:
            raise ValueError("writing a trajectory needs the atomic numbers (numbers=...)")
    if max_force is not None and not max_force > 0:
        raise ValueError(f"max_force must be > 0 eV/Å, got {max_force}")

    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.floating):
        positions = positions.astype(jnp.result_type(float))
    dtype = positions.dtype
    if replicas > 1 and positions.ndim == 2:
        positions = jnp.broadcast_to(positions, (replicas, *positions.shape))
    want = 3 if replicas > 1 else 2
    if positions.ndim != want or positions.shape[-1] != 3:
        raise ValueError(
            f"positions must have shape {'[B, N, 3]' if replicas > 1 else '[N, 3]'}, "
            f"got {positions.shape}"
        )
    if replicas > 1 and positions.shape[0] != replicas:
        raise ValueError(f"positions have {positions.shape[0]} replicas, expected {replicas}")
    n_atoms = positions.shape[-2]
    if not np.all(np.isfinite(np.asarray(positions))):
        raise ValueError("positions contain NaN or inf")
    masses = jnp.asarray(masses, dtype=dtype)
    if masses.shape != (n_atoms,):
        raise ValueError(f"masses must have shape ({n_atoms},), got {masses.shape}")
    if not bool(jnp.all(masses > 0)) or not bool(jnp.all(jnp.isfinite(masses))):
        raise ValueError("masses must be positive and finite (amu)")
    if momenta is not None:
        m_np = np.asarray(momenta)
        if m_np.shape[-2:] != (n_atoms, 3) or not np.all(np.isfinite(m_np)):
            raise ValueError(f"momenta must be finite with shape [..., {n_atoms}, 3]")
    if numbers is not None:
        numbers = np.asarray(numbers)
        if numbers.shape != (n_atoms,):
            raise ValueError(f"numbers must have shape ({n_atoms},), got {numbers.shape}")
    if box is not None:
        box = jnp.asarray(box, dtype=dtype)
        if box.shape != (3, 3):
            raise ValueError(
                f"box must be a [3, 3] matrix (columns = lattice vectors), got {box.shape}"
            )
        if not np.allclose(np.triu(np.asarray(box)), np.asarray(box), rtol=0, atol=1e-12):
            raise ValueError(
                "box must be upper triangular (columns = lattice vectors); see make_space"
            )
    if config.ensemble == "npt" and (box is None or not fractional):
        raise ValueError("NPT needs a periodic box and fractional coordinates (see make_space)")
    if fractional and box is None:
        raise ValueError("fractional=True needs a box")

    npt = config.ensemble == "npt"
    batched = replicas > 1

    # ---------------------------------------------------------------- neighbour lists (host)
    from jax_md import partition

    def _box_kwargs(b):
        return {} if (b is None or not npt) else {"box": b}

    def allocate(R, current_box, at_least: int = 0):
        """Allocate for positions R ([N,3] or [B,N,3]) with capacity >= at_least (host)."""
        if not batched:
            Rs, boxes = [R], [current_box]
        else:
            Rs = [R[b] for b in range(R.shape[0])]
            if current_box is None or current_box.ndim == 2:
                boxes = [current_box] * len(Rs)
            else:
                boxes = [current_box[b] for b in range(R.shape[0])]
        allocated = [
            _hashable(neighbor_fn.allocate(Rb, **_box_kwargs(bb)))
            for Rb, bb in zip(Rs, boxes, strict=True)
        ]
        need = max([at_least] + [nb.max_occupancy for nb in allocated])
        template = allocated[0]
        for _ in range(20):
            # an allocation can itself overflow (capacity_multiplier < 1): grow until it fits
            over = any(int(np.max(np.asarray(nb.error.code))) & _REALLOCATE for nb in allocated)
            if not over and template.max_occupancy >= need:
                break
            if over:
                growth = capacity_growth or _default_growth(template.format)
                need = max(need, int(math.ceil(template.max_occupancy * growth)) + 1)
            per = n_atoms if partition.is_sparse(template.format) else 1
            extra = max(1, math.ceil((need - template.max_occupancy) / per))
            template = _hashable(
                neighbor_fn.allocate(Rs[0], extra_capacity=extra, **_box_kwargs(boxes[0]))
            )
            allocated = [template]
        else:
            raise RuntimeError("could not allocate a neighbour list without overflow")
        if not batched:
            return template
        if npt:
            return jax.vmap(lambda r, b: neighbor_fn.update(r, template, box=b))(
                R, jnp.stack(boxes)
            )
        return jax.vmap(lambda r: neighbor_fn.update(r, template))(R)

    # ---------------------------------------------------------------- the jitted chunk
    integ, chunk_jit, traces = _compiled_chunk(
        energy_fn, shift_fn, config, n_atoms, batched, jnp.dtype(dtype).name
    )
    traces_before = len(traces)

    # ---------------------------------------------------------------- initial state
    base_key = jax.random.PRNGKey(seed)
    if batched:
        keys = jnp.stack([jax.random.fold_in(base_key, b) for b in range(replicas)])
    else:
        keys = base_key

    def init_state(R, nbrs, mom, key):
        vel_key, sim_key = jax.random.split(key)
        if mom is None:
            mom = maxwell_boltzmann(vel_key, masses, config.temperature_K, dtype=dtype)
        return integ.init_fn(R, masses, jnp.asarray(mom, dtype), sim_key, nbrs, box)

    done = 0
    if restart is not None:
        arrays, meta = load_checkpoint(restart)
        _check_restart(meta, config, n_atoms, replicas, restart, numbers)
        done = int(meta["step"])
        ref = jnp.asarray(arrays["neighbor/reference_position"])
        alloc_box = (
            None
            if "neighbor/alloc_box" not in arrays
            else jnp.asarray(arrays["neighbor/alloc_box"])
        )
        kw = _box_kwargs(alloc_box)
        template = _hashable(neighbor_fn.allocate(ref[0] if batched else ref, **kw))
        saved_format = meta.get("neighbor_format", "sparse")  # older checkpoints: Sparse
        if saved_format != _format_name(template.format):
            log.warning(
                "restart %s: the checkpoint's neighbour list is %s, this run's %s; rebuilding "
                "it (the run continues, but not bit-identically)",
                restart,
                saved_format,
                _format_name(template.format),
            )
            nbrs = allocate(ref, alloc_box)
        else:
            nbrs = dataclasses.replace(
                template,
                idx=jnp.asarray(arrays["neighbor/idx"]),
                reference_position=ref,
                error=partition.PartitionError(jnp.asarray(arrays["neighbor/error"])),
                max_occupancy=int(meta["max_occupancy"]),
                cell_list_capacity=meta["cell_list_capacity"],
            )
        pos0 = jnp.asarray(arrays["state/position"])
        mom0 = jnp.asarray(arrays["state/momentum"])
        if batched:
            skeleton = jax.vmap(init_state, in_axes=(0, 0, 0, 0))(pos0, nbrs, mom0, keys)
        else:
            skeleton = init_state(pos0, nbrs, mom0, keys)
        state = _restore_state(_strong(skeleton, dtype), arrays, restart)
        alloc_box_now = alloc_box
    else:
        if momenta is not None and batched and jnp.ndim(momenta) == 2:
            momenta = jnp.broadcast_to(momenta, positions.shape)
        alloc_box_now = box if npt else None
        nbrs = allocate(positions, alloc_box_now)
        if batched:
            mom_in = momenta
            if mom_in is None:
                state = jax.vmap(lambda R, nb, k: init_state(R, nb, None, k))(positions, nbrs, keys)
            else:
                state = jax.vmap(init_state)(positions, nbrs, mom_in, keys)
        else:
            state = init_state(positions, nbrs, momenta, keys)
        state = _strong(state, dtype)

    # ---------------------------------------------------------------- output
    writers = []
    thermo_log = None
    if log_path is not None:
        thermo_log = ThermoLog(log_path, _thermo_columns(config.ensemble, replicas))
        writers.append(thermo_log)
    traj_writers = []
    if trajectory is not None:
        traj_writers = [
            TrajectoryWriter(_replica_path(trajectory, b, replicas)) for b in range(replicas)
        ]
        writers.extend(traj_writers)
    history: dict[str, list] = {}
    last_frame_step = [None]

    def cart_and_cell(state):
        pos = np.asarray(state.position)
        if box is None:
            return pos, None
        b = np.asarray(integ.box_fn(state)) if npt else np.asarray(box)
        if batched and b.ndim == 2:
            b = np.broadcast_to(b, (replicas, 3, 3))
        if fractional:
            pos = np.einsum("...ij,...nj->...ni", b, pos)
        return pos, np.swapaxes(b, -1, -2)

    def report(step, state, stats, force_frame=False):
        stats = {k: np.asarray(v) for k, v in stats.items()}
        t_ps = step * config.dt_fs / 1000.0
        cols = _thermo_columns(config.ensemble, 1)
        row = {"step": step, "time_ps": t_ps}
        row.update({c: stats[c] for c in cols if c in stats})
        if step % log_every == 0 or step == steps or force_frame:
            for c in cols:
                history.setdefault(c, []).append(
                    np.asarray(row[c]) * np.ones(replicas if batched else ())
                )
            if thermo_log is not None:
                rows = []
                for b in range(replicas):
                    r = {c: (row[c] if np.ndim(row[c]) == 0 else row[c][b]) for c in cols}
                    if batched:
                        r["replica"] = b
                    rows.append(r)
                thermo_log.write(rows)
        if traj_writers and (step % trajectory_every == 0 or step == steps or force_frame):
            if last_frame_step[0] == step:
                return
            pos, cell = cart_and_cell(state)
            mom, force = np.asarray(state.momentum), np.asarray(state.force)
            for b, w in enumerate(traj_writers):
                sel = (lambda a, b=b: a[b]) if batched else (lambda a: a)
                w.write(
                    make_frame(
                        numbers,
                        sel(pos),
                        sel(mom),
                        np.asarray(masses),
                        None if cell is None else sel(cell),
                        box is not None,
                        sel(stats["epot_eV"]),
                        sel(force),
                    )
                )
            last_frame_step[0] = step

    def write_checkpoint(step, state, nbrs, alloc_box_):
        if checkpoint is None:
            return
        arrays = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            arrays["state/" + _keystr(path)] = np.asarray(leaf)
        arrays["state/position"] = np.asarray(state.position)
        arrays["state/momentum"] = np.asarray(state.momentum)
        arrays["neighbor/idx"] = np.asarray(nbrs.idx)
        arrays["neighbor/reference_position"] = np.asarray(nbrs.reference_position)
        arrays["neighbor/error"] = np.asarray(nbrs.error.code)
        if alloc_box_ is not None:
            arrays["neighbor/alloc_box"] = np.asarray(alloc_box_)
        meta = {
            "step": int(step),
            "config": config.to_dict(),
            "n_atoms": int(n_atoms),
            "replicas": int(replicas),
            "max_occupancy": int(nbrs.max_occupancy),
            "neighbor_format": _format_name(nbrs.format),
            "cell_list_capacity": None
            if nbrs.cell_list_capacity is None
            else int(nbrs.cell_list_capacity),
            "numbers": None if numbers is None else [int(z) for z in numbers],
        }
        save_checkpoint(checkpoint, arrays, meta)

    # ---------------------------------------------------------------- main loop
    reallocations = 0
    t_device = 0.0
    ok = False
    try:
        t0 = time.perf_counter()
        state, nbrs, stats = chunk_jit(state, nbrs, 0)  # measure the start; compiles once
        stats = jax.device_get(stats)
        t_device += time.perf_counter() - t0
        if not np.all(stats["finite"]) or not np.all(np.isfinite(stats["epot_eV"])):
            raise ValueError(
                f"the initial energy is not finite (epot = {stats['epot_eV']} eV); check the "
                "structure (overlapping atoms?) and the potential"
            )
        if restart is None:
            report(done, state, stats)
        last_good = (done, state, nbrs, stats)
        t_loop0, t_device0 = time.perf_counter(), t_device
        while done < steps:
            nxt = min(
                steps,
                done + chunk_steps,
                _next_multiple(done, log_every),
                _next_multiple(done, trajectory_every),
                _next_multiple(done, checkpoint_every),
            )
            n = nxt - done
            saved_state, saved_nbrs = state, nbrs
            attempts = 0
            while True:
                t0 = time.perf_counter()
                try:
                    new_state, new_nbrs, stats = chunk_jit(saved_state, saved_nbrs, n)
                    stats = jax.device_get(stats)
                except FloatingPointError as e:  # jax_debug_nans
                    t_device += time.perf_counter() - t0
                    _blow_up(
                        f"NaN during steps {done + 1}..{nxt} ({e})",
                        last_good,
                        report,
                        write_checkpoint,
                        alloc_box_now,
                    )
                t_device += time.perf_counter() - t0
                code = int(np.bitwise_or.reduce(np.atleast_1d(stats["error"]).astype(np.int64)))
                if not code & _REALLOCATE:
                    break
                attempts += 1
                if attempts > 20:
                    raise RuntimeError("neighbour list keeps overflowing after 20 reallocations")
                growth = capacity_growth or _default_growth(saved_nbrs.format)
                target = int(math.ceil(saved_nbrs.max_occupancy * growth)) + 1
                alloc_box_now = integ.box_fn(saved_state) if npt else None
                saved_nbrs = allocate(saved_state.position, alloc_box_now, at_least=target)
                reallocations += 1
                log.info(
                    "neighbour list overflow (code %d) in steps %d..%d: capacity %d -> %d, "
                    "replaying the chunk",
                    code,
                    done + 1,
                    nxt,
                    target - 1,
                    saved_nbrs.max_occupancy,
                )
            fmax = float(np.max(stats["fmax_eVA"]))
            if not (np.all(stats["finite"]) and np.isfinite(fmax)) or not np.all(
                np.isfinite(stats["epot_eV"])
            ):
                _blow_up(
                    f"non-finite positions, momenta or energy during steps {done + 1}..{nxt}",
                    last_good,
                    report,
                    write_checkpoint,
                    alloc_box_now,
                )
            if max_force is not None and fmax > max_force:
                _blow_up(
                    f"max |F| = {fmax:.4g} eV/Å > max_force = {max_force:g} eV/Å during steps "
                    f"{done + 1}..{nxt}",
                    last_good,
                    report,
                    write_checkpoint,
                    alloc_box_now,
                )
            state, nbrs, done = new_state, new_nbrs, nxt
            report(done, state, stats)
            if done % checkpoint_every == 0 or done == steps:
                write_checkpoint(done, state, nbrs, alloc_box_now)
            last_good = (done, state, nbrs, stats)
            if progress is not None:
                progress(done, steps)
        t_loop = time.perf_counter() - t_loop0
        t_loop_device = t_device - t_device0
        ok = True
    except MDBlowUpError:
        ok = True  # every frame and row written so far is good
        raise
    finally:
        for w in writers:
            w.close(ok)

    total = time.perf_counter() - t_start
    thermo = {k: np.asarray(v) for k, v in history.items()}
    return MDResult(
        state=state,
        neighbor=nbrs,
        step=done,
        thermo=thermo,
        reallocations=reallocations,
        traces=len(traces) - traces_before,
        timings={
            "total": total,
            "device": t_device,
            "host": total - t_device,
            "loop": t_loop,
            "loop_host": t_loop - t_loop_device,
        },
    )


@functools.lru_cache(maxsize=8)
def _compiled_chunk(energy_fn, shift_fn, config, n_atoms, batched, dtype_name):
    """The integrator and the jitted chunk ``(state, nbrs, n) -> (state, nbrs, stats)``.

    Cached (a few entries) on the energy function, space and settings, so repeated runs and
    restarts in one process reuse the compilation; ``traces`` counts traces of this entry.
    """
    integ = make_integrator(config, energy_fn, shift_fn)
    npt = config.ensemble == "npt"
    dtype = jnp.dtype(dtype_name)
    traces = []
    kB = units.KB_EV_PER_K

    def _box_kwargs(b):
        return {} if (b is None or not npt) else {"box": b}

    def measure(state, nbrs):
        cur_box = integ.box_fn(state)
        epot = energy_fn(state.position, neighbor=nbrs, **_box_kwargs(cur_box))
        p = state.momentum
        ekin = 0.5 * jnp.sum(p**2 / state.mass)
        out = {
            "epot_eV": epot,
            "ekin_eV": ekin,
            "etot_eV": epot + ekin,
            "temperature_K": 2.0 * ekin / (3 * n_atoms * kB),
            "finite": jnp.all(jnp.isfinite(state.position)) & jnp.all(jnp.isfinite(p)),
        }
        if npt:
            from jax_md import quantity

            out["volume_A3"] = jnp.abs(jnp.linalg.det(cur_box))
            out["pressure_bar"] = (
                quantity.pressure(energy_fn, state.position, cur_box, ekin, neighbor=nbrs)
                / units.BAR
            )
        return out

    def chunk(state, nbrs, n):
        def body(_, carry):
            state, nbrs, fmax2 = carry
            state = integ.step_fn(state, nbrs)
            nbrs = nbrs.update(state.position, **_box_kwargs(integ.box_fn(state)))
            f2 = jnp.max(jnp.sum(state.force**2, axis=-1))
            # NaN-propagating maximum: a NaN force must trip the guard.
            fmax2 = jnp.where(jnp.isnan(f2) | (f2 > fmax2), f2, fmax2)
            return state, nbrs, fmax2

        zero = jnp.zeros((), dtype)
        state, nbrs, fmax2 = jax.lax.fori_loop(0, n, body, (state, nbrs, zero))
        stats = measure(state, nbrs)
        stats["fmax_eVA"] = jnp.sqrt(fmax2)
        stats["error"] = nbrs.error.code
        return state, nbrs, stats

    def traced_chunk(state, nbrs, n):
        traces.append(1)  # Python side effect: runs once per trace
        f = jax.vmap(chunk, in_axes=(0, 0, None)) if batched else chunk
        return f(state, nbrs, n)

    return integ, jit(traced_chunk, num_atoms=n_atoms), traces


def _strong(state, dtype):
    """Cast floating leaves to ``dtype``, strongly typed. jax-md mixes float32 constants and
    weakly typed scalars into its states; a restored array cannot be weak, so both fresh and
    restored states are canonicalised the same way (restarts stay bit-identical)."""

    def cast(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):
            return jax.lax.convert_element_type(x, dtype)
        return x

    return jax.tree.map(cast, state)


def _hashable(nbrs):
    """jax-md stores ``cell_size`` (a static field) as a jax array, which breaks pytree
    metadata comparison inside jax-md's jitted ``init_fn``s; make it a Python float/tuple."""
    cs = nbrs.cell_size
    if cs is None or isinstance(cs, (float, tuple)):
        return nbrs
    cs = np.asarray(cs)
    cs = float(cs) if cs.size == 1 else tuple(float(x) for x in cs.ravel())
    return dataclasses.replace(nbrs, cell_size=cs)


def _next_multiple(done: int, every: int) -> int:
    return (done // every + 1) * every


def _keystr(path) -> str:
    return jax.tree_util.keystr(path).replace("'", "").replace("[", "/").replace("]", "")


def _blow_up(message, last_good, report, write_checkpoint, alloc_box):
    step, state, nbrs, stats = last_good
    report(step, state, stats, force_frame=True)
    write_checkpoint(step, state, nbrs, alloc_box)
    raise MDBlowUpError(
        f"MD stopped by the blow-up guard: {message}. The last good state (step {step}) is "
        "kept in the trajectory and checkpoint (if requested). Try a smaller time step, check "
        "the structure, or check the potential's training range.",
        step,
        state,
    )


def _default_growth(fmt) -> float:
    return 1.5 if _format_name(fmt) == "sparse" else 1.1


def _format_name(fmt) -> str:
    from jax_md import partition

    return "sparse" if partition.is_sparse(fmt) else "dense"


def _check_restart(meta, config: EnsembleConfig, n_atoms, replicas, path, numbers=None):
    saved = EnsembleConfig.from_dict(meta["config"])
    if saved != config:
        diff = {
            k: (v, getattr(config, k))
            for k, v in saved.to_dict().items()
            if v != getattr(config, k)
        }
        raise ValueError(f"restart {path}: ensemble settings differ (checkpoint, now): {diff}")
    if meta["n_atoms"] != n_atoms or meta["replicas"] != replicas:
        raise ValueError(
            f"restart {path}: checkpoint has {meta['n_atoms']} atoms x {meta['replicas']} "
            f"replicas, this run {n_atoms} x {replicas}"
        )
    saved_numbers = meta.get("numbers")
    if numbers is not None and saved_numbers is not None:
        differ = np.flatnonzero(np.asarray(saved_numbers) != np.asarray(numbers))
        if differ.size:
            i = int(differ[0])
            raise ValueError(
                f"restart {path}: the atoms differ from the checkpoint's ({differ.size} atoms; "
                f"atom {i} is Z={saved_numbers[i]} there, Z={int(numbers[i])} here): restart "
                "from the same structure, in the same order (e3md md: the same --sort-atoms)"
            )


def _restore_state(skeleton, arrays, path):
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(skeleton)
    leaves = []
    for p, leaf in leaves_with_path:
        key = "state/" + _keystr(p)
        if key not in arrays:
            raise ValueError(f"restart {path}: checkpoint lacks {key}")
        a = arrays[key]
        if a.shape != np.shape(leaf) or a.dtype != np.asarray(leaf).dtype:
            raise ValueError(
                f"restart {path}: {key} has {a.dtype}{list(a.shape)}, expected "
                f"{np.asarray(leaf).dtype}{list(np.shape(leaf))}"
            )
        leaves.append(jnp.asarray(a))
    return jax.tree_util.tree_unflatten(treedef, leaves)
