r"""e3nn irreps as equiproj representations, and back.

e3nn (a dependency of equiproj) describes the features of an O(3)-equivariant network by an
``e3nn.o3.Irreps`` such as ``"4x0e + 2x1o"``: 4 scalars, then 2 vectors. Its layout is
copy-major (the ``mul`` copies of an irrep are consecutive blocks of ``2l + 1`` coordinates, in
the order of the string) and its basis is that of ``Irrep(l, p).D_from_matrix``. The irreps of
:func:`equiproj.groups.so3` and :func:`equiproj.groups.o3` use the same real Wigner matrices, so

.. math::

    \texttt{from\_e3nn}(\text{irreps}, G)(g) = \texttt{Irreps(irreps).D\_from\_matrix}(R_g)

for every element ``g`` with rotation (or orthogonal) matrix ``R_g``: features of an e3nn model
can be fed through equiproj layers, projectors and metrics unchanged.

* :func:`from_e3nn`: ``"4x0e + 2x1o"`` (or an ``Irreps`` / ``Irrep``) to a representation of
  ``o3()`` (parity ``e`` = +1, ``o`` = -1) or of ``so3()`` (parities dropped).
* :func:`to_e3nn`: the converse, for direct sums of irreps of SO(3) (written with the parity
  ``(-1)^l`` of spherical harmonics) or O(3).
* :func:`as_representations`: what :func:`equiproj.declare` and :func:`equiproj.declare_model`
  call on their representation arguments, so that they accept e3nn strings.

e3nn evaluates ``D_from_matrix`` in torch's default dtype (float32 unless changed): compare with
it under ``torch.set_default_dtype(torch.float64)``, where both agree to about 1e-14 for
``l <= 4`` (``tests/test_interop_e3nn.py``).

Examples
--------
>>> import torch
>>> from e3nn import o3 as e3o3
>>> from equiproj.groups import o3
>>> from equiproj.interop.e3nn import from_e3nn, to_e3nn
>>> G = o3()
>>> rep = from_e3nn("4x0e + 2x1o", G)
>>> rep.dim, rep.name
(10, '4*irrep(0,+) + 2*irrep(1,-)')
>>> R = e3o3.rand_matrix(3, dtype=torch.float64)
>>> D = e3o3.Irreps("4x0e + 2x1o").D_from_matrix(R)
>>> bool(torch.allclose(rep(G.elements_from_matrices(R)), D, atol=1e-6))   # e3nn computes in float32 here
True
>>> to_e3nn(rep)
4x0e+2x1o
"""

from __future__ import annotations

from typing import Optional

from ..groups import O3, SO3, DirectSum, Group, Irrep, Representation, o3

__all__ = ["from_e3nn", "to_e3nn", "as_representation", "as_representations"]


def _irreps(irreps):
    from e3nn import o3 as e3o3

    if isinstance(irreps, e3o3.Irreps):
        return irreps
    if isinstance(irreps, e3o3.Irrep):
        return e3o3.Irreps([(1, irreps)])
    if isinstance(irreps, str):
        try:
            return e3o3.Irreps(irreps)
        except (ValueError, AssertionError) as err:
            raise ValueError(
                f"{irreps!r} is not an e3nn irreps string: expected terms like '4x0e + 2x1o + 2e' "
                f"(multiplicity x degree parity, parity e or o)"
            ) from err
    raise TypeError(f"expected an e3nn Irreps, Irrep or string, got {type(irreps).__name__}")


def from_e3nn(irreps, group: Optional[Group] = None) -> Representation:
    """The representation of ``group`` (``o3()`` by default, or ``so3()``) for e3nn irreps.

    Parameters
    ----------
    irreps : str, e3nn.o3.Irreps or e3nn.o3.Irrep
        For example ``"4x0e + 2x1o"``; zero multiplicities are dropped.
    group : SO3 or O3
        ``o3()`` keeps the parities; ``so3()`` drops them (``1e`` and ``1o`` are both ``irrep(1)``).

    Returns
    -------
    Representation
        The direct sum in e3nn's order and layout: its matrices equal
        ``Irreps(irreps).D_from_matrix(R)``.

    Examples
    --------
    >>> from equiproj.groups import so3
    >>> from equiproj.interop.e3nn import from_e3nn
    >>> from_e3nn("2x0e + 1o + 3x2e", so3())
    2*irrep(0) + irrep(1) + 3*irrep(2) of SO(3) (dim 20)
    """
    G = o3() if group is None else group
    if not isinstance(G, SO3):  # O3 is a subclass of SO3
        raise TypeError(f"e3nn irreps describe representations of so3() or o3(), not of {getattr(G, 'name', G)!r}")
    parts = []
    for mul, ir in _irreps(irreps):
        if mul == 0:
            continue
        psi = G.irrep(ir.l, ir.p) if isinstance(G, O3) else G.irrep(ir.l)
        parts.append(mul * psi)
    if not parts:
        raise ValueError(f"the irreps {str(irreps)!r} have dimension 0; a representation needs at least one field")
    return parts[0] if len(parts) == 1 else DirectSum(parts)


def to_e3nn(rep: Representation):
    """The ``e3nn.o3.Irreps`` of a direct sum of irreps of ``so3()`` or ``o3()``.

    SO(3) irreps get the parity ``(-1)^l`` (that of spherical harmonics, e3nn's convention for
    rotation-only models). Consecutive copies of one irrep are merged (``2x1o``), the order is
    kept, so the layout is the same.

    Examples
    --------
    >>> from equiproj.groups import so3
    >>> from equiproj.interop.e3nn import to_e3nn
    >>> G = so3()
    >>> to_e3nn(2 * G.trivial() + G.irrep(1) + G.irrep(1) + G.irrep(2))
    2x0e+2x1o+1x2e
    """
    from e3nn import o3 as e3o3

    if not isinstance(rep, Representation):
        raise TypeError(f"expected an equiproj Representation, got {type(rep).__name__}")
    G = rep.group
    if not isinstance(G, SO3):
        raise ValueError(f"to_e3nn needs a representation of so3() or o3(), got one of {G.name}")
    out = []
    for f in rep.fields:
        if not isinstance(f, Irrep):
            raise ValueError(
                f"the field {f.name} of {rep.name} is not an irrep of {G.name} in e3nn's basis, so it has no e3nn "
                f"name; build the representation from {G.name.lower()}().irrep(...) fields (from_e3nn gives them)"
            )
        l, p = (f.label if isinstance(G, O3) else (f.label, (-1) ** f.label))
        ir = e3o3.Irrep(l, p)
        if out and out[-1][1] == ir:
            out[-1][0] += 1
        else:
            out.append([1, ir])
    return e3o3.Irreps([(m, ir) for m, ir in out])


def as_representation(rep, group: Optional[Group] = None, what: str = "representation") -> Representation:
    """``rep`` itself if it is a Representation; an e3nn string or Irreps through :func:`from_e3nn`
    (of ``group``, default ``o3()``); anything else raises a ``TypeError`` that names ``what``."""
    if isinstance(rep, Representation):
        return rep
    try:
        from e3nn import o3 as e3o3

        e3nn_types = (str, e3o3.Irreps, e3o3.Irrep)
    except ImportError:  # pragma: no cover - e3nn is a dependency
        e3nn_types = (str,)
    if isinstance(rep, e3nn_types):
        if group is not None and not isinstance(group, SO3):
            raise TypeError(f"{what}: an e3nn irreps string {str(rep)!r} describes a representation of SO(3) or "
                            f"O(3), but the group is {group.name}")
        return from_e3nn(rep, group)
    raise TypeError(f"{what} must be an equiproj.groups.Representation or an e3nn irreps string such as "
                    f"'4x0e + 2x1o', got {type(rep).__name__}")


def as_representations(*reps, group: Optional[Group] = None):
    """:func:`as_representation` for several arguments (``None`` passes through). Without
    ``group``, e3nn strings become representations of the group of the first argument that is a
    Representation, else of ``o3()``.

    Examples
    --------
    >>> from equiproj.groups import so3
    >>> from equiproj.interop.e3nn import as_representations
    >>> as_representations(so3().irrep(1), "2x0e + 1o", None)
    (irrep(1) of SO(3) (dim 3), 2*irrep(0) + irrep(1) of SO(3) (dim 5), None)
    """
    if group is None:
        group = next((r.group for r in reps if isinstance(r, Representation)), None)
    return tuple(None if r is None else as_representation(r, group) for r in reps)
