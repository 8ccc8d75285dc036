"""Lensing core: SIE+shear deflection, the ray-shooting renderer, arc noise and metrics."""
