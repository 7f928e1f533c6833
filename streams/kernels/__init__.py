"""Pure Numba kernels over NumPy arrays: no I/O, no Python objects, tested against independent oracles."""
