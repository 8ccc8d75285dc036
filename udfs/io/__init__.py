"""Storage: local and s3:// files, HTTP byte ranges, the pinned sample data."""
