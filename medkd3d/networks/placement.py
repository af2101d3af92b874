"""Put a network on its device, its 3D convolutions channels-last where that is faster.

oneDNN, PyTorch's CPU convolution library, can run 3D convolutions faster on channels-last (NDHWC) tensors than
on the default NCDHW layout. ``benchmarks/bench_layout.py`` times one training step (one thread, this project's
2-core machine, plain-tensor inputs, :mod:`medkd3d.engines.batch`): 0.82x the channels-first time for the ``quick``
VGG-ViT teacher and 0.58x for the ``quick`` ResNet-10 student (batch 8, 32^3), 0.85x for the HDKD teacher; the 2D
backbone of the 2.5D student did not change with channels-last 2D tensors in a probe, so 2D networks are left as
they are. It is not a gain everywhere: the full-size 3D student, EfficientNet-B0 with group norm, took 2.06x the time
(batch 2, 64^3). So the bundles keep it off by default (``channels_last``) and their ``quick`` profiles turn it on
where they run on a CPU; on a GPU it is off, its effect there not measured.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["has_3d_convolutions", "place_network"]


def has_3d_convolutions(network: nn.Module) -> bool:
    """Whether ``network`` has a 3D convolution (``nn.Conv3d`` or ``nn.ConvTranspose3d``).

    Args:
        network: the network.

    Returns:
        ``True`` when one of its modules is a 3D (transposed) convolution.
    """
    return any(isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) for module in network.modules())


def place_network(network: nn.Module, device: str | torch.device, channels_last: bool = False) -> nn.Module:
    """Move ``network`` to ``device``; with ``channels_last``, store a 3D network's 5-D tensors channels-last.

    Only the layout of the 5-D parameters and buffers (the 3D convolution weights) changes, not their values, so
    the checkpoints and exports are those of the usual layout. The inputs need no conversion: a convolution with
    channels-last weights returns channels-last activations, and the layers after it keep that layout.

    Args:
        network: the network, moved in place.
        device: its device.
        channels_last: use ``torch.channels_last_3d`` for a network with 3D convolutions (a network without them
            is only moved).

    Returns:
        ``network`` itself, on ``device``.
    """
    network = network.to(device)
    if channels_last and has_3d_convolutions(network):
        network = network.to(memory_format=torch.channels_last_3d)
    return network
