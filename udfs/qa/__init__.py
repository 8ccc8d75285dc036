"""Stage 6: per-stamp checks, shortcut gates, completeness, real-lens recall, pictures."""
