"""edgeq's runtime: load a bundle and run it (numpy, numba and cffi only; no converter imports)."""
