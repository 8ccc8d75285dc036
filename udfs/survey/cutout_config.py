"""The settings of stage 4 (``jobs.make_cutouts`` flags) and their validation.

Units: ``stamp_size`` pixels, ``min_good_frac`` a fraction in [0, 1], ``backoff_s`` seconds;
``retries`` counts retries per failed remote read (:class:`udfs.io.retry.RetryPolicy`);
``max_remote_requests`` bounds the remote requests in flight on one machine, all worker processes
together (:func:`udfs.io.request_slots.remote_slot`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from udfs.config.checker import ConfigError
from udfs.io.retry import RetryPolicy
from udfs.survey.bands import COADD_BANDS, SURVEY_BANDS, check_bands
from udfs.survey.target_psf import PSFConfig

MAX_REQUESTS = 1024  # a sanity bound on --max-remote-requests (slot files per machine)


@dataclass(frozen=True)
class CutoutConfig:
    """The cutout settings (``jobs.make_cutouts`` flags); :meth:`validate` names the flag on error."""

    stamp_size: int = 64          # pixels per side (--stamp-size)
    bands: str = SURVEY_BANDS     # band order of the output arrays (--bands), letters of COADD_BANDS
    min_good_frac: float = 0.5    # per band, fraction of pixels with finite image and invvar > 0
    layout: str = "nested"        # "nested": coadd/<bri>/<brick>/..., "flat": files under base
    require_maskbits: bool = True  # False: rows without a maskbits file keep maskbits = null
    retries: int = 4              # retries per failed remote read (--retries)
    backoff_s: float = 0.25       # cap of the first (jittered) wait in seconds; doubles per retry
    max_remote_requests: int = 8  # concurrent remote requests per machine (--max-remote-requests)
    psf: PSFConfig = PSFConfig()  # how each target's PSF is made (--psf-model, --ccds, ...)

    def validate(self) -> "CutoutConfig":
        """Return self; raise :class:`~udfs.config.checker.ConfigError` naming the flag of a bad value."""
        if not isinstance(self.stamp_size, int) or not 4 <= self.stamp_size <= 1024:
            raise ConfigError(f"--stamp-size: {self.stamp_size!r} is not an integer in [4, 1024]")
        problem = check_bands(self.bands, COADD_BANDS)
        if problem:
            raise ConfigError(f"--bands: {problem}")
        if not 0.0 <= self.min_good_frac <= 1.0:
            raise ConfigError(f"--min-good-frac: {self.min_good_frac!r} is not in [0, 1]")
        if self.layout not in ("nested", "flat"):
            raise ConfigError(f"--layout: {self.layout!r} is not 'nested' or 'flat'")
        if self.retries < 0:
            raise ConfigError(f"--retries: {self.retries!r} must be >= 0")
        if self.backoff_s < 0:
            raise ConfigError(f"backoff_s: {self.backoff_s!r} must be >= 0")
        if not isinstance(self.max_remote_requests, int) or not 1 <= self.max_remote_requests <= MAX_REQUESTS:
            raise ConfigError(f"--max-remote-requests: {self.max_remote_requests!r} is not an integer "
                              f"in [1, {MAX_REQUESTS}]")
        self.psf.validate()
        return self

    def as_dict(self) -> dict:
        """The settings recorded in the config hash and the files' metadata: all but
        ``max_remote_requests``, which only paces the reads (any limit writes the same bytes)."""
        out = asdict(self)
        del out["max_remote_requests"]
        return out

    def retry_policy(self) -> RetryPolicy:
        """The retry policy of this job's remote reads."""
        return RetryPolicy(retries=self.retries, base_s=self.backoff_s)
