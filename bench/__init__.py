"""Benchmarks of the features and head stages (`make bench`; see docs/performance.md).

`bench.run` is the CPU suite and `bench.gpu` the same suite for a GPU
machine under the JAX (or PyTorch) backend with TensorFlow absent; helpers
shared by them live in `bench.common`. Nothing here is part of the
`pipeline` package and nothing in `pipeline/` imports it.
"""
