r"""The PDE specification GP-HM solves, and the checks of a user's PDE and grid (every check
runs before anything compiles)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bayeslr._validation import check_int

__all__ = ["PDE", "boundary_kinds", "boundary_mask"]

MultiIndex = tuple[int, ...]


# the PDE specification


@dataclasses.dataclass(frozen=True)
class PDE:
    r"""A PDE :math:`\mathcal L[u](x) = f(x)` on a box with Dirichlet data :math:`u = g` on its
    faces (or Neumann data :math:`\partial u/\partial n = h` on the faces named in
    ``neumann``), as the solver needs it.

    Args:
        operator: ``operator(u, derivs, x) -> L[u]`` on the grid: ``u`` the grid values, shape
            ``(M_1, ..., M_d)``; ``derivs[r]`` the derivative :math:`\partial^{r_1}_{x_1}\cdots
            \partial^{r_d}_{x_d}u` on the grid (same shape) for each multi-index ``r`` in
            ``derivatives``; ``x`` the grid points ``(M_1, ..., M_d, d)``. Linear or nonlinear,
            JAX-traceable, e.g. Allen–Cahn ``lambda u, d, x: d[(2,)] + u * (u**2 - 1)``.
        derivatives: the multi-indices ``r`` (one order per axis) the operator reads, e.g.
            ``((2, 0), (0, 2))`` for the 2-D Laplacian, ``((1, 0), (0, 1))`` for advection.
        domain: ``((lo_1, hi_1), ..., (lo_d, hi_d))``.
        boundary: the Dirichlet data: a callable ``g(x)`` taking boundary points ``(n, d)`` and
            returning ``(n,)``, or an array of the values at the grid's boundary nodes (in C
            order of the grid, each node once; see :meth:`GPSolver.boundary_points`; at the
            nodes of Neumann faces the array holds the Neumann data). ``None`` only when every
            face is in ``neumann``.
        source: :math:`f(x)`, a callable on points ``(..., d)`` returning ``(...)``, or an
            array of its values at the grid points (shape ``(M_1, ..., M_d)``, the grid's
            C order; e.g. measured or tabulated data); ``None`` for :math:`f = 0`. A callable
            is evaluated once on the grid, not at every step.
        neumann: faces with Neumann data in place of Dirichlet data: a mapping from a face,
            ``(axis, "lo")`` or ``(axis, "hi")``, to :math:`h`, the **outward** normal
            derivative there (:math:`-\partial_{x_j}u` on the ``"lo"`` face of axis :math:`j`,
            :math:`+\partial_{x_j}u` on ``"hi"``): a callable of the face's points ``(n, d)``
            returning ``(n,)``, or a number. A node shared with a Dirichlet face (a corner)
            keeps the Dirichlet condition; one shared by two Neumann faces takes the face of
            the lower axis. Faces not named are Dirichlet (data from ``boundary``).
        name: a label for progress bars and tables.
        defaults: solver settings this PDE suggests where the :class:`GPSolver` leaves them
            unset (keys ``grid``, ``freq_scale``, ``boundary_weight``, ``extra_gp_fraction``);
            the built-in problems carry the reference runs' settings.

    Example (Helmholtz :math:`u'' + k^2 u = 0` on :math:`[0, 1]` with :math:`u = \sin kx`)::

        pde = PDE(operator=lambda u, d, x: d[(2,)] + 30.0**2 * u, derivatives=((2,),),
                  domain=((0.0, 1.0),), boundary=lambda x: jnp.sin(30.0 * x[:, 0]))
    """

    operator: Callable
    derivatives: tuple[MultiIndex, ...]
    domain: tuple[tuple[float, float], ...]
    boundary: Any
    source: Callable | Any = None
    name: str = "pde"
    neumann: dict | None = dataclasses.field(default=None, compare=False, hash=False)
    defaults: dict | None = dataclasses.field(default=None, compare=False, hash=False)

    @classmethod
    def from_problem(cls, problem: Any) -> PDE:
        """The spec of a :class:`bayeslr.datasets.pdes.PDEProblem` (its operator, autodiff source,
        and the exact solution as boundary data)."""
        return cls(
            operator=_ProblemOperator(problem),
            derivatives=tuple(problem.derivatives),
            domain=tuple(problem.domain),
            boundary=problem.exact,
            source=problem.source,
            name=problem.name,
            defaults={"grid": problem.grid_size, "freq_scale": problem.freq_scale,
                      "boundary_weight": problem.boundary_weight,
                      "extra_gp_fraction": problem.extra_gp_fraction},
        )


class _ProblemOperator:
    """A built-in problem's operator as a callable that compares equal for the same problem, so
    two fits of one problem share the compiled step (a fresh lambda per fit would not)."""

    def __init__(self, problem: Any):
        self.problem = problem
        self._key = (problem.name, problem.operator_name, problem.dim, problem.beta)

    def __call__(self, u, derivs, x):
        return self.problem.apply_operator(u, derivs)

    def __eq__(self, other):
        return isinstance(other, _ProblemOperator) and other._key == self._key

    def __hash__(self):
        return hash(self._key)


def _as_pde(pde: Any) -> PDE:
    if hasattr(pde, "to_pde") and not isinstance(pde, PDE):  # a bayeslr.datasets.PDEProblem
        pde = pde.to_pde()
    if isinstance(pde, str):
        raise TypeError(
            f"`pde` must be a PDE or a PDE problem object, not its name; for a built-in problem "
            f"pass bayeslr.datasets.pde_problem({pde!r})."
        )
    if not isinstance(pde, PDE):
        raise TypeError(
            "`pde` must be a bayeslr.models.gphm.PDE or a bayeslr.datasets.PDEProblem "
            f"(bayeslr.datasets.pde_problem(name)); got {type(pde).__name__}."
        )
    if not callable(pde.operator):
        raise TypeError(f"`pde.operator` must be callable; got {type(pde.operator).__name__}.")
    if pde.source is not None and not callable(pde.source):
        try:
            np.asarray(pde.source, np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                "`pde.source` must be callable, an array of f at the grid points, or None; got "
                f"{type(pde.source).__name__}."
            ) from None
    return pde


def _check_domain(domain: Any) -> tuple[tuple[float, float], ...]:
    try:
        dom = tuple((float(lo), float(hi)) for lo, hi in domain)
    except (TypeError, ValueError):
        raise ValueError(
            f"`pde.domain` must be a sequence of (lo, hi) pairs, one per axis; got {domain!r}."
        ) from None
    if not dom or any(not (np.isfinite(lo) and np.isfinite(hi) and hi > lo) for lo, hi in dom):
        raise ValueError(f"`pde.domain` must be finite (lo, hi) pairs with hi > lo; got {dom}.")
    return dom


def _check_derivatives(derivatives: Any, d: int) -> tuple[MultiIndex, ...]:
    out = []
    for idx in derivatives:
        r = tuple(int(v) for v in np.atleast_1d(idx))
        if len(r) != d or any(v < 0 for v in r) or sum(r) == 0:
            raise ValueError(
                f"`pde.derivatives` must hold multi-indices of length {d} (one order per axis, "
                f"orders >= 0, not all zero); got {idx!r}."
            )
        if max(r) > 2:
            raise ValueError(
                f"`pde.derivatives`: orders above 2 per axis are not supported (the Matérn-5/2 "
                f"part of the kernel gives cross-covariances up to order 2 in one argument "
                f"without losing smoothness); got {r}."
            )
        out.append(r)
    if not out:
        raise ValueError("`pde.derivatives` is empty; the operator must read some derivative.")
    return tuple(dict.fromkeys(out))


def _build_grid(grid: Any, domain) -> tuple[np.ndarray, ...]:
    d = len(domain)
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        grid = (int(grid),) * d
    if not isinstance(grid, (Sequence, np.ndarray)) or len(grid) != d:
        raise ValueError(
            f"`grid` must be an int, {d} ints (points per axis) or {d} 1-D coordinate arrays "
            f"for a {d}-D domain; got {grid!r}."
        )
    axes = []
    for j, (g, (lo, hi)) in enumerate(zip(grid, domain, strict=True)):
        if isinstance(g, (int, np.integer)) and not isinstance(g, bool):
            axes.append(np.linspace(lo, hi, check_int(f"grid[{j}]", g, minimum=2)))
            continue
        a = np.asarray(g, np.float64)
        if a.ndim != 1 or a.size < 2 or not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
            raise ValueError(
                f"`grid[{j}]` must be a strictly increasing finite 1-D array of >= 2 points; "
                f"got shape {a.shape}."
            )
        tol = 1e-9 * (hi - lo)
        if abs(a[0] - lo) > tol or abs(a[-1] - hi) > tol:
            raise ValueError(
                f"`grid[{j}]` must cover the domain axis [{lo:g}, {hi:g}] with its end points "
                f"(the boundary data live there); got [{a[0]:g}, {a[-1]:g}]."
            )
        axes.append(a)
    return tuple(axes)


def boundary_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the boundary nodes of a grid of ``shape`` (each node once)."""
    mask = np.zeros(shape, bool)
    for j in range(len(shape)):
        sl = [slice(None)] * len(shape)
        for end in (0, shape[j] - 1):
            sl[j] = end
            mask[tuple(sl)] = True
    return mask


NeumannFaces = tuple[tuple[bool, bool], ...]


def _check_neumann(neumann: Any, d: int) -> NeumannFaces | None:
    """Per axis, whether its ``lo`` and ``hi`` faces carry Neumann data (``None``: none do)."""
    if neumann is None or (hasattr(neumann, "__len__") and len(neumann) == 0):
        return None
    if not hasattr(neumann, "items"):
        raise TypeError(f"`pde.neumann` must be a mapping from faces (axis, 'lo' | 'hi') to data; "
                        f"got {type(neumann).__name__}.")  # fmt: skip
    faces = [[False, False] for _ in range(d)]
    for key, value in neumann.items():
        ok = (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], (int, np.integer))
              and not isinstance(key[0], bool) and 0 <= key[0] < d and key[1] in ("lo", "hi"))
        if not ok:
            raise ValueError(f"`pde.neumann` keys must be faces (axis, 'lo' | 'hi') with axis in "
                             f"0..{d - 1}; got {key!r}.")  # fmt: skip
        if not callable(value):
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = np.nan
            if not np.isfinite(v):
                raise ValueError(f"`pde.neumann[{key!r}]` must be a callable of the face's "
                                 f"points or a finite number; got {value!r}.")  # fmt: skip
        faces[int(key[0])][("lo", "hi").index(key[1])] = True
    return tuple((lo, hi) for lo, hi in faces)


def normal_orders(neumann: NeumannFaces | None) -> tuple[MultiIndex, ...]:
    r"""The first derivatives the Neumann faces read: :math:`\partial_{x_j}` per axis with
    one."""
    if neumann is None:
        return ()
    d = len(neumann)
    return tuple(tuple(int(i == j) for i in range(d)) for j, f in enumerate(neumann) if any(f))


def boundary_kinds(shape: tuple[int, ...], neumann: NeumannFaces | None
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per boundary node (:func:`boundary_mask` order): ``kind`` 0 for a Dirichlet node, else
    :math:`j + 1` for a Neumann node of axis :math:`j`, and the sign of the outward normal
    (``-1`` on ``lo`` faces, ``+1`` on ``hi``; 0 at Dirichlet nodes)."""
    idx = np.argwhere(boundary_mask(shape))
    kind = np.zeros(len(idx), np.int32)
    sign = np.zeros(len(idx))
    if neumann is None:
        return kind, sign
    dirichlet = np.zeros(len(idx), bool)
    for j, m in enumerate(shape):
        for side, end in enumerate((0, m - 1)):
            on = idx[:, j] == end
            if not neumann[j][side]:
                dirichlet |= on
    for j in reversed(range(len(shape))):  # the lowest axis wins at Neumann corners
        for side, end in enumerate((0, shape[j] - 1)):
            on = (idx[:, j] == end) & ~dirichlet
            if neumann[j][side]:
                kind[on] = j + 1
                sign[on] = -1.0 if side == 0 else 1.0
    return kind, sign


# --------------------------------------------------------------------------------------------
