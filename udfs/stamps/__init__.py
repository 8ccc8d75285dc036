"""Stages 3 and 5: the injection manifest, the stamp transform, stamp pixels and FITS I/O."""
