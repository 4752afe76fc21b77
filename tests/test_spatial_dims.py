"""EnsureSpatialDimsd: an image of the wrong dimensionality is named before a transform fails on its axes."""

import nibabel as nib
import numpy as np
import pytest
from starlette.exceptions import HTTPException

from common.transforms import EnsureSpatialDimsd, SpatialDimsError, segmentation_transforms


@pytest.fixture
def images(tmp_path):
    """A 2D and a 3D NIfTI file."""
    paths = {}
    for dims, shape in ((2, (12, 10)), (3, (12, 10, 8))):
        paths[dims] = tmp_path / f"image{dims}d.nii.gz"
        nib.save(
            nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), np.eye(4)), paths[dims]
        )
    return paths


@pytest.mark.parametrize(("found", "expected"), [(2, 3), (3, 2)])
def test_inference_pipeline_names_the_file_and_both_dimensionalities(images, found, expected):
    pipeline = segmentation_transforms("infer", spatial_dims=expected, intensity="minmax")
    with pytest.raises(SpatialDimsError) as caught:
        pipeline.transforms[1](pipeline.transforms[0]({"image": str(images[found])}))
    message = str(caught.value)
    assert message.startswith(f"{images[found]}: a {found}D image")
    assert f"expects {expected}D images (spatial_dims={expected})" in message
    assert isinstance(caught.value, ValueError)
    # a Starlette server (MONAI Label) answers it with status 422 and the message
    assert isinstance(caught.value, HTTPException)
    assert (caught.value.status_code, caught.value.detail) == (422, message)


@pytest.mark.parametrize("dims", [2, 3])
def test_matching_image_passes_the_whole_pipeline(images, dims):
    out = segmentation_transforms("infer", spatial_dims=dims, intensity="minmax")(
        {"image": str(images[dims])}
    )
    assert out["image"].ndim == dims + 1


def test_spatial_dims_must_be_2_or_3():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        EnsureSpatialDimsd("image", spatial_dims=4)
