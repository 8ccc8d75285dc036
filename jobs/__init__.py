"""Spark entry points, one per pipeline stage (thin: read, call udfs, write)."""
