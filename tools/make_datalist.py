"""Write a Decathlon datalist for a public dataset in its published directory layout.

python tools/make_datalist.py btcv --root /data/BTCV --out data_lists/btcv.json --target multiorgan_ct
python tools/make_datalist.py abdomenatlas --root /data/AbdomenAtlas1.1 --target suprem_ct
python tools/make_datalist.py chexpert --root /data/CheXpert-v1.0-small --uncertain zeros

Layouts and their options: ``common.data.layouts.LAYOUTS``. The datalist's paths are relative to ``--root``:
train a bundle with ``--dataset_dir <root> --datalist_file <out>``. A missing or malformed file, column or
key ends the run with a message naming it.
"""

import fire

from common.data.layouts import LAYOUTS, make_datalist


def main(dataset: str, root: str, out: str | None = None, **options) -> None:
    """Generate the datalist of ``dataset`` (one of ``LAYOUTS``) under ``root``; print the split sizes."""
    out = out or f"data_lists/{dataset}.json"
    try:
        data = make_datalist(dataset, root, out, **options)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        raise SystemExit(f"make_datalist {dataset}: {err}") from err
    sizes = {
        k: len(v) for k, v in data.items() if isinstance(v, list) and k in ("training", "validation", "test")
    }
    print(f"{out}: {sizes} (layouts: {sorted(LAYOUTS)})")


if __name__ == "__main__":
    fire.Fire(main)
