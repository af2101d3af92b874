"""Auxiliary supervision of a classifier's feature maps with the tumour compartments of its segmentation.

BraTS ships a segmentation (necrotic / non-enhancing core 1, edema 2, enhancing tumour 4) for every training
subject, and the grade shows in how much of the tumour enhances, how much is necrotic and how far the edema
spreads. A grading network trained on 100-odd labelled volumes sees one bit per subject; asking a few of its
stage feature maps to also say where each compartment is gives it thousands of supervised voxels per subject,
without changing the network (the 1x1x1 heads live in the loss and are not exported). The classifier's input at
inference stays the four modalities: no segmentation is needed to use the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medkd3d.networks import feature_stages
from medkd3d.networks.readout import readout_stages

__all__ = ["BRATS_COMPARTMENTS", "TumourCompartmentLoss"]

#: BraTS segmentation labels of the tumour compartments: necrotic / non-enhancing core, edema, enhancing tumour.
BRATS_COMPARTMENTS: tuple[int, ...] = (1, 2, 4)


class TumourCompartmentLoss(nn.Module):
    """Predict each compartment's share of every voxel of the given feature maps, from those maps.

    Each feature map ``[B, C_i, *S_i]`` gets a 1x1x1 convolution to one logit per compartment. Its target is the
    fraction of each feature voxel covered by the compartment: the segmentation's one-hot masks average-pooled to
    ``S_i``. The loss is binary cross-entropy on those fractions plus a soft Dice per compartment over the whole
    batch, so the few tumour voxels weigh as much as the many background ones (BCE alone is dominated by the
    background and learns "no tumour anywhere"). A ``decoder`` (e.g. a
    :class:`~medkd3d.networks.readout.CompartmentDecoder`) reading two of the maps is scored the same way at its
    output's resolution. The loss is the mean of these terms.

    Args:
        in_channels: channels of each supervised feature map, in the order the features are passed.
        labels: segmentation labels of the compartments (default BraTS: 1, 2, 4).
        dice: add the soft Dice term.
        spatial_dims: spatial dimensions of the feature maps.
        decoder: ``decoder(fine, coarse)`` giving per-voxel compartment logits, or ``None``.
        decoder_inputs: positions, among the feature maps passed, of the fine and the coarse map the decoder reads.

    Raises:
        ValueError: if ``in_channels`` or ``labels`` is empty, or ``decoder_inputs`` are not two of the maps.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        labels: Sequence[int] = BRATS_COMPARTMENTS,
        dice: bool = True,
        spatial_dims: int = 3,
        decoder: nn.Module | None = None,
        decoder_inputs: Sequence[int] = (0, 1),
    ) -> None:
        super().__init__()
        if not in_channels or not labels:
            raise ValueError(
                f"TumourCompartmentLoss needs feature channels and labels, got {in_channels!r} and {labels!r}"
            )
        self.labels = tuple(int(label) for label in labels)
        self.dice = dice
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.heads = nn.ModuleList(conv(int(c), len(self.labels), kernel_size=1) for c in in_channels)
        self.pool = F.adaptive_avg_pool3d if spatial_dims == 3 else F.adaptive_avg_pool2d
        self.decoder_inputs = tuple(int(i) for i in decoder_inputs)
        if decoder is not None and (
            len(self.decoder_inputs) != 2 or not all(0 <= i < len(in_channels) for i in self.decoder_inputs)
        ):
            raise ValueError(
                f"decoder_inputs must be the positions of two of the {len(in_channels)} feature maps, got "
                f"{list(self.decoder_inputs)}"
            )
        self.decoder = decoder

    @classmethod
    def for_network(cls, network: nn.Module, stages: Sequence[int], **kwargs) -> TumourCompartmentLoss:
        """The loss for the outputs of ``stages`` (indices into the network's ``feature_info``).

        Args:
            network: a zoo model (its ``feature_info`` gives each stage's channels).
            stages: the supervised stages.
            kwargs: other arguments of the constructor.

        Returns:
            The loss, with one head per stage. A network's
            :class:`~medkd3d.networks.readout.CompartmentReadout` (``network.readout`` on ``network.readout_stage``)
            is shared, so that the volumes the readout reads are the ones this loss teaches: on one stage its head
            replaces that stage's; a decoder over two stages becomes the loss's ``decoder``, beside the stages' own
            heads. List the optimizer's parameters once (:func:`medkd3d.bundles.unique_parameters`).

        Raises:
            ValueError: if a stage is not an index of ``feature_info``, or the network's readout reads a stage
                that is not supervised (its head would stay untrained).
        """
        loss = cls([stage["num_chs"] for stage in feature_stages(network, stages)], **kwargs)
        readout, read = getattr(network, "readout", None), readout_stages(getattr(network, "readout_stage", None))
        stages = [int(s) for s in stages]
        if readout is not None:
            missing = ", ".join(str(s) for s in read if s not in stages)
            if missing:
                raise ValueError(
                    f"The compartment readout reads stage {missing}, which the auxiliary task does not supervise "
                    f"(stages {stages}): add it to seg_aux_stages, or set readout_stage to null."
                )
            if len(read) == 1:
                loss.heads[stages.index(read[0])] = readout.head
            else:
                loss.decoder, loss.decoder_inputs = readout.decoder, tuple(stages.index(s) for s in read)
        return loss

    def _term(self, logits: Tensor, masks: Tensor) -> Tensor:
        """BCE on each compartment's share of every voxel of ``logits``, plus the batch's soft Dice if enabled."""
        target = self.pool(masks, logits.shape[2:])
        term = F.binary_cross_entropy_with_logits(logits, target)
        if self.dice:
            probabilities = torch.sigmoid(logits)
            axes = [0, *range(2, logits.ndim)]  # the whole batch: a subject without enhancement is no NaN
            overlap = (probabilities * target).sum(axes)
            size = probabilities.sum(axes) + target.sum(axes)
            term = term + (1.0 - (2.0 * overlap + 1e-3) / (size + 1e-3)).mean()
        return term

    def predictions(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Compartment logits of each head on its feature map, then the decoder's (if any) on its two maps.

        Args:
            features: one feature map ``[B, C_i, *S_i]`` per head, any floating dtype.

        Raises:
            ValueError: if the number of feature maps differs from the number of heads.
        """
        if len(features) != len(self.heads):
            raise ValueError(f"TumourCompartmentLoss has {len(self.heads)} heads but got {len(features)} feature maps")
        maps = [feature.float() for feature in features]
        logits = [head(feature) for feature, head in zip(maps, self.heads)]
        if self.decoder is not None:
            logits.append(self.decoder(*(maps[i] for i in self.decoder_inputs)))
        return logits

    def forward(self, features: Sequence[Tensor], seg: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of the compartment maps predicted from ``features`` against ``seg``.

        Args:
            features: one feature map ``[B, C_i, *S_i]`` per head, any floating dtype.
            seg: label map ``[B, 1, *spatial]`` (any numeric dtype).

        Returns:
            ``(total, {"compartments": total})``, the mean of the heads' and the decoder's terms.

        Raises:
            ValueError: if the number of feature maps differs from the number of heads.
        """
        logits = self.predictions(features)
        seg = seg.as_tensor() if hasattr(seg, "as_tensor") else seg
        masks = torch.cat([(seg == label).float() for label in self.labels], dim=1)
        total = torch.stack([self._term(prediction, masks) for prediction in logits]).mean()
        return total, {"compartments": total}
