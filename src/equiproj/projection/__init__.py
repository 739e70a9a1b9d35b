"""Exact projection of layer weights onto their equivariant part.

Three routes compute the same orthogonal projection ``P`` (see ``docs/method.md``):

``'spatial'``
    average over the elements of a finite group; permutation representations by orbit means.
``'spectral'``
    isotypic blocks: zero the blocks between different irreps, project the rest onto the
    commutant of each irrep (Schur's lemma); exact for band-limited continuous groups.
``'basis'``
    ``Q Q^T`` with an orthonormal basis ``Q`` of the equivariant maps, from the null space of
    the generator constraints.

``'auto'`` picks the cheapest route that applies, per pair of field types.
"""

from ._base import ROUTES, PairProjector, RouteNotApplicable
from ._basis import BASIS_MAX_DIM, BasisPair
from ._projector import LinearProjector, Projector, clear_pair_cache, make_pair
from ._spatial import SpatialPair
from ._spectral import SpectralPair

__all__ = [
    "Projector", "LinearProjector", "PairProjector", "SpatialPair", "SpectralPair", "BasisPair",
    "RouteNotApplicable", "ROUTES", "BASIS_MAX_DIM", "make_pair", "clear_pair_cache",
]
