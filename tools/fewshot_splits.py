"""Add seeded N-shot and fraction splits of a datalist key to the datalist file.

python tools/fewshot_splits.py data_lists/multiorgan_ct.json --shots "[1,2]" --seeds "[0,1,2]"
python tools/fewshot_splits.py my_list.json --fractions "[0.1,0.5]"
"""

import fire

from common.data.datalists import add_fewshot_keys


def main(datalist: str, key: str = "training", shots=(), fractions=(), seeds=(0,)) -> None:
    for written in add_fewshot_keys(datalist, key, tuple(shots), tuple(fractions), tuple(seeds)):
        print(written)


if __name__ == "__main__":
    fire.Fire(main)
