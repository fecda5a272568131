"""DDP: the penalty's gradients are reduced with the adversarial ones (2 processes, gloo, CPU).

The extra passes go through G.module, but in the same backward() they reach the same parameter
gradient accumulators as the DDP forward, whose hooks DDP uses to all-reduce: the gradients are
averaged across processes, and the per-process batch mean becomes the global batch mean.
"""

from __future__ import annotations

import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from spectral_ops.regularizer import SpectralRegularizer

B, D_LAT = 8, 4


def _models():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(D_LAT, 16), nn.Tanh(), nn.Linear(16, 12)).double()
    D = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return G, D


def _batch():
    return torch.randn(B, D_LAT, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _step(G_call, G, D, reg, z):
    adv = nn.functional.softplus(-D(G_call(z))).mean()
    loss = adv + reg(G_call, z)  # the drop-in line, with the DDP-wrapped G
    loss.backward()
    return [p.grad.detach().clone() for p in G.parameters()]


def _worker(rank, world, port, grad, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        G, D = _models()
        G_ddp = nn.parallel.DistributedDataParallel(G)
        reg = SpectralRegularizer(D_LAT, k=2, iters=3, grad=grad, every=1, batch_fraction=1.0, warm_start=True)
        z = _batch().chunk(world)[rank]
        grads = _step(G_ddp, G, D, reg, z)
        torch.save({"grads": grads, "basis": reg.basis.clone()}, os.path.join(out_dir, f"rank{rank}.pt"))
        # Tear down in order: every rank is done communicating, and the DDP reducer (which holds
        # the process group and its gloo threads) is freed before the group is destroyed.  Left
        # to interpreter exit, the reducer's threads could be destroyed unjoined (std::terminate).
        dist.barrier()
        del G_ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("grad", ["fast", "implicit"])
def test_ddp_gradients_match_single_process(grad, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), grad, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    G, Dn = _models()
    reg = SpectralRegularizer(D_LAT, k=2, iters=3, grad=grad, every=1, batch_fraction=1.0, warm_start=True)
    single = _step(G, G, Dn, reg, _batch())
    for a, b, s in zip(r0["grads"], r1["grads"], single):
        assert torch.equal(a, b)  # identical across ranks
        assert torch.allclose(a, s, rtol=1e-10, atol=1e-14), float((a - s).abs().max())
    # the penalty contributes: without it the gradients differ
    G2, D2 = _models()
    adv_only = nn.functional.softplus(-D2(G2(_batch()))).mean()
    adv_only.backward()
    assert any(not torch.allclose(p.grad, s) for p, s in zip(G2.parameters(), single))
    # the warm-start basis is all-reduced: the same everywhere, and as in one process
    assert torch.equal(r0["basis"], r1["basis"])
    assert torch.allclose(r0["basis"], reg.basis, atol=1e-6)
