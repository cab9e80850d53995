"""Training data: per-atom features, permutations, the Zarr-sharded dataset."""
