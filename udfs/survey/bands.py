"""The photometric bands the pipeline knows, defined once.

``SURVEY_BANDS``: the Legacy Survey DR9/DR10 optical bands that targets, cutouts, stamps and the
source bank carry ("grz", in that order). ``COADD_BANDS``: every band a DR10 coadd brick may hold
(DR10 south adds i), so a cutout may be asked for in any of them.
"""
from __future__ import annotations

SURVEY_BANDS = "grz"
COADD_BANDS = "griz"


def check_bands(bands: str, allowed: str = SURVEY_BANDS) -> str | None:
    """``None`` if ``bands`` is a non-empty string of distinct letters from ``allowed``, else the problem."""
    if not isinstance(bands, str) or not bands:
        return f"expected a non-empty string of bands from {allowed!r}, got {bands!r}"
    if any(b not in allowed for b in bands) or len(set(bands)) != len(bands):
        return f"{bands!r} must be distinct letters from {allowed!r}"
    return None
