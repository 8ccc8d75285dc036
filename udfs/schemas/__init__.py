"""One Arrow schema per dataset (types, units, metadata), shared by its writer, readers, QA and tests."""
