import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scconv_surgery import ScConv, calibrate, convert
from scconv_surgery.errors import CalibrationError
from scconv_surgery.calibration import BatchNormUpdate, CalibrationStrategy
from scconv_surgery.finetune import recompute_batchnorm_stats
from scconv_surgery._capture import LayerCalls, group_by_bytes, probe_calls, record


class ConvBNNet(nn.Module):
    """Three conv-BN-ReLU stages (the middle one strided and widening) and a head; two replaceable convs."""

    def __init__(self, width: int = 16):
        super().__init__()

        def stage(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.stem = stage(3, width)
        self.body = nn.Sequential(stage(width, width), stage(width, 2 * width, 2))
        self.head = nn.Linear(2 * width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class UnusedBranchNet(ConvBNNet):
    """A replaceable conv that the forward never calls."""

    def __init__(self):
        super().__init__()
        self.spare = nn.Conv2d(16, 16, 3, padding=1)


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Images with spatial structure (upsampled noise plus a little grain), like natural images."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=size, mode="bilinear", align_corners=False)
    return coarse + 0.1 * torch.randn(n, 3, size, size, generator=g)


@pytest.fixture
def models():
    torch.manual_seed(0)
    original = ConvBNNet().eval()
    with torch.no_grad():  # statistics that fit the images, as a trained network's would
        recompute_batchnorm_stats(original, smooth_images(64, seed=1), batch_size=64)
    converted, plan = convert(original)
    assert [d.name for d in plan.replaced] == ["body.0.0", "body.1.0"]
    return original, converted


def layer_io(model: nn.Module, name: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of a layer on one forward (eval)."""
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.update(x=a[0], y=o))
    with torch.no_grad():
        model.eval()(images)
    handle.remove()
    return seen["x"], seen["y"]


def relative_error(output: torch.Tensor, target: torch.Tensor) -> float:
    return float((output - target).square().sum() / target.square().sum())


@pytest.mark.parametrize("strategy", list(CalibrationStrategy), ids=lambda s: s.value)
def test_calibration_lowers_every_layers_error_on_unseen_images(models, strategy):
    original, converted = models
    result = calibrate(original, converted, smooth_images(48), steps=60, batch_size=8, strategy=strategy)
    assert [layer.name for layer in result.layers] == ["body.0.0", "body.1.0"]
    assert result.held_out == 6 and result.num_images == 48  # min(64, 48 // 8) images kept out of the fit
    assert all(layer.error_after < 0.5 * layer.error_before for layer in result.layers), result.layers
    unseen = smooth_images(16, seed=7)
    for name in ("body.0.0", "body.1.0"):
        x, y = layer_io(original, name, unseen)  # the conv's own input and output on images never seen
        fresh = convert(original)[0].get_submodule(name)  # the same initialisation (seed 0)
        with torch.no_grad():
            error_before = relative_error(fresh(x), y)
            error_after = relative_error(converted.get_submodule(name)(x), y)
        assert error_after < 0.5 * error_before, (name, error_before, error_after)


def test_same_seed_same_tensors_and_another_seed_others(models):
    original, converted = models
    runs = []
    for seed in (0, 0, 1):
        model = copy.deepcopy(converted)
        calibrate(original, model, smooth_images(24), steps=5, batch_size=4, seed=seed)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_original_model_is_untouched_and_nothing_is_left_behind(models):
    original, converted = models
    original.train()  # a mode to keep
    converted.body.train()
    frozen = original.stem[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    calibrate(original, converted, smooth_images(16), steps=2, batch_size=4)
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())
    assert original.training and all(m.training for m in original.modules())
    assert converted.body.training and not converted.stem.training
    assert not frozen.requires_grad
    for model in (original, converted):
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(m.momentum == 0.1 for m in converted.modules() if isinstance(m, nn.BatchNorm2d))


def test_only_scconv_parameters_and_batchnorm_statistics_change(models):
    original, converted = models
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    result = calibrate(original, converted, smooth_images(16), steps=3, batch_size=4)
    changed = {k for k, v in converted.state_dict().items() if not torch.equal(before[k], v)}
    scconv = {k for k in before if k.startswith(("body.0.0.", "body.1.0."))}
    statistics = {f"{bn}.{s}" for bn in result.batchnorms for s in ("running_mean", "running_var", "num_batches_tracked")}
    assert result.batchnorms == ("stem.1", "body.0.1", "body.1.1")
    assert changed <= scconv | statistics and scconv <= changed


@pytest.mark.parametrize("update, expected", [
    (BatchNormUpdate.ALL, ("stem.1", "body.0.1", "body.1.1")),
    (BatchNormUpdate.AFTER_REPLACED, ("body.0.1", "body.1.1")),
    (BatchNormUpdate.NONE, ()),
], ids=lambda v: getattr(v, "value", None))
def test_batchnorm_update_choice(models, update, expected):
    original, converted = models
    result = calibrate(original, converted, smooth_images(8), steps=0, batchnorm=update)
    assert result.batchnorms == expected


def test_recompute_batchnorm_stats_is_the_plain_average_over_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.BatchNorm2d(4)).eval()
    images = torch.randn(12, 3, 5, 5)
    names = recompute_batchnorm_stats(model, images, batch_size=6)
    assert names == ["1", "3"]
    with torch.no_grad():
        y = model[0](images)
    halves = (y[:6], y[6:])
    mean = sum(h.mean((0, 2, 3)) for h in halves) / 2  # momentum=None: the average of the batch statistics
    var = sum(h.var((0, 2, 3), unbiased=True) for h in halves) / 2
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 2 and model[1].momentum == 0.1
    assert not model.training and not any(m.training for m in model.modules())
    # the dropout stayed off: the second BatchNorm saw the first one's output unmasked, in batch mode
    with torch.no_grad():
        z = F.batch_norm(y[:6], None, None, model[1].weight, model[1].bias, training=True)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


class AuxHeadNet(nn.Module):
    """A BatchNorm in an auxiliary head that only runs in train mode (as inception_v3's AuxLogits)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.aux = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.aux(y) if self.training else y


def test_a_batchnorm_the_forward_never_calls_keeps_its_statistics():
    model = AuxHeadNet().eval()
    model.aux.running_mean.fill_(3.0)
    assert recompute_batchnorm_stats(model, torch.randn(4, 3, 5, 5)) == ["body.1"]
    assert torch.equal(model.aux.running_mean, torch.full((4,), 3.0)) and int(model.aux.num_batches_tracked) == 0


def test_a_conv_called_twice_is_fitted_on_both_calls_and_an_uncalled_one_is_reported():
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1))
    conv = nn.Conv2d(16, 16, 3, padding=1)
    original = nn.Sequential(shared, conv, nn.ReLU(), conv).eval()  # one conv, called twice
    converted, plan = convert(original)
    assert [(d.name, d.aliases) for d in plan.replaced] == [("1", ("3",))]
    calls = probe_calls(original, ["1"], torch.zeros(1, 3, 8, 8))
    assert calls == [LayerCalls("1", ((16, 8, 8), (16, 8, 8)), ((16, 8, 8), (16, 8, 8)))]
    result = calibrate(original, converted, smooth_images(16, size=8), steps=20, batch_size=4)
    assert [layer.name for layer in result.layers] == ["1"] and result.layers[0].error_after < result.layers[0].error_before

    unused = UnusedBranchNet().eval()
    converted, _ = convert(unused)
    result = calibrate(unused, converted, smooth_images(8), steps=1)
    assert result.uncalled == ("spare",) and [layer.name for layer in result.layers] == ["body.0.0", "body.1.0"]


def test_record_keeps_exact_inputs_and_outputs_and_stops_early():
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    images = torch.randn(5, 3, 8, 8)
    head_calls = []
    model.head.register_forward_hook(lambda *a: head_calls.append(1))
    layers = probe_calls(model, ["body.0.0", "body.1.0"], images[:1])
    head_calls.clear()
    recorded = record(model, layers[:1], images, batch_size=2, inputs=True, outputs=True, dtype=torch.float32)
    x, y = layer_io(model, "body.0.0", images)
    head_calls.pop()  # layer_io's own full forward
    torch.testing.assert_close(recorded["body.0.0"][0], x)  # batches of 2 vs 5: float rounding only
    torch.testing.assert_close(recorded["body.0.0"][1], y)
    assert head_calls == []  # every forward stopped after body.0.0


def test_group_by_bytes_keeps_groups_under_the_bound():
    a = LayerCalls("a", ((4, 10, 10),), ((4, 5, 5),))  # inputs: 400 values per image; outputs: 100
    b = LayerCalls("b", ((8, 5, 5),), ((8, 5, 5),))  # 200 and 200
    big = LayerCalls("big", ((16, 10, 10),), ((16, 10, 10),))  # 1600: over the bound alone

    def names(groups):
        return [[layer.name for layer in group] for group in groups]

    def inputs(c):  # bfloat16, 10 images: a = 8,000 bytes, b = 4,000, big = 32,000
        return 2 * 10 * c.values_per_image(), 0
    assert names(group_by_bytes([a, b, big, a, a, b], inputs, 12_000)) == [["a", "b"], ["big"], ["a"], ["a", "b"]]

    def outputs_and_input(c):  # held: outputs (a 2,000, b 4,000); transient: the largest input
        return 2 * 10 * c.values_per_image(inputs=False, outputs=True), 2 * 10 * c.values_per_image()
    assert names(group_by_bytes([a, b, a, b], outputs_and_input, 16_000)) == [["a", "b", "a"], ["b"]]


def test_bfloat16_model_is_fitted_in_float32_and_keeps_its_dtype(models):
    original, converted = models
    original, converted = original.to(torch.bfloat16), converted.to(torch.bfloat16)
    result = calibrate(original, converted, smooth_images(16), steps=20, batch_size=4)
    assert all(p.dtype == torch.bfloat16 for p in converted.parameters())
    assert all(layer.error_after < layer.error_before for layer in result.layers)


@pytest.mark.parametrize("kwargs, words", [
    ({"images": torch.zeros(0, 3, 8, 8)}, "non-empty (N, C, H, W)"),
    ({"images": torch.zeros(3, 8, 8)}, "non-empty (N, C, H, W)"),
    ({"steps": -1}, "'steps': must be an integer >= 0"),
    ({"batch_size": 0}, "'batch_size'"),
    ({"lr": float("nan")}, "'lr'"),
    ({"layers": ["body.9"]}, "'body.9': the original model has no such module"),
    ({"device": "cuda:0"}, "CUDA is not available"),
    ({"images": torch.zeros(4, 1, 16, 16)}, "forward fails on one image of shape (1, 1, 16, 16)"),
], ids=["empty", "3d", "steps", "batch", "lr", "layer", "cuda", "channels"])
def test_bad_calls_raise_calibration_error_before_any_change(models, kwargs, words):
    original, converted = models
    if "cuda" in str(kwargs.get("device")) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    state = {k: v.clone() for k, v in converted.state_dict().items()}
    images = kwargs.pop("images", smooth_images(4))
    with pytest.raises(CalibrationError) as info:
        calibrate(original, converted, images, **kwargs)
    assert words in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in converted.state_dict().items())


def test_a_model_without_scconv_is_refused():
    model = ConvBNNet()
    with pytest.raises(CalibrationError, match="holds no SCConv; convert it first"):
        calibrate(model, copy.deepcopy(model), smooth_images(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_calibration_returns_the_models_to_their_devices(models):
    original, converted = models
    result = calibrate(original, converted, smooth_images(32), steps=30, batch_size=8, device="cuda")
    assert result.device.startswith("cuda")
    assert all(p.device.type == "cpu" for m in (original, converted) for p in m.parameters())
    assert all(layer.error_after < layer.error_before for layer in result.layers)



@pytest.mark.parametrize("kwargs, option", [
    ({"lr": float("inf")}, "lr"),
    ({"lr": 0}, "lr"),
    ({"num_images": 0}, "num_images"),
    ({"max_cache_bytes": 0}, "max_cache_bytes"),
    ({"seed": -1}, "seed"),
    ({"steps": 1.5}, "steps"),
], ids=["lr infinite", "lr zero", "no images", "no cache", "negative seed", "fractional steps"])
def test_one_check_of_the_options_names_the_option(kwargs, option):
    from scconv_surgery.calibration import check_calibration_options

    with pytest.raises(CalibrationError) as info:
        check_calibration_options(**{"steps": 1, "batch_size": 1, "lr": 1e-2, **kwargs})
    assert info.value.name == option
    check_calibration_options(steps=0, batch_size=1, lr=1e-2, num_images=1, max_cache_bytes=1, seed=0)


class ToOnePixelNet(ConvBNNet):
    """Strided stages down to a 1x1 map whose BatchNorm sees one value per channel per image."""

    def __init__(self):
        super().__init__()
        self.body.append(nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()))
        self.body.append(nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()))


def test_batch_size_1_re_estimates_batchnorms_after_1x1_maps_in_batches_of_two():
    """A BatchNorm in train mode needs more than one value per channel: after a 1x1 map, batches of
    one image cannot re-estimate it, so re-estimation reads batches of at least two."""
    torch.manual_seed(0)
    original = ToOnePixelNet().eval()
    converted, plan = convert(original)
    assert "body.3.0" in [d.name for d in plan.replaced]
    images = smooth_images(5, size=8)
    result = calibrate(original, converted, images, steps=2, batch_size=1)  # died after fitting every layer
    assert [layer.name for layer in result.layers] == [d.name for d in plan.replaced]
    assert result.batchnorms == ("stem.1", "body.0.1", "body.1.1", "body.2.1", "body.3.1")
    last = converted.body[3][1]
    assert int(last.num_batches_tracked) == 2  # images 0-1, then 2-4 (a lone last image joins the batch before)
    assert torch.isfinite(last.running_var).all() and (last.running_var > 0).all()

    one = smooth_images(1, size=8)
    before = copy.deepcopy(converted.state_dict())
    with pytest.raises(CalibrationError, match="at least 2 images: 'body.3.1'") as caught:
        calibrate(original, converted, one, steps=2, batch_size=1)  # refused before any fitting
    assert caught.value.name == "images"
    assert all(torch.equal(v, before[k]) for k, v in converted.state_dict().items())
    result = calibrate(original, converted, one, steps=1, batch_size=1, batchnorm=BatchNormUpdate.NONE)
    assert result.batchnorms == ()


def test_recompute_batchnorm_stats_with_batch_size_1_averages_batches_of_two():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4)).eval()
    images = torch.randn(5, 3, 3, 3)
    assert recompute_batchnorm_stats(model, images, batch_size=1) == ["2"]
    with torch.no_grad():
        y = model[1](model[0](images))
    batches = (y[:2], y[2:])
    mean = sum(b.mean((0, 2, 3)) for b in batches) / 2
    var = sum(b.var((0, 2, 3), unbiased=True) for b in batches) / 2
    torch.testing.assert_close(model[2].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[2].running_var, var, rtol=1e-5, atol=1e-6)
    assert int(model[2].num_batches_tracked) == 2 and model[2].momentum == 0.1
    saved = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationError, match="'2' sees one value per channel"):
        recompute_batchnorm_stats(model, images[:1], batch_size=1)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_the_progress_ends_on_the_final_loss_the_table_shows(models):
    """One "final loss": the last value on_fit reports is LayerCalibration.loss (the mean of the last
    tenth of the steps), not the last step's own loss."""
    original, converted = models
    seen: dict[str, float] = {}
    result = calibrate(original, converted, smooth_images(24), steps=20, batch_size=4,
                       on_fit=lambda name, step, steps, loss: seen.__setitem__(name, loss))
    assert seen == {layer.name: layer.loss for layer in result.layers}


def test_a_zero_target_gives_an_undefined_error_not_inf():
    """Norms that zero every activation: each replaced conv's target is 0, so sum(y**2) is 0."""
    torch.manual_seed(0)
    original = ConvBNNet().eval()
    with torch.no_grad():
        for module in original.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.zero_()
                module.bias.zero_()
    converted, _ = convert(original)
    result = calibrate(original, converted, smooth_images(16), steps=0, batch_size=8)
    assert [(layer.error_before, layer.error_after, layer.undefined) for layer in result.layers] == \
        [(None, None, True)] * 2
    assert all(layer.loss is None for layer in result.layers)  # 0 steps: no loss (was NaN)
    assert json.dumps(result.to_dict(), allow_nan=False)  # strict JSON
