"""The study runner's CLI (same as ``python -m common.study``): run or report a study file.

python tools/study.py run tools/studies/benchmark_small.json --jobs 2
python tools/study.py run tools/studies/ssl_transfer.json --dry_run
python tools/study.py report tools/studies/benchmark_small.json
"""

from common.study.__main__ import main

if __name__ == "__main__":
    main()
