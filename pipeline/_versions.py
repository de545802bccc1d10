"""Library versions recorded with every artifact, read without importing the libraries.

Package metadata answers without importing, so recording the Keras or
TensorFlow version never loads them (a no-op features run and the
scikit-learn heads stay free of both).
"""

from __future__ import annotations

import importlib.metadata
import platform

__all__ = ["DISTRIBUTION", "RUNTIME_PACKAGES", "library_versions", "package_version"]

# This project's distribution is `bottleneck-features`: the name `bottleneck`
# belongs to the NumPy reductions library pandas uses.
DISTRIBUTION = "bottleneck-features"
RUNTIME_PACKAGES = (
    DISTRIBUTION, "keras", "numpy", "h5py", "pillow", "scikit-learn", "tensorflow", "tensorflow-cpu", "jax", "torch",
)


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or `None` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(packages=RUNTIME_PACKAGES) -> dict[str, str]:
    """`{"python": ..., package: version}` for each of `packages` that is installed."""
    versions = {"python": platform.python_version()}
    for name in packages:
        version = package_version(name)
        if version is not None:
            versions[name] = version
    return versions
