"""Batch norm over the global batch of all DDP ranks (ssl_lib.models.syncbn), on the CPU (gloo)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_lib.models.syncbn import SyncBatchNorm, convert_sync_batchnorm, global_batch_norm, revert_sync_batchnorm


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=0.3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 5 * 5, 4), nn.BatchNorm1d(4))


def test_convert_and_revert_keep_parameters_buffers_and_classes():
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    synced = convert_sync_batchnorm(net)
    assert [type(m) for m in synced if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [SyncBatchNorm] * 2
    assert synced[1].momentum == 0.3 and synced[1].plain_class is nn.BatchNorm2d
    assert all(torch.equal(v, state[k]) for k, v in synced.state_dict().items()) and synced.state_dict().keys() == \
        state.keys()
    back = revert_sync_batchnorm(synced)
    assert [type(back[1]), type(back[5])] == [nn.BatchNorm2d, nn.BatchNorm1d]
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())


def test_one_process_is_plain_batch_norm():
    x = torch.randn(6, 3, 5, 5)
    plain, synced = _net(), convert_sync_batchnorm(_net())
    for mode in ("train", "eval"):
        getattr(plain, mode)(), getattr(synced, mode)()
        torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
    for k, v in plain.state_dict().items():
        assert torch.equal(synced.state_dict()[k], v)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    x, weights = _batch()
    bn = _bn()
    rows = slice(0, 3) if rank == 0 else slice(3, 8)  # unequal shares: 3 and 5 rows
    part = x[rows].clone().requires_grad_()
    y = global_batch_norm(part, bn)
    (y * weights[rows]).sum().backward()
    torch.save({"y": y.detach(), "dx": part.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
                "running": (bn.running_mean, bn.running_var, bn.num_batches_tracked)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64) * 3 + 1, torch.randn(8, 4, 3, 3, generator=g,
                                                                                         dtype=torch.float64)


def _bn():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4, momentum=0.2).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    return bn


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed")
def test_two_ranks_give_the_whole_batch_outputs_gradients_and_running_statistics(tmp_path):
    """Rows 0-2 on rank 0 and 3-7 on rank 1 (unequal shares) = one batch norm over all 8 rows: outputs, input
    gradients, weight/bias gradients summed over the ranks, and the running statistics (unbiased variance of
    the whole batch), in float64."""
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    x, weights = _batch()
    bn = _bn()
    whole = x.clone().requires_grad_()
    y = bn(whole)
    (y * weights).sum().backward()
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1)]
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([r[0]["dx"], r[1]["dx"]]), whole.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r[0]["dw"] + r[1]["dw"], bn.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r[0]["db"] + r[1]["db"], bn.bias.grad, rtol=1e-12, atol=1e-12)
    for k in (0, 1):
        torch.testing.assert_close(r[k]["running"][0], bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r[k]["running"][1], bn.running_var, rtol=1e-12, atol=1e-12)
        assert int(r[k]["running"][2]) == 1
