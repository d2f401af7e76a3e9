"""verify_checkpoint: loads, output shapes and finiteness tensor by tensor, untouched weights."""
import pytest
import torch

from scconv_surgery import verify_checkpoint
from scconv_surgery.models import ModelSource
from scconv_surgery.pipeline import run_conversion


@pytest.mark.parametrize("kind, paths", [
    ("list", ["output[0] (2, 5)", "output[1][0] (2, 16, 8, 8)", "output[1][1] (2, 5)"]),
    ("tuple", ["output[0] (2, 5)", "output[1][0] (2, 16, 8, 8)", "output[1][2] (2, 5)"]),
    ("namedtuple", ["output.logits (2, 5)", "output.features['map'] (2, 16, 8, 8)", "output.features['aux'] (2, 5)"]),
    ("dict", ["output['out'] (2, 5)", "output['features'] (2, 16, 8, 8)", "output['aux'] (2, 5)"]),
])
def test_nested_outputs_are_checked_tensor_by_tensor(kind, paths, toy_factory, tmp_path):
    ckpt = tmp_path / f"{kind}.pt"
    run_conversion(ModelSource.parse(f"{toy_factory}:nested", kwargs={"kind": kind}), output=ckpt, input_size=(3, 8, 8))
    result = verify_checkpoint(ckpt)
    checks = {c.name: c for c in result.checks}
    assert result.passed, result.to_dict()
    assert checks["output shape"].detail == "3 tensors, each of the base model's shape: " + ", ".join(paths)
    assert checks["finite output"].detail == "all finite"


def test_a_non_finite_tensor_is_named_by_its_path(toy_factory, tmp_path):
    ckpt = tmp_path / "dict.pt"
    run_conversion(ModelSource.parse(f"{toy_factory}:nested", kwargs={"kind": "dict"}), output=ckpt, input_size=(3, 8, 8))
    payload = torch.load(ckpt, weights_only=True)
    payload["state_dict"]["aux.bias"] = torch.full((5,), float("nan"))
    torch.save(payload, ckpt)
    checks = {c.name: c for c in verify_checkpoint(ckpt).checks}
    assert checks["output shape"].passed
    assert not checks["finite output"].passed
    assert checks["finite output"].detail == "NaN or inf in output['aux']"
    assert checks["finite output"].keys == ("output['aux']",)


def test_features_only_model_verifies(tmp_path):
    """timm's features_only models return a list of feature maps (verify crashed on it)."""
    ckpt = tmp_path / "features.pt"
    run_conversion(ModelSource.parse("timm:test_resnet", kwargs={"features_only": True}), output=ckpt, input_size=(3, 32, 32))
    result = verify_checkpoint(ckpt)
    assert result.passed, result.to_dict()
    detail = {c.name: c for c in result.checks}["output shape"].detail
    assert detail.startswith("5 tensors, each of the base model's shape: output[0] (2, ")


@pytest.mark.parametrize("edit, words", [
    pytest.param(lambda sd: sd.pop("block1.cru.gwc.weight"), "missing ['block1.cru.gwc.weight']", id="missing key"),
    pytest.param(lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected ['extra.weight']",
                 id="unexpected key"),
    pytest.param(lambda sd: sd.__setitem__("head.weight", torch.zeros(3, 32)), "size mismatch for head.weight",
                 id="wrong shape"),
])
def test_a_state_dict_that_does_not_fit_is_a_failed_check(edit, words, toy_factory, tmp_path):
    """Exit 4 (a check failed), not 2: the file is a readable checkpoint, it just does not load."""
    path = tmp_path / "tiny.pt"
    run_conversion(f"{toy_factory}:tiny", output=path, input_size=(3, 16, 16))
    payload = torch.load(path, weights_only=True)
    edit(payload["state_dict"])
    torch.save(payload, path)
    result = verify_checkpoint(path)
    assert not result.passed
    (check,) = result.checks
    assert check.name == "loads" and words in check.detail


def test_weights_of_another_architecture_are_named_as_such(tmp_path):
    import timm

    ckpt, weights = tmp_path / "m.pt", tmp_path / "bigger.pt"
    run_conversion("timm:test_resnet", output=ckpt, input_size=(3, 32, 32))
    torch.manual_seed(1)  # other weights, and one tensor the model does not have
    other = timm.create_model("test_resnet").state_dict()
    other["extra_block.weight"] = torch.zeros(2)
    torch.save(other, weights)
    check = {c.name: c for c in verify_checkpoint(ckpt, weights=weights).checks}["untouched weights"]
    assert not check.passed
    assert "1 in the file but not in the model: weights of another architecture? (extra_block.weight)" in check.detail
    assert "missing from the file" not in check.detail  # no empty "0 missing ()" part
    assert check.detail.index("another architecture") < check.detail.index("differ")  # the likely cause first


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_verify_runs_each_model_in_its_own_dtype(dtype, toy_factory, tmp_path):
    ckpt = tmp_path / "m.pt"
    run_conversion(ModelSource.parse(f"{toy_factory}:tiny_dtype", kwargs={"dtype": str(dtype).removeprefix("torch.")}),
                   output=ckpt, input_size=(3, 8, 8))
    result = verify_checkpoint(ckpt)
    assert result.passed, result.to_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_verify_runs_a_cuda_model_on_its_device(toy_factory, tmp_path, monkeypatch):
    import sys

    module = sys.modules[toy_factory.removeprefix("factory:")]
    monkeypatch.setattr(module, "tiny", lambda: module.tiny_dtype("float32").cuda())
    ckpt = tmp_path / "m.pt"
    run_conversion(f"{toy_factory}:tiny", output=ckpt, input_size=(3, 8, 8))
    assert verify_checkpoint(ckpt).passed


def test_data_dependent_leaves_of_a_torchvision_detector():
    """fasterrcnn: the boxes, labels and scores of each image have one row per detection."""
    import torchvision

    from scconv_surgery.contracts import DataDependentShapes, data_dependent_leaves

    torch.manual_seed(0)
    model = torchvision.models.get_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights=None,
                                         weights_backbone=None).eval()
    shapes = DataDependentShapes()
    with torch.no_grad(), shapes:
        out = model(torch.randn(1, 3, 64, 64))
    assert data_dependent_leaves(out, shapes) == {"output[0]['boxes']", "output[0]['labels']", "output[0]['scores']"}
    plain = DataDependentShapes()
    with torch.no_grad(), plain:
        logits = torchvision.models.resnet18().eval()(torch.randn(1, 3, 32, 32))
    assert data_dependent_leaves(logits, plain) == frozenset()
