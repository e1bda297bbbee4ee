import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from imcap_testing import tiny_train_options
from imcap.checkpoint import load_checkpoint
from imcap.config import TrainOptions
from imcap.data.loader import ResumableSampler
from imcap.distributed import World, mean_across, options_to_argv, rank_rng_state, torchrun_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("size,world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_shards_are_disjoint_equal_and_cover_the_epoch(size, world):
    shards = [list(ResumableSampler(size, 3, epoch=1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal length: every rank runs the same number of steps
    assert set().union(*shards) == set(range(size))
    if size % world == 0:
        assert sum(len(s) for s in shards) == size  # no padding needed, no item twice


def test_sharded_sampler_resumes_where_it_stopped():
    world, size = 2, 11
    full = [list(ResumableSampler(size, 3, 0, 0, rank=r, world_size=world)) for r in range(world)]
    for steps in (1, 3):  # `start` counts items of all ranks together
        part = [list(ResumableSampler(size, 3, 0, steps * world, rank=r, world_size=world)) for r in range(world)]
        assert part == [f[steps:] for f in full]
        assert [len(ResumableSampler(size, 3, 0, steps * world, rank=r, world_size=world)) for r in range(world)] == [len(p) for p in part]


def test_one_process_sampler_is_unchanged():
    assert list(ResumableSampler(9, 4, 2, 3)) == list(ResumableSampler(9, 4, 2, 0))[3:]


# ---------------------------------------------------------------- helpers
def test_options_round_trip_through_the_command_line():
    import argparse

    from imcap.options import add_dataclass_arguments, dataclass_from_args

    opts = TrainOptions(data="d", checkpoint_path="r", max_iters=7, amp=True, progress=False, sc_baseline="mean", learning_rate=2e-4)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainOptions)
    args = parser.parse_args(options_to_argv(opts))
    assert dataclass_from_args(TrainOptions, args) == opts


def test_torchrun_command_runs_the_imcap_module():
    cmd = torchrun_command(TrainOptions(data="d", max_iters=3), 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert cmd[5:8] == ["-m", "imcap", "train"] and "--max-iters" in cmd


def test_single_process_helpers_are_pass_through():
    assert mean_across([1.5, 2.0], World()) == [1.5, 2.0]
    ckpt = {"rng": {"torch": 1}, "rng_ranks": None, "world_size": 1}
    assert rank_rng_state(ckpt, World()) == {"torch": 1}


# ---------------------------------------------------------------- 2 CPU processes with gloo
def _ddp_worker(rank: int, world: int, port: int, data: str, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from imcap.train import Trainer

    root_p = Path(root)
    kw = dict(device="cpu", self_critical_after=4, sc_sample_n=2, save_checkpoint_every=4, batch_size=3, losses_log_every=1)
    runs = [("full", 8, False), ("split", 5, False), ("split", 8, True)]
    for name, iters, resume in runs:
        trainer = Trainer(tiny_train_options(Path(data), root_p / name, max_iters=iters, resume=resume, **kw))
        trainer.fit()
        params = {k: p.detach() for k, p in trainer.model.named_parameters()}
        torch.save({"params": params, "state": trainer.model.state_dict()}, root_p / f"{name}-{iters}-rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_train_agree_and_resume_exactly(tiny_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_data), str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    full0, full1 = load("full-8-rank0.pt"), load("full-8-rank1.pt")
    split0, split1 = load("split-8-rank0.pt"), load("split-8-rank1.pt")
    for k in full0["params"]:  # BatchNorm running statistics are each rank's own (DDP broadcasts rank 0's before every forward)
        assert torch.equal(full0["params"][k], full1["params"][k]), f"ranks disagree on {k}"
        assert torch.equal(split0["params"][k], split1["params"][k]), k
    for k in full0["state"]:
        assert torch.equal(full0["state"][k], split0["state"][k]), f"resumed run differs on {k}"
        assert torch.equal(full1["state"][k], split1["state"][k]), f"resumed run differs on {k} on rank 1"
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    assert ckpt["iteration"] == 8 and ckpt["world_size"] == 2
    assert len(ckpt["rng_ranks"]) == 2 and not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])
    assert (tmp_path / "full" / "xe.pt").exists()
    xe = load_checkpoint(tmp_path / "full" / "xe.pt")["model"]
    assert any(not torch.equal(xe[k], full0["state"][k]) for k in xe), "self-critical steps changed nothing"
    logged = ckpt["history"]["train_loss"]
    assert any("reward" in e for e in logged)
    # 48 training images, 2 ranks x 3 images per batch: 8 iterations read the whole epoch
    assert ckpt["epoch"] == 0 and ckpt["position"] == 48


def test_nproc_launcher_runs_torchrun(tiny_data, tmp_path, monkeypatch):
    from imcap.train import train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # show_attend_tell leaves the pooled head without gradient: DDP's unused-parameter path (the gloo test runs show_tell)
    opts = tiny_train_options(tiny_data, tmp_path / "launched", nproc=2, device="cpu", model="show_attend_tell", max_iters=2, save_checkpoint_every=2, val_images_use=2)
    run = train(opts)
    ckpt = load_checkpoint(run / "last.pt")  # written by rank 0 of `torchrun -m imcap train`
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 2 and ckpt["position"] == 16


def test_nproc_launcher_reports_bad_input_in_one_line(tmp_path, capsys):
    from imcap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--nproc", "2", "--data", str(tmp_path / "missing"), "--max-iters", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("imcap: error:") and err.count("\n") == 1 and "torchrun" not in err
