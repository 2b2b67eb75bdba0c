"""The public path of the sampling loop (DESIGN.md): `from difftune.sampling import sample`."""

from difftune.core.sampling import sample

__all__ = ["sample"]
