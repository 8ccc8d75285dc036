"""Physics limits shared by the source bank, the manifest priors, the demo sky and the renderer
(defined below every domain package, so that each of them may check against them).

``SERSIC_N_RANGE``: the Sersic indices GalSim can draw (0.3 <= n <= 6.2; GalSim raises outside).
The bank keeps only Sersic twins in this range, the manifest's Sersic priors must lie in it, the
demo sky clips catalogue indices to it, and the renderer refuses anything outside it.

:class:`ParameterError`: a lens, source or PSF parameter outside what the physics allows (a
negative Einstein radius, ``|e| >= 1``, a Sersic index outside ``SERSIC_N_RANGE``, ...): bad input.
"""
from __future__ import annotations

from udfs.io.errors import InputError

SERSIC_N_RANGE = (0.3, 6.2)


class ParameterError(InputError):
    """A physical parameter outside its valid range; the message names it and the range."""
