import copy
import sys
import types

import pytest
import torch
from torch import nn

from conftest import BatchFoldingNet
from scconv_surgery._capture import LayerCalls, probe_calls
from scconv_surgery.errors import ModelForwardError
from scconv_surgery.pipeline import DryRun, WriteCheckpoint, run_conversion
from scconv_surgery.probe import ModuleCall, keeps_running_stats, probe_example, probe_model


class ConvNormNet(nn.Module):
    """A stem, a block (conv, Identity, BatchNorm, ReLU) and a conv followed by a ReLU then a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.Identity(), nn.BatchNorm2d(16),
                                   nn.ReLU())
        self.late = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.late(self.block(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def test_probe_records_order_shapes_and_the_norm_after_each_module():
    torch.manual_seed(0)
    model = ConvNormNet().train()
    model.head.eval()
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    probe = probe_model(model, (3, 8, 8))
    assert torch.equal(torch.rand(1), expected_next)  # the dummy batch has its own generator
    assert probe.input_shape == (1, 3, 8, 8) and probe.model == "ConvNormNet"
    assert probe.order == ("stem", "block.0", "block.1", "block.2", "block.3", "late", "act", "norm", "head")
    assert list(probe.calls) == ["stem", "block", "block.0", "block.1", "block.2", "block.3", "late", "act", "norm",
                                 "head"]
    assert probe.calls["block.0"] == (ModuleCall((1, 16, 8, 8), (1, 16, 8, 8)),)
    assert probe.first_call("head") == ModuleCall((1, 16), (1, 5))
    # past the Identity to block.2; late is followed by a ReLU, so no norm "after" it
    assert probe.norm_after("block.0") == "block.2" and probe.norm_after("late") is None
    assert probe.norm_after("act") == "norm" and probe.norm_after("stem") is None
    assert probe.running_stats == ("block.2", "norm")
    # nothing left behind: hooks, modes, buffers
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training and not model.head.training and model.block.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert probe == probe_model(model, (3, 8, 8))  # a value: the same model and size give the same probe


def test_probe_keeps_each_call_s_batch_and_calls_drop_it():
    shared = nn.Conv2d(16, 16, 3, padding=1)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    probe = probe_example(twice, torch.zeros(1, 16, 6, 6))
    assert probe.calls["0"] == (ModuleCall((1, 16, 6, 6), (1, 16, 6, 6)),) * 2  # "2" is an alias of "0"
    assert probe_calls(probe, ["0"]) == [LayerCalls("0", ((16, 6, 6),) * 2, ((16, 6, 6),) * 2)]
    assert probe_calls(twice, ["0"], torch.zeros(1, 16, 6, 6)) == probe_calls(probe, ["0"])  # the model path
    folding = probe_model(BatchFoldingNet(), (16, 5, 5))
    assert folding.first_call("conv") == ModuleCall((2, 16, 5, 5), (2, 16, 5, 5))
    with pytest.raises(ValueError, match="example="):
        probe_calls(probe, ["0"], torch.zeros(1, 16, 6, 6))


def test_probe_on_the_meta_device_and_a_failing_forward():
    probe = probe_model(ConvNormNet().to("meta"), (3, 8, 8))
    assert probe.first_call("late") == ModuleCall((1, 16, 8, 8), (1, 16, 8, 8))
    model = ConvNormNet()
    with pytest.raises(ModelForwardError) as caught:
        probe_model(model, (4, 8, 8))  # the stem takes 3 channels
    assert caught.value.input_shape == (1, 4, 8, 8)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError):  # a given example: the model's own error
        probe_example(model, torch.zeros(1, 4, 8, 8))


class OwnStatistics(nn.Module):
    """A custom norm keeping running statistics as buffers (no nn.BatchNorm base)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.running_mean[:, None, None]) / self.running_var[:, None, None].sqrt()


def test_which_modules_keep_running_statistics():
    import torchvision
    assert keeps_running_stats(nn.BatchNorm1d(4)) and keeps_running_stats(nn.BatchNorm3d(4))
    assert keeps_running_stats(nn.SyncBatchNorm(4)) and keeps_running_stats(OwnStatistics(4))
    assert keeps_running_stats(torchvision.ops.FrozenBatchNorm2d(4))
    assert keeps_running_stats(nn.InstanceNorm2d(4, track_running_stats=True))
    assert not keeps_running_stats(nn.BatchNorm2d(4, track_running_stats=False))
    assert not keeps_running_stats(nn.GroupNorm(2, 4)) and not keeps_running_stats(nn.Conv2d(4, 4, 1))


class CountedNet(nn.Module):
    """A stem, a replaceable conv and its BatchNorm; every forward of every copy is logged by identity."""

    forwards: list[int] = []

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        CountedNet.forwards.append(id(self))
        return torch.relu(self.bn(self.conv(self.stem(x))))


@pytest.fixture
def counted_factory(monkeypatch) -> tuple[str, list[nn.Module]]:
    built: list[nn.Module] = []
    module = types.ModuleType("scconv_test_counted")
    module.build = lambda: built.append(CountedNet()) or built[-1]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(CountedNet, "forwards", [])
    return "factory:scconv_test_counted:build", built


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "out"])
def test_run_conversion_runs_the_base_model_twice_and_the_converted_once(counted_factory, tmp_path, dry_run):
    """The base model: the probe and fvcore's trace; the converted model: fvcore's trace only (the
    shape check runs each replacement alone, the stale norms come from the base model's probe)."""
    name, built = counted_factory
    path = tmp_path / "m.pt"
    result = run_conversion(name, input_size=(3, 16, 16), output=DryRun(path) if dry_run else WriteCheckpoint(path),
                            reset_bn_stats=True)
    (base,) = built
    assert [d.name for d in result.plan.replaced] == ["conv"] and result.stale_batchnorms == ("bn",)
    assert CountedNet.forwards.count(id(base)) == 2
    assert CountedNet.forwards.count(id(result.model)) == 1
    assert len(CountedNet.forwards) == 3


class _ReadsElsewhere(nn.Module):
    """``conv``'s weight read by the model's own forward (its shape) and by ``user``'s forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.user = _WeightUser(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.user(x) * self.conv.weight.shape[0]


class _WeightUser(nn.Module):
    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.convs = [conv]  # a plain list: not a submodule, its parameters not registered here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, self.convs[0].weight, padding=1)


def test_probe_records_which_forwards_read_another_module_s_parameters():
    probe = probe_model(_ReadsElsewhere(), (4, 6, 6))
    assert dict(probe.outside_reads) == {"conv": ("user", "")}  # "": the model's own forward


def test_probe_sees_no_outside_read_in_an_ordinary_model():
    import torchvision

    assert dict(probe_model(torchvision.models.resnet18(), (3, 32, 32)).outside_reads) == {}
