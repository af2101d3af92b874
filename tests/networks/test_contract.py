"""Every registered model against the network contract (DESIGN.md, "Networks"), at its tiny configuration.

The list of models comes from the registry, so a newly registered model is checked without touching this file.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medkd3d.networks import create_model, get_model_entry, list_models
from medkd3d.networks.profile import spatial_rank

MODEL_NAMES = list_models()
# EfficientNet-B1...B6 are the same class as B0 and B7 with other width/depth coefficients: the cheap checks run
# on every model, the expensive ones (backward, trace, ONNX) on one model per code path to keep the suite fast.
EXPORT_CHECKED_NAMES = [name for name in MODEL_NAMES if name not in list_models("efficientnet3d_b[1-6]")]
BATCH = 2


def build(name: str, seed: int = 0, **overrides) -> nn.Module:
    """The tiny configuration of ``name`` (plus ``overrides``), initialised under ``seed``."""
    torch.manual_seed(seed)
    return create_model(name, **{**get_model_entry(name).tiny_kwargs, **overrides})


def example_input(name: str, batch: int = BATCH, seed: int = 1) -> torch.Tensor:
    shape = get_model_entry(name).tiny_input_shape
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Eval mode, plus the model's own export preparation (e.g. MONAI's non-memory-efficient swish)."""
    model.eval()
    if hasattr(model, "prepare_for_export"):
        model.prepare_for_export()
    return model


def test_registry_is_populated() -> None:
    expected = {"vgg11_3d", "vgg13_3d", "vgg16_3d", "vgg19_3d", "vit3d", "vggvit3d"}
    assert expected <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_returns_one_float_tensor_of_logits(name: str) -> None:
    x = example_input(name)
    for num_classes in (2, 3):
        model = build(name, num_classes=num_classes).eval()
        with torch.no_grad():
            logits = model(x)
        assert isinstance(logits, torch.Tensor)
        assert logits.shape == (BATCH, num_classes)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", EXPORT_CHECKED_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = build(name).train()
    logits = model(example_input(name))
    # Random weights per logit, so no parameter is spared by a symmetry of the loss (e.g. sum over classes).
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weights).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert [n for n, p in trainable if p.grad is None] == []
    assert [n for n, p in trainable if not torch.isfinite(p.grad).all()] == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_features_match_feature_info_and_head(name: str) -> None:
    model = build(name).eval()
    x = example_input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        head_logits = model.forward_head(features)
        heads = model.forward_heads(x) if hasattr(model, "forward_heads") else None

    assert isinstance(features, list) and features
    assert len(features) == len(model.feature_info)
    # A feature is [*leading, num_chs, *ceil(spatial / reduction)]; the leading axes are those of the input before
    # its channel axis (the batch, and the slices of a multi-slice 2.5D input).
    rank = spatial_rank(model)
    leading, spatial_in = tuple(x.shape[: -rank - 1]), x.shape[-rank:]
    for index, (feature, info) in enumerate(zip(features, model.feature_info)):
        assert set(info) >= {"num_chs", "reduction", "module"}, f"feature_info[{index}] misses keys"
        model.get_submodule(info["module"])  # the module path must exist (feature taps hook on it)
        expected = (*leading, info["num_chs"], *(math.ceil(n / info["reduction"]) for n in spatial_in))
        assert tuple(feature.shape) == expected, f"feature {index} of {name}: {tuple(feature.shape)} != {expected}"
    torch.testing.assert_close(head_logits, logits)

    if heads is not None:
        assert isinstance(heads, tuple) and len(heads) == 2
        assert all(h.shape == logits.shape for h in heads)
        torch.testing.assert_close((heads[0] + heads[1]) / 2, logits)


@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
@pytest.mark.parametrize("name", EXPORT_CHECKED_NAMES)
def test_torchscript_trace_matches_eager(name: str) -> None:
    model = prepare_for_export(build(name))
    with torch.no_grad():
        traced = torch.jit.trace(model, example_input(name), check_trace=False)  # checked below, on fresh data
        fresh = example_input(name, seed=3)  # not the tracing input, so nothing input-specific got baked in
        torch.testing.assert_close(traced(fresh), model(fresh), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
@pytest.mark.parametrize("name", EXPORT_CHECKED_NAMES)
def test_torchscript_script_matches_eager(name: str) -> None:
    """``torch.jit.script`` (MONAI's ``ckpt_export`` default, the model zoo's check) compiles every model."""
    model = prepare_for_export(build(name))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        x = example_input(name)
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
@pytest.mark.parametrize("name", EXPORT_CHECKED_NAMES)
def test_onnx_export_matches_eager_with_dynamic_batch(name: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = prepare_for_export(build(name))
    path = tmp_path / f"{name}.onnx"
    # The TorchScript-based exporter writes opset 17 exactly; the dynamo exporter needs opset 18 for these models.
    torch.onnx.export(
        model,
        (example_input(name),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}.get("", 0) == 17

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = example_input(name, batch=BATCH + 1, seed=4)  # another batch size than at export
    (onnx_logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        eager = model(x)
    torch.testing.assert_close(torch.from_numpy(onnx_logits), eager, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_initialisation_is_deterministic_under_a_seed(name: str) -> None:
    first, second, other = build(name, seed=123).state_dict(), build(name, seed=123).state_dict(), build(name, seed=7)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = other.state_dict()
    assert any(not torch.equal(first[k], other[k]) for k in first), "the seed has no effect on the initialisation"
