"""Datalist generators on tiny trees in the published layouts of BTCV, MSD, AMOS, FLARE22, AbdomenAtlas
1.1, TotalSegmentator, CheXpert, ChestX-ray14, VinDr-CXR and MIMIC-CXR, built from the embedded real images
(TotalSegmentator's test subject and its segmentation; pydicom-data's chest radiograph); three of them are
trained on through a bundle."""

import csv
import importlib.util
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from common import bundle_checks as bc
from common.bundle import REPO_ROOT
from common.data import load_datalist
from common.data.fetch import fetch
from common.data.labels import MULTIORGAN_CT_CLASSES, totalsegmentator_label_map
from common.data.layouts import LAYOUTS, make_datalist
from common.data.layouts.btcv import BTCV_LABELS
from common.data.layouts.chexpert import CHEXPERT_FINDINGS
from common.data.layouts.classes import canonical
from common.data.layouts.flare22 import FLARE22_LABELS
from common.data.partial_labels import ABDOMENATLAS_CLASSES, SUPREM_CLASSES, apply_id_map, unified_id_map
from common.data.sources import SOURCES

BUNDLES = REPO_ROOT / "bundles"
TS_REF = "tests/reference_files"


@pytest.fixture(scope="module")
def subject():
    """TotalSegmentator's test subject A: (CT file, segmentation array, affine, {TS id: structure})."""
    ts = fetch(SOURCES["totalsegmentator"])
    seg = nib.load(ts / TS_REF / "example_seg.nii.gz")
    names = totalsegmentator_label_map(ts / "totalsegmentator/map_to_binary.py")
    return ts / TS_REF / "example_ct_sm.nii.gz", np.asanyarray(seg.dataobj), seg.affine, names


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    """pydicom-data's real chest radiograph: (its DICOM file, an 8-bit grey JPEG of it)."""
    dicom = fetch(SOURCES["pydicom_data"]) / "data_store/data/RG1_UNCR.dcm"
    from common.data import dataset_dir

    pixels = np.asanyarray(nib.load(dataset_dir() / "radiographs_real/real_pydicom_RG1_chest.nii.gz").dataobj)
    scaled = (255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
    jpg = tmp_path_factory.mktemp("radiograph") / "chest.jpg"
    Image.fromarray(scaled.T).save(jpg)
    return dicom, jpg


def trains(bundle, datalist, root, work, **overrides):
    """The generator's datalist starts the bundle's training (one smoke epoch through MONAI's ConfigWorkflow,
    the bundle's own datalist checks included) and a checkpoint is written."""
    ckpt = bc.train_smoke(
        BUNDLES / bundle, work, datalist_file=str(datalist), dataset_dir=str(root), **overrides
    )
    assert ckpt.is_file()


def link(path, target):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def dataset_label(subject, own_labels, out):
    """Subject A's segmentation in a dataset's own ids (``{id: name}``), written to ``out``."""
    _, seg, affine, ts_names = subject
    classes = ["background", *(canonical(own_labels[i]) for i in sorted(own_labels))]
    id_map, _ = unified_id_map(ts_names, classes, {})
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(apply_id_map(seg, id_map), affine), out)
    return out


def write_csv(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


def test_registry_has_every_layout_and_rejects_unknown_ones(tmp_path):
    assert set(LAYOUTS) == {
        "msd",
        "btcv",
        "amos",
        "abdomenatlas",
        "totalsegmentator",
        "flare22",
        "chexpert",
        "chestxray14",
        "vindr_cxr",
        "mimic_cxr",
    }
    with pytest.raises(KeyError, match="unknown dataset layout 'kits'"):
        make_datalist("kits", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset_0.json|RawData"):
        make_datalist("btcv", tmp_path)


def btcv_tree(root, subject):
    """research-contributions' dataset_0.json layout: 24 training and 6 validation pairs, 2 test images."""
    label = dataset_label(subject, BTCV_LABELS, root / "label_source.nii.gz")
    abbreviations = ["spleen", "rkid", "lkid", "gall", "eso", "liver", "sto", "aorta", "IVC", "veins"]
    labels = {
        "0": "background",
        **{str(i + 1): n for i, n in enumerate([*abbreviations, "pancreas", "rad", "lad"])},
    }
    cases = [*range(1, 11), *range(21, 41)]
    pairs = []
    for n in cases:
        link(root / f"imagesTr/img{n:04d}.nii.gz", subject[0])
        link(root / f"labelsTr/label{n:04d}.nii.gz", label)
        pairs.append({"image": f"imagesTr/img{n:04d}.nii.gz", "label": f"labelsTr/label{n:04d}.nii.gz"})
    test = [f"imagesTs/img{n:04d}.nii.gz" for n in (61, 62)]
    for t in test:
        link(root / t, subject[0])
    meta = {
        "description": "btcv yucheng",
        "labels": labels,
        "licence": "yt",
        "modality": {"0": "CT"},
        "name": "btcv",
        "numTest": 20,
        "numTraining": 80,
        "reference": "Vanderbilt University",
        "release": "1.0 06/08/2015",
        "tensorImageSize": "3D",
        "test": test,
        "training": pairs[:24],
        "validation": pairs[24:],
    }
    (root / "dataset_0.json").write_text(json.dumps(meta))


def test_btcv_dataset_json_maps_onto_multiorgan_ct_and_trains(subject, prepared_data, tmp_path):
    root = tmp_path / "BTCV"
    btcv_tree(root, subject)
    out = tmp_path / "btcv.json"
    data = make_datalist("btcv", root, out, target="multiorgan_ct")
    assert json.loads(out.read_text()) == data
    assert [len(data[k]) for k in ("training", "validation", "test")] == [24, 6, 2]
    assert data["validation"][0]["subject"] == "img0035"
    assert data["labels"]["1"] == "liver" and len(data["labels"]) == 27
    assert data["dataset_labels"]["2"] == "rkid"
    # BTCV annotates liver, spleen, stomach, pancreas, aorta, IVC, portal/splenic vein, right adrenal
    assert set(data["sources"]["btcv"]["annotated"]) == set(MULTIORGAN_CT_CLASSES[1:9])
    label = np.asanyarray(nib.load(root / data["training"][0]["label"]).dataobj)
    reference = np.asanyarray(nib.load(prepared_data / "ct_multiorgan/totalseg_A_label.nii.gz").dataobj)
    for index in range(1, 9):  # the annotated classes land where the project's own remapping puts them
        assert np.array_equal(label == index, reference == index), MULTIORGAN_CT_CLASSES[index]
    assert not label[reference > 8].any()
    ckpt = bc.train_smoke(
        BUNDLES / "multiorgan_ct_segmentation",
        tmp_path / "run",
        datalist_file=str(out),
        dataset_dir=str(root),
    )
    assert ckpt.is_file()


def test_btcv_rawdata_gets_the_dataset_0_validation_cases(subject, tmp_path):
    root = tmp_path / "btcv_raw"
    label = dataset_label(subject, BTCV_LABELS, tmp_path / "label.nii.gz")
    for n in (1, 2, 35, 40):
        link(root / f"RawData/Training/img/img{n:04d}.nii.gz", subject[0])
        link(root / f"RawData/Training/label/label{n:04d}.nii.gz", label)
    link(root / "RawData/Testing/img/img0061.nii.gz", subject[0])
    data = make_datalist("btcv", root)
    assert [i["subject"] for i in data["validation"]] == ["img0035", "img0040"]
    assert data["training"][0] == {
        "image": "RawData/Training/img/img0001.nii.gz",
        "label": "RawData/Training/label/label0001.nii.gz",
        "subject": "img0001",
    }
    assert data["test"] == [{"image": "RawData/Testing/img/img0061.nii.gz"}]
    assert data["labels"]["0"] == "background" and data["labels"]["13"] == "left adrenal gland"
    (root / "RawData/Training/label/label0040.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="label0040.nii.gz"):
        make_datalist("btcv", root)


def test_msd_keeps_4d_brats_channels_and_holds_out_validation(subject, tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    ct = nib.load(subject[0])
    four_d = nib.Nifti1Image(np.stack([np.asanyarray(ct.dataobj)] * 4, axis=-1), ct.affine)
    training = []
    for n in range(5):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        nib.save(four_d, root / f"imagesTr/BRATS_{n:03d}.nii.gz")
        link(
            root / f"labelsTr/BRATS_{n:03d}.nii.gz",
            dataset_label(subject, {1: "liver"}, tmp_path / "l.nii.gz"),
        )
        training.append(
            {"image": f"./imagesTr/BRATS_{n:03d}.nii.gz", "label": f"./labelsTr/BRATS_{n:03d}.nii.gz"}
        )
    link(root / "imagesTs/BRATS_485.nii.gz", root / "imagesTr/BRATS_000.nii.gz")
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    meta = {"name": "BRATS", "description": "Gliomas", "labels": labels, "modality": modality}
    meta |= {"numTraining": 5, "numTest": 1, "training": training, "test": ["./imagesTs/BRATS_485.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    data = make_datalist("msd", root, tmp_path / "msd.json", val_fraction=0.2, seed=1)
    assert (len(data["training"]), len(data["validation"])) == (4, 1)
    assert data["modality"] == modality and data["labels"] == labels
    assert data["test"] == [{"image": "imagesTs/BRATS_485.nii.gz"}]
    assert nib.load(root / data["training"][0]["image"]).shape[-1] == 4
    assert data["class_maps"]["suprem_ct"]["annotated"] == []  # brain tumour classes: none of SuPreM's
    assert make_datalist("msd", root, val_fraction=0.2, seed=1) == data  # seeded
    trains(
        "multiorgan_ct_segmentation",
        tmp_path / "msd.json",
        root,
        tmp_path / "run",
        in_channels=4,
        num_classes=4,
    )
    meta["numTraining"] = 6
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="numTraining is 6"):
        make_datalist("msd", root)


def test_amos_splits_ct_from_mri_by_case_id(subject, tmp_path):
    root = tmp_path / "amos22"
    names = [
        "spleen",
        "right kidney",
        "left kidney",
        "gall bladder",
        "esophagus",
        "liver",
        "stomach",
        "arota",
    ]
    names += ["postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder"]
    labels = {"0": "background", **{str(i + 1): n for i, n in enumerate([*names, "prostate/uterus"])}}
    label = dataset_label(subject, {int(k): v for k, v in labels.items() if k != "0"}, tmp_path / "l.nii.gz")
    meta = {"name": "AMOS", "labels": labels, "modality": {"0": "CT"}, "training": [], "validation": []}
    # two CT training cases: suprem_pretrain's smoke run trains on the second (its sources mix)
    for key, folder, ids in (("training", "Tr", (1, 2, 507)), ("validation", "Va", (8,))):
        for n in ids:
            link(root / f"images{folder}/amos_{n:04d}.nii.gz", subject[0])
            link(root / f"labels{folder}/amos_{n:04d}.nii.gz", label)
            meta[key].append(
                {
                    "image": f"./images{folder}/amos_{n:04d}.nii.gz",
                    "label": f"./labels{folder}/amos_{n:04d}.nii.gz",
                }
            )
    (root / "dataset.json").write_text(json.dumps(meta))
    data = make_datalist("amos", root, tmp_path / "amos.json", target="suprem_ct")
    assert [i["subject"] for i in data["training"]] == ["amos_0001", "amos_0002"]
    assert data["validation"][0]["label"] == "medfm_labels/amos22_suprem_ct/amos_0008.nii.gz"
    assert [i["modality"] for i in make_datalist("amos", root, modality="all")["training"]] == [
        "CT",
        "CT",
        "MRI",
    ]
    annotated = data["sources"]["amos22"]["annotated"]
    assert "duodenum" in annotated and "aorta" in annotated and "prostate" not in annotated
    trains("suprem_pretrain", tmp_path / "amos.json", root, tmp_path / "run")


def test_flare22_labels_map_by_name(subject, tmp_path):
    root = tmp_path / "FLARE22_LabeledCase50"
    label = dataset_label(subject, FLARE22_LABELS, tmp_path / "l.nii.gz")
    for n in range(1, 6):
        link(root / f"images/FLARE22_Tr_{n:04d}_0000.nii.gz", subject[0])
        link(root / f"labels/FLARE22_Tr_{n:04d}.nii.gz", label)
    data = make_datalist("flare22", root, tmp_path / "flare22.json", target="multiorgan_ct")
    assert (len(data["training"]), len(data["validation"])) == (4, 1)
    assert data["class_maps"]["multiorgan_ct"]["id_map"]["1"] == MULTIORGAN_CT_CLASSES.index("liver")
    assert data["class_maps"]["suprem_ct"]["id_map"]["6"] == SUPREM_CLASSES.index("postcava")
    trains("multiorgan_ct_segmentation", tmp_path / "flare22.json", root, tmp_path / "run")


def abdomenatlas_tree(root, subject):
    """BDMAP_*/ct.nii.gz and segmentations/<organ>.nii.gz for AbdomenAtlas 1.1's 25 organs."""
    _, seg, affine, ts_names = subject
    id_map, _ = unified_id_map(ts_names, ABDOMENATLAS_CLASSES)
    unified = apply_id_map(seg, id_map)
    for case in ("BDMAP_00000001", "BDMAP_00000002", "BDMAP_00000003"):
        link(root / case / "ct.nii.gz", subject[0])
        (root / case / "segmentations").mkdir()
        for index, organ in enumerate(ABDOMENATLAS_CLASSES[1:], start=1):
            mask = nib.Nifti1Image((unified == index).astype(np.uint8), affine)
            nib.save(mask, root / case / "segmentations" / f"{organ}.nii.gz")
    return unified


def test_abdomenatlas_masks_merge_into_suprem_classes_and_train(subject, prepared_data, tmp_path):
    root = tmp_path / "AbdomenAtlas1.1"
    unified = abdomenatlas_tree(root, subject)
    out = tmp_path / "atlas.json"
    data = make_datalist("abdomenatlas", root, out, target="suprem_ct", val_fraction=0.34)
    assert (len(data["training"]), len(data["validation"])) == (2, 1)
    assert data["sources"]["abdomenatlas"]["annotated"] == list(ABDOMENATLAS_CLASSES[1:])
    assert all(i["source"] == "abdomenatlas" for i in data["training"])
    merged = np.asanyarray(nib.load(root / data["training"][0]["label"]).dataobj)
    assert np.array_equal(merged, unified)
    assert len(np.unique(merged)) > 10
    ckpt = bc.train_smoke(
        BUNDLES / "suprem_pretrain", tmp_path / "run", datalist_file=str(out), dataset_dir=str(root)
    )
    assert ckpt.is_file()


def test_totalsegmentator_meta_csv_split_and_lobes_merged(subject, tmp_path):
    root = tmp_path / "Totalsegmentator_dataset_v201"
    _, seg, affine, ts_names = subject
    rows = []
    # two training subjects: suprem_pretrain's smoke run trains on the second (its sources mix)
    for sid, split in (("s0000", "train"), ("s0001", "val"), ("s0002", "train")):
        link(root / sid / "ct.nii.gz", subject[0])
        (root / sid / "segmentations").mkdir()
        for ts_id, name in ts_names.items():
            nib.save(
                nib.Nifti1Image((seg == ts_id).astype(np.uint8), affine),
                root / sid / f"segmentations/{name}.nii.gz",
            )
        rows.append([sid, 60, "f", "A", "ct abdomen", split, "Siemens", "SOMATOM", 120, "no_pathology", ""])
    header = [
        "image_id",
        "age",
        "gender",
        "institute",
        "study_type",
        "split",
        "manufacturer",
        "scanner_model",
    ]
    write_csv(root / "meta.csv", [*header, "kvp", "pathology", "pathology_location"], rows, delimiter=";")
    data = make_datalist("totalsegmentator", root, tmp_path / "ts.json", target="suprem_ct")
    assert "v2" in data["description"] and len(data["dataset_labels"]) == len(ts_names) + 1 == 118
    assert [len(data[k]) for k in ("training", "validation", "test")] == [2, 1, 0]
    merged = np.asanyarray(nib.load(root / data["training"][0]["label"]).dataobj)
    lobes = np.isin(seg, [i for i, n in ts_names.items() if n.startswith("lung_") and n.endswith("_left")])
    assert lobes.any() and np.all(merged[lobes] == SUPREM_CLASSES.index("lung_left"))
    trains("suprem_pretrain", tmp_path / "ts.json", root, tmp_path / "run")
    own = make_datalist("totalsegmentator", root)  # no target: the dataset's own 117 ids
    relabelled = np.asanyarray(nib.load(root / own["training"][0]["label"]).dataobj)
    liver = [int(i) for i, n in own["labels"].items() if n == "liver"]
    assert np.array_equal(relabelled == liver[0], seg == next(i for i, n in ts_names.items() if n == "liver"))
    write_csv(root / "meta.csv", ["image_id", "split"], [["s0000", "training"]], delimiter=";")
    with pytest.raises(ValueError, match="column 'split' has values \\['training'\\]"):
        make_datalist("totalsegmentator", root)
    write_csv(root / "meta.csv", ["image_id", "split"], [["s0000", "train"]])  # comma, not ';'
    with pytest.raises(KeyError, match="meta.csv: missing column"):
        make_datalist("totalsegmentator", root)


def chexpert_tree(root, jpg):
    findings = list(CHEXPERT_FINDINGS)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *findings]
    # patient 1: Cardiomegaly positive, Edema uncertain, Fracture unmentioned; patient 2 lateral, no finding
    values = {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0", "Support Devices": "1.0"}
    rows = []
    for n in range(1, 9):
        view = ("Lateral", "") if n == 2 else ("Frontal", "PA")
        path = f"CheXpert-v1.0-small/train/patient{n:05d}/study1/view1_{view[0].lower()}.jpg"
        link(root.parent / path, jpg)
        row = (
            [values.get(f, "") for f in findings]
            if n != 2
            else ["1.0" if f == "No Finding" else "" for f in findings]
        )
        rows.append([path, "Female", 60, *view, *row])
    write_csv(root / "train.csv", header, rows)
    valid = "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    link(root.parent / valid, jpg)
    write_csv(root / "valid.csv", header, [[valid, "Male", 55, "Frontal", "AP", *["0.0"] * 14]])


def test_chexpert_uncertainty_policies_and_training(radiograph, prepared_data, tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    chexpert_tree(root, radiograph[1])
    edema, cardio = CHEXPERT_FINDINGS.index("Edema"), CHEXPERT_FINDINGS.index("Cardiomegaly")
    policies = {
        p: make_datalist("chexpert", root, uncertain=p)["training"][0] for p in ("ones", "zeros", "ignore")
    }
    assert [policies[p]["findings"][edema] for p in ("ones", "zeros", "ignore")] == [1, 0, 0]
    assert [policies[p]["findings_annotated"][edema] for p in ("ones", "zeros", "ignore")] == [1, 1, 0]
    assert all(policies[p]["findings"][cardio] == 1 for p in policies)
    assert policies["ones"]["image"] == "train/patient00001/study1/view1_frontal.jpg"
    assert len(make_datalist("chexpert", root, frontal_only=True)["training"]) == 7
    out = tmp_path / "chexpert.json"
    data = make_datalist("chexpert", root, out)
    assert data["finding_names"] == list(CHEXPERT_FINDINGS) and len(data["validation"]) == 1
    bundle = BUNDLES / "radiograph_classification"
    overrides = {"datalist_file": str(out), "dataset_dir": str(root), "multilabel": True}
    assert bc.train_smoke(bundle, tmp_path / "run", **overrides).is_file()
    with open(root / "valid.csv", "a") as f:
        f.write(
            f"CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,M,1,Frontal,AP,{'2,' * 13}2\n"
        )
    with pytest.raises(ValueError, match="valid.csv line 3: column 'No Finding' has '2'"):
        make_datalist("chexpert", root)


def test_chestxray14_official_split_and_patient_wise_validation(radiograph, tmp_path):
    root = tmp_path / "ChestXray14"
    rows, train_val = [], []
    for n, labels in enumerate(["Cardiomegaly|Effusion", "No Finding", "Hernia", "Mass", "No Finding"]):
        name = f"0000000{n}_000.png"
        link(root / f"images_00{1 + n % 2}/images/{name}", radiograph[1])
        rows.append([name, labels, 0, n, 50, "M", "PA", 2500, 2048, 0.14, 0.14, ""])
        (train_val if n < 4 else []).append(name)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender"]
    header += ["View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
    write_csv(root / "Data_Entry_2017.csv", header, rows)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("00000004_000.png\n")
    data = make_datalist("chestxray14", root, tmp_path / "nih.json", val_fraction=0.25)
    assert (len(data["training"]), len(data["validation"]), len(data["test"])) == (3, 1, 1)
    first = next(i for i in data["training"] + data["validation"] if i["subject"] == "0")
    assert first["image"] == "images_001/images/00000000_000.png"
    assert [data["finding_names"][k] for k, v in enumerate(first["findings"]) if v] == [
        "Cardiomegaly",
        "Effusion",
    ]
    assert sum(data["test"][0]["findings"]) == 0
    trains("radiograph_classification", tmp_path / "nih.json", root, tmp_path / "run", multilabel=True)


def test_vindr_cxr_merges_three_readers_by_majority(radiograph, tmp_path):
    root = tmp_path / "vindr-cxr"
    names = ["Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "No finding"]
    votes = [("R8", [1, 1, 0, 0]), ("R9", [1, 0, 0, 0]), ("R10", [0, 0, 1, 0])]
    write_csv(
        root / "image_labels_train.csv", ["image_id", "rad_id", *names], [["abc", r, *v] for r, v in votes]
    )
    write_csv(root / "image_labels_test.csv", ["image_id", *names], [["xyz", 0, 0, 0, 1]])
    link(root / "train/abc.dicom", radiograph[0])
    link(root / "test/xyz.dicom", radiograph[0])
    out = tmp_path / "vindr.json"
    data = make_datalist("vindr_cxr", root, out, val_fraction=0)
    assert data["training"] == [
        {
            "image": "medfm_images/train/abc.nii.gz",
            "dicom": "train/abc.dicom",
            "subject": "abc",
            "findings": [1, 0, 0, 0],
        }
    ]
    # the converted DICOM is the 2D image the radiograph bundles' datalist check accepts
    assert load_datalist(out, "training", root, spatial_dims=2, label_key="")[0]["image"].endswith(
        "abc.nii.gz"
    )
    any_reader = make_datalist("vindr_cxr", root, merge="any", val_fraction=0, convert=False)["training"][0]
    assert any_reader["findings"] == [1, 1, 1, 0] and any_reader["image"] == "train/abc.dicom"
    assert data["test"][0]["findings"] == [0, 0, 0, 1] and data["finding_names"] == names
    trains("radiograph_classification", out, root, tmp_path / "run", multilabel=True, val_datalist_key="test")


def test_mimic_cxr_joins_split_metadata_and_labeller(radiograph, tmp_path):
    root = tmp_path / "mimic-cxr-jpg/2.0.0"
    studies = [
        ("10000032", "50414267", "d1", "PA", "train"),
        ("10000032", "50414267", "d2", "LATERAL", "train"),
    ]
    studies += [("11000011", "51000001", "d3", "AP", "test")]
    for subject, study, dicom, _, _ in studies:
        link(root / f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", radiograph[1])
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [[s[2], s[1], s[0], s[4]] for s in studies],
    )
    write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        [[s[2], s[0], s[1], s[3]] for s in studies],
    )
    labels = {"Edema": "-1.0", "Pneumonia": "1.0"}
    header = ["subject_id", "study_id", *CHEXPERT_FINDINGS]
    write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        header,
        [
            ["10000032", "50414267", *(labels.get(f, "") for f in CHEXPERT_FINDINGS)],
            ["11000011", "51000001", *[""] * 14],
        ],
    )
    data = make_datalist("mimic_cxr", root, tmp_path / "mimic.json", uncertain="zeros")
    assert [i["image"] for i in data["training"]] == [
        "files/p10/p10000032/s50414267/d1.jpg"
    ]  # lateral left out
    assert data["training"][0]["findings"][CHEXPERT_FINDINGS.index("Edema")] == 0
    assert data["training"][0]["findings"][CHEXPERT_FINDINGS.index("Pneumonia")] == 1
    assert len(data["test"]) == 1 and data["validation"] == []
    overrides = {"multilabel": True, "val_datalist_key": "test"}
    trains("radiograph_classification", tmp_path / "mimic.json", root, tmp_path / "run", **overrides)
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-negbio.csv"):
        make_datalist("mimic_cxr", root, labeller="negbio")


def test_cli_writes_the_datalist_and_names_the_missing_file(radiograph, tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    chexpert_tree(root, radiograph[1])
    out = tmp_path / "lists" / "cx.json"
    tool = REPO_ROOT / "tools" / "make_datalist.py"
    args = ["chexpert", "--root", str(root), "--out", str(out), "--uncertain", "zeros"]
    done = subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["uncertain_policy"] == "zeros"
    spec = importlib.util.spec_from_file_location("make_datalist", tool)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (root / "valid.csv").unlink()
    with pytest.raises(SystemExit, match="make_datalist chexpert: CSV file not found: .*valid.csv"):
        cli.main("chexpert", str(root), str(out))
