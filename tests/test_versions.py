"""The package versions recorded with every vector and result."""

from caa_lens.provenance import make_provenance
from caa_lens.versions import package_versions


def test_package_versions_names_the_packages_a_result_depends_on():
    versions = package_versions()
    assert set(versions) == {"caa-lens", "transformer-lens", "torch", "transformers"}
    assert all(isinstance(v, str) and v for v in versions.values())
    assert versions["caa-lens"] != "unknown"  # installed (editable) with the project


def test_provenance_records_the_package_versions(tiny):
    import torch

    provenance = make_provenance(tiny, "resid_post", "answer", "m", "d", "0", 1, torch.float32)
    assert provenance.versions == package_versions()
