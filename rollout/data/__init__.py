"""Datasets: the record format (DESIGN 2.1), a validating reader, the synthetic "shapes" generator
and the importer of the public STGR annotations. Nothing heavy is imported here."""
