"""Run under torchrun: the CILP loss on this rank's half of a fixed batch, gradients averaged by DDP.

Writes OUT/rank{r}.pt with the rank's local loss and the model's (DDP-averaged) gradients.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from toolkit.engine.dist import exit_process
from toolkit.tasks.cilp.loss import clip_loss
from toolkit.tasks.cilp.models import CILPModel


def make_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 4, 64, 64, generator=g), torch.rand(8, 4, 64, 64, generator=g)


def make_model():
    torch.manual_seed(0)
    return CILPModel(4, 4, [4, 8, 8, 8], emb_dim=16, hidden=8)


if __name__ == "__main__":
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rgb, lidar = make_inputs()
    n = len(rgb) // world
    model = DistributedDataParallel(make_model())
    img, lid, scale = model(rgb[rank * n:(rank + 1) * n], lidar[rank * n:(rank + 1) * n])
    loss = clip_loss(img, lid, scale)
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.module.named_parameters()}
    torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
    exit_process(0)  # destroys the group and skips interpreter finalisation (toolkit.engine.dist)
