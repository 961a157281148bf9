"""The host-sync counter (ssl_lib.syncs) and the sync-free LARS (ssl_lib.lars).

The training steps themselves are counted in tests/test_gpu_path.py (every method, bf16-mixed).
"""

import pytest
import torch
from lightly.utils.lars import LARS as LightlyLARS

from ssl_lib.lars import LARS
from ssl_lib import syncs
from ssl_lib.syncs import HOST_SCALAR, count_syncs, optimizer_host_scalars


def test_counter_sees_every_conversion_to_python_whoever_calls_it():
    x = torch.randn(4, 3)
    with count_syncs() as s:
        x.sum().item()
        float(x.sum())
        int(x.argmax())
        bool(x.sum() > 0)
        if x.max() > 100:  # noqa: SIM102 - the ``if tensor`` itself is what is counted
            pass
        x.tolist()
        torch.equal(x, x)
        x[x > 0]  # boolean-mask indexing: a data-dependent size (a sync on CUDA)
        torch.nonzero(x)
    assert s.by_op == {"_local_scalar_dense": 5, "tolist": 1, "equal": 1, "index_bool_mask": 1, "nonzero": 1}
    assert s.total == 9
    assert {site.split(":")[0] for _, site in s.sites()} == {"tests/test_syncs.py"}  # the caller, not torch


def test_sync_free_operations_count_nothing_and_segments_split_the_count():
    x = torch.randn(8, 4, requires_grad=True)
    with count_syncs() as s:
        s.mark("a")
        y = (x.softmax(1) * x).sum(0).norm()  # arithmetic, reductions, autograd: no sync
        y.backward()
        torch.where(x.grad > 0, x, -x).repeat_interleave(2, 0)  # int repeats: known output size
        s.mark("b")
        y.item()
    assert s.per_segment() == {"a": 0, "b": 1} and s.in_segment("b") == {"_local_scalar_dense": 1}
    assert torch.Tensor.tolist is not syncs._tolist  # the Python-level watch is removed on exit


def test_optimizer_step_counters_are_host_scalars_not_device_syncs():
    """torch's Adam keeps its step count on the host (also on a GPU); reading it is no device sync."""
    w = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([w], lr=0.1, foreach=False)
    w.sum().backward()
    opt.step()
    with count_syncs(host=optimizer_host_scalars([opt])) as s:
        opt.step()
        w.sum().item()
    assert s.by_op[HOST_SCALAR] >= 1 and s.total == 1  # only the .item() of the parameter


def _model_and_groups():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 6 * 6, 4))
    zero = torch.nn.Parameter(torch.zeros(5))  # |p| = 0 and |g| = 0
    idle = torch.nn.Parameter(torch.randn(3))  # |g| = 0 every other step
    groups = [{"params": [net[0].weight, net[3].weight, zero, idle], "weight_decay": 1e-3},
              {"params": [net[0].bias, net[1].weight, net[1].bias, net[3].bias], "weight_decay": 0.0}]
    return [*net.parameters(), zero, idle], groups, lambda x, s: (net(x).square().mean() + zero.sum() * 0
                                                                 + (idle.sum() * 0 if s % 2 else idle.square().sum()))


@pytest.mark.parametrize("options", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                     dict(momentum=0.5, dampening=0.1), dict()])
def test_lars_makes_lightlys_updates_without_a_host_sync(options):
    """Same parameters as lightly's LARS (the authors' Bolts LARS) after 4 steps, bit for bit, incl. the cases
    lightly's ``if p_norm != 0 and g_norm != 0`` decides (zero weights, zero gradients); no sync in our step."""
    finals, syncs = [], []
    for cls in (LightlyLARS, LARS):
        params, groups, loss_of = _model_and_groups()
        opt = cls(groups, lr=0.3, **options)
        g = torch.Generator().manual_seed(1)
        counted = 0
        for step in range(4):
            opt.zero_grad()
            loss_of(torch.randn(4, 3, 8, 8, generator=g), step).backward()
            with count_syncs() as s:
                opt.step()
            counted += s.total
        finals.append([p.detach().clone() for p in params])
        syncs.append(counted)
    for ours, theirs in zip(finals[1], finals[0]):
        assert torch.equal(ours, theirs)
    assert syncs[0] > 0 and syncs[1] == 0  # lightly's step syncs per parameter; ours never


def test_lars_state_is_lightlys():
    params, groups, loss_of = _model_and_groups()
    ours = LARS(groups, lr=0.3, momentum=0.9)
    loss_of(torch.randn(4, 3, 8, 8), 0).backward()
    ours.step()
    theirs = LightlyLARS(_model_and_groups()[1], lr=0.3, momentum=0.9)
    theirs.load_state_dict(ours.state_dict())  # a checkpoint of either resumes with the other
    assert set(ours.state_dict()["param_groups"][0]) == set(theirs.state_dict()["param_groups"][0])
    assert all("momentum_buffer" in s for s in ours.state_dict()["state"].values())
