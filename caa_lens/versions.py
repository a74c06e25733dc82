"""The versions of the packages a result depends on, recorded with every saved vector and result.

One place, so a vector's provenance, a job's manifest and a report record the same packages the same way.
"""

from importlib import metadata

__all__ = ["package_versions"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def package_versions() -> dict[str, str]:
    """The installed versions of caa-lens, transformer-lens, torch and transformers ("unknown" if absent)."""
    return {p: _version(p) for p in ("caa-lens", "transformer-lens", "torch", "transformers")}
