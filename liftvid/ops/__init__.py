"""Kernels: pure torch/NumPy on arrays — label propagation, point tracking, DAVIS and TAP-Vid metrics, grid geometry. They know no file, store, scheduler or terminal."""
