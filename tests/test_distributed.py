"""One run on several processes (:mod:`ferlib.distributed`), on CPU with gloo: two processes training on the
shards of a global batch give what one process gives with that batch, to float tolerance: the weights, the
loss history and the per-sample read-outs, on every process, for ce, elr (per-sample targets), scn (rank groups,
relabelling), nla (the batch-coupled pairwise NAW form) and lanet (neighbour graph, queues); an interrupted
two-process run resumes exactly; ``torchrun -m ferlib train`` gives the one-process run; a global batch that does not split over the processes, or a method that does not declare
``multi_process``, is refused naming it.

The model is a tiny timm ResNet with GroupNorm: SyncBatchNorm needs CUDA, and with BatchNorm each CPU process
would normalise with its own shard's statistics, which is not the one-process computation.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from ferlib import distributed, engine
from ferlib.backbones import BackboneConfig, create_model
from ferlib.cli import main
from ferlib.engine import TrainConfig, check_processes, fit
from ferlib.methods import create_method, method_class
from ferlib.rundir import RunDir

from stubs import synthetic

pytestmark = pytest.mark.distributed

PROCESSES = 2
N_TRAIN = 48
TINY = {"channels": [8, 16, 32, 64], "stem_width": 8, "norm_layer": "groupnorm1"}
METHODS = {"ce": {}, "elr": {}, "scn": {"relabel_epoch": 1, "margin_2": 0.05}, "nla": {"naw_form": "pairwise"},
           "lanet": {"banksize": 40}}
RTOL, ATOL = 1e-5, 1e-5  # float32 rounding of batch 8 vs 16 kernels, grown over 6 steps


def _train(name: str, root: Path, out: Path, **train):
    """Two epochs of ``name`` (3 steps of the global batch 16 each) on the synthetic set; (model, method)."""
    data = synthetic(n_train=N_TRAIN, n_eval=16)
    torch.manual_seed(0)
    model = create_model(BackboneConfig(model_kwargs=TINY), data.num_classes)
    options = {**METHODS[name], **({"landmarks": str(root / "landmarks.npy")} if name == "lanet" else {})}
    method = create_method(name, num_classes=data.num_classes, num_train=N_TRAIN, feature_dim=model.feature_dim,
                           **options)
    cfg = TrainConfig(**{**dict(epochs=2, batch_size=16, image_size=32, optimizer="sgd", lr=0.01, amp=False,
                                progress=False, device="cpu", eval_batch_size=64), **train})
    fit(model, method, data, cfg, RunDir(out))
    return model, method


def _interrupted(root: Path, out: Path) -> None:
    """LA-Net's two-process run, crashed at the start of its second epoch (every process), then resumed."""
    real, calls = engine.train_one_epoch, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    engine.train_one_epoch = crash_in_second_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            _train("lanet", root, out)
    finally:
        engine.train_one_epoch = real
    _train("lanet", root, out)


def _worker(rank: int, port: int, root: Path) -> None:
    os.environ.update(WORLD_SIZE=str(PROCESSES), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for name in METHODS:
        model, method = _train(name, root, root / "two" / name)
        state = {f"weight.{k}": v.numpy() for k, v in model.state_dict().items()}
        np.savez(root / f"rank{rank}-{name}.npz", **method.readout().arrays(), **state)
    _interrupted(root, root / "resumed")
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=15 .* divisible by the number of processes \(2"):
        _train("ce", root, root / "odd", batch_size=15)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Each method trained in this process (``one/``) and in two spawned processes (``two/``, plus each
    process's read-out and weights in ``rank<r>-<method>.npz``), and the interrupted run (``resumed/``)."""
    root = tmp_path_factory.mktemp("distributed")
    points = np.random.default_rng(1).uniform(0.2, 0.8, (N_TRAIN, 5, 2)).astype(np.float32)
    points[3] = np.nan
    np.save(root / "landmarks.npy", points)
    for name in METHODS:
        _train(name, root, root / "one" / name)
    mp.spawn(_worker, args=(_free_port(), root), nprocs=PROCESSES, join=True)
    return root


def _assert_close(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key], np.float64), np.asarray(b[key], np.float64), rtol=RTOL,
                                   atol=ATOL, err_msg=key)


@pytest.mark.parametrize("name", METHODS)
def test_two_processes_train_as_one_process_with_the_global_batch(runs, name):
    one, two = runs / "one" / name, runs / "two" / name
    _assert_close(torch.load(one / "model.pt"), torch.load(two / "model.pt"))
    history = [pd.read_csv(d / "epochs.csv") for d in (one, two)]
    columns = [c for c in history[0] if c.startswith(("train_", "valid_acc", "test_acc"))]
    _assert_close({c: history[0][c] for c in columns}, {c: history[1][c] for c in columns})
    readouts = [np.load(d / "readout.npz") for d in (one, two)]
    methods = [{k: r[k] for k in r.files if k.startswith("method_")} for r in readouts]
    _assert_close(*methods)
    assert np.isfinite(methods[1]["method_score"]).any()
    assert json.loads((two / "config.json").read_text())["processes"] == PROCESSES


@pytest.mark.parametrize("name", METHODS)
def test_every_process_holds_the_same_weights_and_per_sample_state(runs, name):
    ranks = [np.load(runs / f"rank{r}-{name}.npz") for r in range(PROCESSES)]
    for key in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


def test_an_interrupted_two_process_run_resumes_exactly(runs):
    full, resumed = torch.load(runs / "two" / "lanet" / "model.pt"), torch.load(runs / "resumed" / "model.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (runs / "resumed" / "epochs.csv").read_text().count("\n") == 3


def test_torchrun_trains_through_the_cli_as_one_process_does(small_ferplus, tmp_path, monkeypatch):
    monkeypatch.setenv("FERLIB_CACHE", str(tmp_path / "cache"))
    args = ["train", "--data", str(small_ferplus), "--method", "scn", "--epochs", "2", "--batch-size", "16",
            "--image-size", "32", "--device", "cpu", "--optimizer", "sgd", "--lr", "0.01", "--no-progress",
            "--no-amp", *[arg for kv in TINY.items() for arg in ("--backbone-opt", "%s=%s" % kv)]]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
                "--master_port", str(_free_port()), "-m", "ferlib"]
    done = subprocess.run(torchrun + args + ["--out", str(tmp_path / "two")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    (one, two) = [next((tmp_path / out).glob("*/result.json")).parent for out in ("one", "two")]
    assert one.name == two.name and json.loads((two / "config.json").read_text())["processes"] == PROCESSES
    _assert_close(torch.load(one / "model.pt"), torch.load(two / "model.pt"))
    assert (tmp_path / "two" / "results.csv").is_file() and not (two / ".lock").exists()


LEAVE = """
import atexit, sys
from ferlib import distributed
assert distributed.world() == 2
atexit.register(lambda: print("exit handlers ran, rank", distributed.rank()))
print("unflushed", end="")
distributed.leave(3)
"""


def test_a_worker_leaves_with_its_code_after_the_exit_handlers_and_one_process_raises_system_exit():
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", LEAVE], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r),
                                   "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [3, 3]
    assert outs == [f"unflushedexit handlers ran, rank {r}\n" for r in range(2)]
    with pytest.raises(SystemExit) as leaving:
        distributed.leave(4)
    assert leaving.value.code == 4


def test_a_batch_that_does_not_split_or_a_method_not_declared_multi_process_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: 4)
    check_processes(TrainConfig(batch_size=64), method_class("lanet"))
    with pytest.raises(ValueError, match=r"TrainConfig.batch_size=30 .* number of processes \(4"):
        check_processes(TrainConfig(batch_size=30), method_class("ce"))
    with pytest.raises(ValueError, match=r"method 'dmue' does not run on several processes.*'lanet'"):
        check_processes(TrainConfig(batch_size=64), method_class("dmue"))


def test_one_process_is_left_alone():
    batch = {"index": torch.arange(4)}
    grad = torch.ones(3)
    param = torch.zeros(3, requires_grad=True)
    param.grad = grad
    distributed.average_gradients([param])
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.shard(batch) is batch and distributed.gather(batch["index"]) is batch["index"]
    assert param.grad is grad and distributed.on_main(lambda x: x + 1, 1) == 2
