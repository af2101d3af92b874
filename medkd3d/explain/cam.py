"""Class activation maps for 3D and 2.5D classifiers: Grad-CAM and occlusion (MONAI), Score-CAM (ours, batched).

Every map function takes the network input ``x`` and returns a *raw* map, non-negative, at the input's spatial
resolution, one per sample; :func:`normalize_map` turns it into ``[0, 1]`` with **1 = most important**. (MONAI's
default CAM post-processing, ``monai.visualize.default_normalizer``, maps the maximum to 0 and the minimum to
1; it is never used here.)

Two input layouts are understood:

- *plain*: ``x`` is ``[B, C, *spatial]`` (a 3D volume, or one 2.5D slice stack per sample); maps are
  ``[B, *spatial]``;
- *stacked*: ``x`` is ``[B, S, C, H, W]`` for multi-slice 2.5D networks that encode each of the ``S`` stacks
  with a shared 2D encoder (the CAM layer sees ``B * S`` samples); maps are ``[B, S, H, W]``, one per stack,
  each explaining the subject-level prediction.

Methods:

- **Grad-CAM** (Selvaraju et al., 2017) through :class:`monai.visualize.GradCAM`: ``ReLU(sum_k w_k A_k)`` with
  ``w_k`` the spatial mean of ``d score_c / d A_k``, upsampled (bi/trilinear) to the input.
- **Score-CAM** (Wang et al., 2020), which MONAI does not have: each activation map ``A_k`` of the layer is
  upsampled to the input and min-max normalised to ``[0, 1]``, giving a mask ``H_k``; the *channel-wise increase
  of confidence* ``w_k = p_c(x * H_k) - p_c(x_b)`` (softmax probability of class ``c``, ``x_b = 0 * x`` the
  baseline, which is also what a constant, all-zero mask gives) weighs the upsampled maps:
  ``ReLU(sum_k w_k up(A_k))``. The masked inputs go through the network ``batch_size`` at a time, not one forward
  per channel.
- **Occlusion sensitivity** through :class:`monai.visualize.OcclusionSensitivity`: ``p_c(x) - p_c(x occluded
  around v)``, i.e. how much the class probability drops when the neighbourhood of ``v`` is hidden.

Hooks are registered on the network only for the duration of one call (see :class:`LayerHooks`), so a model can be
explained repeatedly, trained, or exported afterwards without carrying hooks.
"""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.utils import eval_mode
from monai.visualize import GradCAM, ModelWithHooks, OcclusionSensitivity, default_upsampler
from monai.visualize.class_activation_maps import CAMBase
from torch import nn

__all__ = [
    "METHODS",
    "LayerHooks",
    "ScoreCAM",
    "compute_map",
    "default_target_layer",
    "grad_cam",
    "normalize_map",
    "occlusion_map",
    "predicted_classes",
    "score_cam",
]

logger = logging.getLogger(__name__)

#: The explanation methods of :func:`compute_map` (and ``medkd3d explain --method``).
METHODS = ("gradcam", "scorecam", "occlusion")


def normalize_map(cam: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each sample's map to ``[0, 1]`` with **high values meaning high importance**.

    Negative values (evidence *against* the class, e.g. occluded regions whose removal raised the probability)
    are clipped to 0 first; then ``(m - min) / (max - min)`` per sample, over the voxels of ``mask`` when given
    (voxels outside it become 0). A constant map becomes all zeros.

    Args:
        cam: ``[B, ...]`` raw maps.
        mask: optional boolean ``[B, ...]`` (or broadcastable) region the statistics are taken over.

    Returns:
        float32 maps of the same shape in ``[0, 1]``.
    """
    cam = cam.detach().float().clamp(min=0)
    flat = cam.reshape(cam.shape[0], -1)
    if mask is None:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        keep = torch.broadcast_to(torch.as_tensor(mask, device=cam.device).bool(), cam.shape).reshape(flat.shape)
    low = torch.where(keep, flat, torch.full_like(flat, math.inf)).amin(dim=1, keepdim=True)
    high = torch.where(keep, flat, torch.full_like(flat, -math.inf)).amax(dim=1, keepdim=True)
    span = high - low
    valid = torch.isfinite(span) & (span > 0)
    scaled = torch.where(valid & keep, (flat - low) / torch.where(valid, span, torch.ones_like(span)), 0.0)
    return scaled.reshape(cam.shape)


class LayerHooks(ModelWithHooks):
    """MONAI's ``ModelWithHooks`` for one layer, with removable hooks and one class per sample.

    MONAI registers its hooks for the lifetime of the model and scores a batch with a single class
    (``logits[:, class_idx]``). This subclass keeps MONAI's forward/backward logic (eval mode, ``zero_grad``,
    backward of the summed class scores) but:

    - registers a forward hook whose output tensor records its own gradient (a tensor hook, so in-place
      operations after the layer and frozen weights need no special care), removed by :meth:`remove` or when
      leaving a ``with`` block;
    - scores sample ``i`` with ``class_idx[i]`` (an int applies to every sample).

    A layer returning a tuple (e.g. a transformer block) is recorded as its first element.

    Args:
        nn_module: the network.
        layer: module path of the layer, as in ``nn_module.named_modules()``.
        record_gradients: also record the gradient of the class score with respect to the layer output.

    Raises:
        ValueError: if ``layer`` is not a module path of ``nn_module`` (the message suggests close names).
    """

    def __init__(self, nn_module: nn.Module, layer: str, record_gradients: bool = True) -> None:
        modules = dict(nn_module.named_modules())
        if layer not in modules or not layer:
            close = difflib.get_close_matches(layer, [name for name in modules if name], n=5)
            hint = f" Did you mean one of {close}?" if close else " List the paths with model.named_modules()."
            raise ValueError(f"{type(nn_module).__name__} has no layer {layer!r} to explain.{hint}")
        # MONAI's own registration is switched off; ours keeps the handles so the hooks can be removed. MONAI reads
        # the two flags again in ``__call__`` (to return activations and run the backward pass), which is not
        # documented: tests/misc/test_monai_private_api.py pins it.
        super().__init__(nn_module, layer, register_forward=False, register_backward=False)
        self.register_forward = True
        self.register_backward = record_gradients
        self.layer = layer
        self._handles = [modules[layer].register_forward_hook(self._record)]

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        self.activations[self.layer] = output
        if self.register_backward and output.requires_grad:
            output.register_hook(lambda grad: self.gradients.__setitem__(self.layer, grad))

    def class_score(self, logits: torch.Tensor, class_idx: int | torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(class_idx, device=logits.device, dtype=torch.long).reshape(-1)
        return logits.gather(1, index.expand(logits.shape[0])[:, None]).squeeze(1)

    def __call__(
        self, x: torch.Tensor, class_idx: int | torch.Tensor | None = None, retain_graph: bool = False, **kwargs
    ):
        if self.register_backward and not x.requires_grad:
            # frozen networks (a loaded teacher) give no graph unless the input asks for one
            x = x.detach().requires_grad_(True)
        self.activations.clear()
        self.gradients.clear()
        return super().__call__(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)

    def remove(self) -> None:
        """Remove the hooks; calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerHooks:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


def _groups_and_batch(x: torch.Tensor, activation: torch.Tensor) -> tuple[int, int]:
    """``(groups, batch)`` of ``x`` as seen by the layer: ``groups = S`` for stacked input, 1 for plain input."""
    batch = x.shape[0]
    if activation.ndim == x.ndim and activation.shape[0] == batch:
        return 1, batch
    if activation.ndim == x.ndim - 1 and activation.shape[0] == batch * x.shape[1]:
        return x.shape[1], batch
    raise ValueError(
        f"the CAM layer output {tuple(activation.shape)} is not a feature map of the input {tuple(x.shape)}: it "
        "must be [B, C, *spatial] (or [B*S, C, H, W] for stacked [B, S, C, H, W] input). Choose a convolutional "
        "layer with --layer (transformer token outputs have no spatial layout), or use --method occlusion."
    )


def _input_spatial(x: torch.Tensor, groups: int) -> tuple[int, ...]:
    return tuple(x.shape[3:] if groups > 1 else x.shape[2:])


def _upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bi/trilinear upsampling of ``[N, K, *s]`` maps to ``size`` (MONAI's CAM upsampler)."""
    return default_upsampler(tuple(size))(maps)


def predicted_classes(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``argmax`` of the network's logits for each sample of ``x`` (eval mode, no gradients)."""
    with eval_mode(network):  # MONAI's: eval mode and no gradients, the training flag restored after
        return network(x).argmax(dim=1)


def _class_index(
    network: nn.Module, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None
) -> torch.Tensor:
    if class_idx is None:
        return predicted_classes(network, x)
    index = torch.as_tensor(class_idx, dtype=torch.long, device=x.device).reshape(-1)
    return index.expand(x.shape[0]).clone() if index.numel() == 1 else index


def grad_cam(
    network: nn.Module, x: torch.Tensor, layer: str, class_idx: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM maps of ``layer`` with :class:`monai.visualize.GradCAM`, upsampled to the input.

    Args:
        network: classifier returning logits ``[B, num_classes]``.
        x: plain ``[B, C, *spatial]`` or stacked ``[B, S, C, H, W]`` input (see the module docstring).
        layer: module path of a convolutional layer.
        class_idx: class to explain, an int or one per sample; ``None`` uses the predicted classes.

    Returns:
        Raw non-negative maps ``[B, *spatial]`` (or ``[B, S, H, W]``); normalise with :func:`normalize_map`.
    """
    classes = _class_index(network, x, class_idx)
    with LayerHooks(network, layer) as hooks:
        cam = GradCAM(nn_module=hooks, target_layers=layer)
        raw = cam.compute_map(x, class_idx=classes)  # [B * groups, 1, *s]
        groups, batch = _groups_and_batch(x, hooks.activations[layer])
    up = _upsample(raw.detach(), _input_spatial(x, groups))[:, 0]
    return up.reshape(batch, groups, *up.shape[1:]).squeeze(1) if groups > 1 else up


class ScoreCAM(CAMBase):
    """Score-CAM for any spatial dimension, batched; the MONAI-style counterpart of ``monai.visualize.GradCAM``.

    See the module docstring for the formula. Usage mirrors MONAI's CAM classes::

        cam = ScoreCAM(nn_module=model, target_layers="_blocks.4", batch_size=16)
        maps = cam(x)              # [B, 1, *spatial], in [0, 1], high = important
        raw = cam.compute_map(x)   # [B, *spatial] (or [B, S, H, W] for stacked input), before normalisation

    Args:
        nn_module: classifier returning logits.
        target_layers: module path of the layer whose activation maps become masks.
        batch_size: masked inputs per forward pass.
        postprocessing: applied by ``__call__`` to ``[B, 1, *spatial]`` maps; default :func:`normalize_map`.
    """

    def __init__(
        self,
        nn_module: nn.Module,
        target_layers: str,
        batch_size: int = 16,
        postprocessing: Callable[[torch.Tensor], torch.Tensor] = normalize_map,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ScoreCAM: batch_size must be >= 1, got {batch_size}.")
        self.network = nn_module
        self.layer = target_layers
        self.batch_size = batch_size
        super().__init__(
            nn_module=_NoHooks(nn_module),  # hooks live only inside compute_map
            target_layers=target_layers,
            upsampler=default_upsampler,
            postprocessing=postprocessing,
            register_backward=False,
        )

    @torch.no_grad()
    def compute_map(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None, layer_idx: int = -1
    ) -> torch.Tensor:
        """Raw Score-CAM maps at the input resolution (see :func:`score_cam`)."""
        network = self.network
        with eval_mode(network), LayerHooks(network, self.layer, record_gradients=False) as hooks:
            logits = network(x)
            activation = hooks.activations[self.layer].detach()
        classes = _class_index(network, x, class_idx) if class_idx is not None else logits.argmax(dim=1)
        groups, batch = _groups_and_batch(x, activation)
        spatial = _input_spatial(x, groups)
        activation = activation.reshape(batch, groups, *activation.shape[1:])  # [B, G, K, *s]
        channels = activation.shape[2]
        with eval_mode(network):
            baseline = network(torch.zeros_like(x)).softmax(dim=1)
            maps = []
            for b in range(batch):
                c = int(classes[b])
                saliency = torch.zeros((groups, *spatial), device=x.device)
                for start in range(0, channels, self.batch_size):
                    chunk = activation[b, :, start : start + self.batch_size]  # [G, k, *s]
                    up = _upsample(chunk, spatial).transpose(0, 1)  # [k, G, *spatial]
                    masks = _minmax(up)
                    sample = x[b] if groups > 1 else x[b][None]  # [G, C, *spatial]
                    masked = sample[None] * masks[:, :, None]  # [k, G, C, *spatial]
                    if groups == 1:
                        masked = masked[:, 0]
                    probs = network(masked).softmax(dim=1)[:, c]
                    weights = probs - baseline[b, c]
                    saliency += torch.einsum("k,kg...->g...", weights, up)
                maps.append(F.relu(saliency))
        out = torch.stack(maps)  # [B, G, *spatial]
        return out if groups > 1 else out[:, 0]

    def __call__(
        self, x: torch.Tensor, class_idx: int | Sequence[int] | torch.Tensor | None = None, layer_idx: int = -1
    ) -> torch.Tensor:
        """Normalised maps ``[B, 1, *spatial]`` (stacked input: ``[B, S, H, W]`` normalised per sample)."""
        raw = self.compute_map(x, class_idx, layer_idx)
        return self.postprocessing(raw[:, None] if raw.ndim == x.ndim - 1 else raw)


class _NoHooks(ModelWithHooks):
    """A ``ModelWithHooks`` that registers nothing, so ``CAMBase`` leaves the network untouched."""

    def __init__(self, nn_module: nn.Module) -> None:
        super().__init__(nn_module, (), register_forward=False, register_backward=False)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each ``[*spatial]`` map of ``[k, G, *spatial]`` to ``[0, 1]``; constant maps become 0."""
    flat = maps.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    span = flat.amax(dim=2, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return scaled.reshape(maps.shape)


def score_cam(
    network: nn.Module,
    x: torch.Tensor,
    layer: str,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Score-CAM maps (see the module docstring), with the masked inputs batched ``batch_size`` at a time.

    For stacked input ``[B, S, C, H, W]``, mask ``k`` of a subject multiplies every stack by that stack's own
    upsampled channel-``k`` map, and the per-stack maps are ``ReLU(sum_k w_k up(A_k))``.

    Args:
        network: classifier returning logits ``[B, num_classes]``.
        x: plain ``[B, C, *spatial]`` or stacked ``[B, S, C, H, W]`` input.
        layer: module path of a convolutional layer.
        class_idx: class to explain, an int or one per sample; ``None`` uses the predicted classes.
        batch_size: masked inputs per forward pass.

    Returns:
        Raw non-negative maps ``[B, *spatial]`` (or ``[B, S, H, W]``).
    """
    return ScoreCAM(network, layer, batch_size=batch_size).compute_map(x, class_idx)


class _StacksAsDepth(nn.Module):
    """Present a multi-slice network ``[B, S, C, H, W]`` as one taking ``[B, C, S, H, W]``.

    MONAI's occlusion occludes all channels of a spatial window; moving the stack axis into the spatial axes
    lets it occlude one stack at a time (window size 1 along ``S``).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.movedim(2, 1))


def occlusion_map(
    network: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
    mask_size: int | Sequence[int] = 16,
    overlap: float = 0.5,
    batch_size: int = 16,
    mode: str | float = "gaussian",
    stacked: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Occlusion sensitivity with :class:`monai.visualize.OcclusionSensitivity`: the drop of ``p_c`` when occluding.

    The window of ``mask_size`` voxels slides with ``overlap``; ``mode="gaussian"`` (MONAI's default) multiplies
    the window by ``1 - gaussian`` (zero at its centre), a float replaces it by that value. The mask is clipped to
    the input size.

    Args:
        network: classifier returning logits ``[B, num_classes]``.
        x: plain ``[B, C, *spatial]`` or, with ``stacked``, ``[B, S, C, H, W]`` input.
        class_idx: class to explain, an int or one per sample; ``None`` uses the predicted classes.
        mask_size: occluded window per spatial axis.
        overlap: overlap of consecutive windows, in ``[0, 1)``.
        batch_size: occluded inputs per forward pass.
        mode: MONAI occlusion mode (``"gaussian"``, ``"mean_patch"``, ``"mean_img"`` or a float).
        stacked: ``x`` is multi-slice input; each stack is occluded on its own (window size 1 along the stacks).
        progress: show MONAI's progress bar.

    Returns:
        Raw maps ``p_c(x) - p_c(occluded)`` ``[B, *spatial]`` (or ``[B, S, H, W]``); negative values (occlusion raised
        the probability) are clipped by :func:`normalize_map`.
    """
    classes = _class_index(network, x, class_idx)
    model: nn.Module = _StacksAsDepth(network) if stacked else network
    inputs = x.movedim(1, 2) if stacked else x
    spatial = tuple(inputs.shape[2:])
    window = [
        int(m) for m in (mask_size if isinstance(mask_size, Sequence) else [mask_size] * (len(spatial) - stacked))
    ]
    if stacked:
        window = [1, *window]
    window = [min(m, s) for m, s in zip(window, spatial)]
    occlusion = OcclusionSensitivity(
        nn_module=model,
        mask_size=window,
        n_batch=batch_size,
        verbose=progress,
        mode=mode,
        overlap=overlap,
        activate=lambda logits: logits.softmax(dim=1),  # MONAI's default picks sigmoid for 1-channel *inputs*
    )
    maps = []
    with eval_mode(network), warnings.catch_warnings():
        # MONAI indexes its Gaussian kernel with a list, which torch deprecates; nothing the user can act on
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        probs = model(inputs).softmax(dim=1)
        for b in range(x.shape[0]):
            c = int(classes[b])
            occluded, _ = occlusion(inputs[b : b + 1])  # [1, num_classes, *spatial]
            maps.append(probs[b, c] - torch.as_tensor(occluded[0, c]).as_subclass(torch.Tensor))
    return torch.stack(maps)


def default_target_layer(
    network: nn.Module, x: torch.Tensor, spatial_dims: int | None = None, min_size: int = 4
) -> str:
    """The default CAM layer: the deepest convolutional feature map that still has ``min_size`` voxels per axis.

    Candidates are the ``feature_info`` stage modules of a medkd3d/timm model (any other model: all its
    submodules), in forward order. A candidate qualifies when, for the input ``x``, it outputs a
    ``[N, C, *spatial]`` map with ``spatial_dims`` spatial axes, ``N`` the batch (or ``B * S`` stacks), and every
    spatial side ``>= min_size``. The last one wins: the most semantic map that still localises (for 128^3 input
    and stride-32 stages: the last stage, 4^3). Transformer blocks (token outputs) never qualify.

    Args:
        network: the classifier.
        x: an input as it will be explained (plain or stacked); one forward pass is run on it.
        spatial_dims: spatial axes of the maps (3 for volumes, 2 for slice stacks); default ``x.ndim - 2``.
        min_size: smallest accepted side of the map.

    Returns:
        The module path.

    Raises:
        ValueError: if no module qualifies (the message suggests ``--layer`` or occlusion).
    """
    spatial_dims = x.ndim - 2 if spatial_dims is None else spatial_dims
    info = getattr(network, "feature_info", None)
    candidates = [entry["module"] for entry in info] if info else [name for name, _ in network.named_modules() if name]
    modules = dict(network.named_modules())
    seen: list[tuple[str, tuple[int, ...]]] = []

    def recorder(name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            if isinstance(output, torch.Tensor):
                seen.append((name, tuple(output.shape)))

        return record

    handles = [modules[name].register_forward_hook(recorder(name)) for name in dict.fromkeys(candidates)]
    try:
        with eval_mode(network):
            network(x)
    finally:
        for handle in handles:
            handle.remove()
    batches = {x.shape[0], x.shape[0] * (x.shape[1] if x.ndim == spatial_dims + 3 else 1)}
    qualifying = [
        name
        for name, shape in seen
        if len(shape) == spatial_dims + 2 and shape[0] in batches and min(shape[2:]) >= min_size
    ]
    if not qualifying:
        raise ValueError(
            f"{type(network).__name__} has no convolutional feature map with {spatial_dims} spatial axes of at least "
            f"{min_size} voxels for input {tuple(x.shape)}; pass a layer explicitly (--layer MODULE.PATH) or use "
            "--method occlusion, which needs no layer."
        )
    return qualifying[-1]


def compute_map(
    method: str,
    network: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
    layer: str | None = None,
    stacked: bool = False,
    batch_size: int = 16,
    mask_size: int | Sequence[int] = 16,
    overlap: float = 0.5,
    progress: bool = False,
) -> torch.Tensor:
    """One entry point for the three methods; returns raw maps (see :func:`grad_cam`, :func:`score_cam`,
    :func:`occlusion_map`).

    Args:
        method: ``"gradcam"``, ``"scorecam"`` or ``"occlusion"``.
        network: the classifier.
        x: plain or stacked input.
        class_idx: class to explain per sample (``None``: predicted).
        layer: CAM layer; ``None`` picks :func:`default_target_layer` (ignored by occlusion).
        stacked: ``x`` is multi-slice ``[B, S, C, H, W]`` input.
        batch_size: inputs per forward pass for Score-CAM and occlusion.
        mask_size: occlusion window.
        overlap: occlusion window overlap.
        progress: progress bar for occlusion.

    Returns:
        Raw maps ``[B, *spatial]`` (``[B, S, H, W]`` when stacked).

    Raises:
        ValueError: for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "occlusion":
        return occlusion_map(network, x, class_idx, mask_size, overlap, batch_size, stacked=stacked, progress=progress)
    if layer is None:
        layer = default_target_layer(network, x, spatial_dims=x.ndim - 3 if stacked else x.ndim - 2)
    if method == "gradcam":
        return grad_cam(network, x, layer, class_idx)
    return score_cam(network, x, layer, class_idx, batch_size)
