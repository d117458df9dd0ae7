"""The clean control of the cpu_memorise study: CE trained on the clean labels (noise none), otherwise the grid's
cell of the same seed to the letter, so the report can tell the drop that noise causes from any drop of CE on
clean labels. Writes the cells beside the grid's (the report reads every run of the folder).

    python reports/evidence/cpu_memorise/clean_ce.py SEED [SEED ...]     # one process per seed, 1 torch thread each
"""
import dataclasses
import sys

import torch

from ferlib.experiment import run
from ferlib.study.spec import load_profile

RUNS = "reports/evidence/cpu_memorise/runs"

if __name__ == "__main__":
    torch.set_num_threads(1)  # as the study's --workers 2 cells on 2 cores
    seeds = {int(s) for s in sys.argv[1:]}
    for kind, cell in load_profile("cpu_memorise").cells(RUNS):
        if kind == "grid" and cell.method == "ce" and cell.noise == "symmetric:0.3" and cell.train.seed in seeds:
            print(run(dataclasses.replace(cell, noise="none"))["run_id"], flush=True)
