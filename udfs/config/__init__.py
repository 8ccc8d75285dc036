"""YAML configs: the one checker, each config's typed loader, provenance hashes."""
