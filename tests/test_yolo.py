"""ultralytics YOLO models: by YAML name, from a trusted .pt, the yolo preset, fusing, and the
round trip through ultralytics' own .pt (predict, train, val, ONNX export). Offline, at imgsz 64."""
import copy
import hashlib
import importlib.util
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

if importlib.util.find_spec("ultralytics") is None:  # the optional extra 'yolo'
    pytest.skip("ultralytics is not installed (pip install -e '.[yolo]')", allow_module_level=True)

from scconv_surgery import load, read_checkpoint  # noqa: E402
from scconv_surgery.cli.app import app  # noqa: E402
from scconv_surgery.errors import MissingExtraError, UnknownModelError, WeightsFileError  # noqa: E402
from scconv_surgery.fuse import FusedScConv  # noqa: E402
from scconv_surgery.layers import ScConv  # noqa: E402
from scconv_surgery.models import ModelSource, create_model, rebuild_base  # noqa: E402


def YOLO(*args):  # noqa: N802 (ultralytics' name); imported when a test runs, not when pytest collects
    from ultralytics import YOLO as _YOLO

    return _YOLO(*args)


def yolo_module():
    from scconv_surgery import yolo

    return yolo

runner = CliRunner()
SIZE = "3x64x64"
YOLOV8N_SEG_REPLACED = 20  # the same C2f bottlenecks as yolov8n
YOLOV8N_BOTTLENECKS = [f"model.{i}.m.{j}.cv{k}.conv" for i, n in ((2, 1), (4, 2), (6, 2), (8, 1), (12, 1), (15, 1),
                                                                  (18, 1), (21, 1)) for j in range(n) for k in (1, 2)]


def invoke(*args):
    return runner.invoke(app, list(args))


def images(folder, count, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = (np.random.default_rng(i).random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return folder


def x64(seed=0):
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dense_pt(tmp_path_factory):
    """A dense yolov8n (2 classes) saved by ultralytics itself, with BatchNorm statistics that are not 0/1."""
    path = tmp_path_factory.mktemp("dense") / "dense.pt"
    model = YOLO("yolov8n.yaml").model
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.save({"model": model, "train_args": {"task": "detect"}}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, dense_pt):
    """``scconv convert ultralytics:dense.pt --trust-pickle --preset yolo --out --yolo-out``."""
    folder = tmp_path_factory.mktemp("converted")
    out, yolo_out = folder / "model.pt", folder / "model_yolo.pt"
    result = invoke("convert", f"ultralytics:{dense_pt}", "--trust-pickle", "--preset", "yolo", "--input-size", SIZE,
                    "--num-classes", "2", "--out", str(out), "--yolo-out", str(yolo_out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["output"], doc["yolo_output"], doc["would_write_yolo"]) == (str(out), str(yolo_out), None)
    return out, yolo_out, doc


def test_yolov8n_and_yolo11n_build_by_yaml_name_offline_with_nc():
    for name, nc in (("yolov8n.yaml", 3), ("yolo11n.yaml", 80)):
        model, source = create_model(f"ultralytics:{name}", num_classes=nc if nc != 80 else None)
        assert isinstance(model, yolo_module().ScConvDetectionModel) and not model.training
        assert model.yaml["nc"] == nc and model.model[-1].nc == nc
        assert source.library == "ultralytics" and source.name == name


def test_a_yaml_path_builds(tmp_path):
    from ultralytics.nn.tasks import yaml_model_load
    import yaml

    cfg = {k: v for k, v in yaml_model_load("yolov8n.yaml").items() if k not in ("yaml_file", "scale")}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**cfg, "scale": "n"}))
    model, source = create_model(f"ultralytics:{path}", model_kwargs={"nc": 4})
    assert model.yaml["nc"] == 4 and source.name == str(path)


def test_unknown_yaml_is_named_with_close_names():
    with pytest.raises(UnknownModelError, match="ultralytics ships no model YAML") as err:
        create_model("ultralytics:yolov8q.yaml")
    assert "ultralytics:yolov8.yaml" in err.value.suggestions


def test_bad_inputs_exit_2_naming_the_input_and_the_fix_and_write_nothing(tmp_path, monkeypatch, dense_pt):
    monkeypatch.chdir(tmp_path)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "state_dict.pt")
    (tmp_path / "broken.yaml").write_text("nc: 2\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]\nhead: [\n")
    (tmp_path / "headless.yaml").write_text("nc: 2\nbackbone: []\n")
    cases = [
        (["ultralytics:broken.yaml"], ["invalid model", "broken.yaml", "not a valid YAML file"]),
        (["ultralytics:headless.yaml"], ["invalid model", "headless.yaml", "no 'head' list"]),
        (["ultralytics:no/such/dir/my.yaml"], ["no/such/dir/my.yaml", "no such file"]),
        (["ultralytics:yolov8n.yaml", "--pretrained"], ["pretrained", "downloads", "--trust-pickle"]),
        (["ultralytics:missing.yaml"], ["missing.yaml", "ships"]),
        ([f"ultralytics:{dense_pt}"], ["dense.pt", "runs code", "--trust-pickle"]),
        (["ultralytics:state_dict.pt", "--trust-pickle"], ["state_dict.pt", "not a YOLO checkpoint"]),
        (["resnet18", "--yolo-out", "y.pt"], ["y.pt", "ultralytics:MODEL.yaml"]),
        (["ultralytics:yolov8n.yaml", "--weights", str(dense_pt)], ["dense.pt", f"ultralytics:{dense_pt}",
                                                                    "--trust-pickle"]),
        (["ultralytics:rtdetr-l.yaml"], ["rtdetr-l.yaml", "RTDETRDecoder", "supported: detection, segmentation"]),
    ]
    for args, words in cases:
        result = invoke("convert", *args, "--input-size", SIZE, "--out", "out.pt")
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr.replace("\n", ""), (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "headless.yaml", "state_dict.pt"]


def test_neither_output_may_overwrite_the_yolo_pt_it_reads(tmp_path, dense_pt):
    base = tmp_path / "best.pt"
    base.write_bytes(dense_pt.read_bytes())
    for outputs, word in ((["--out", str(base)], "base weights file"),
                          (["--out", str(tmp_path / "m.pt"), "--yolo-out", str(base)], "base model's file")):
        result = invoke("convert", f"ultralytics:{base}", "--trust-pickle", "--force", *outputs)
        assert result.exit_code == 2 and word in result.stderr.replace("\n", ""), result.output
    assert base.read_bytes() == dense_pt.read_bytes() and not (tmp_path / "m.pt").exists()


def test_the_yolo_pt_given_where_a_checkpoint_is_expected_is_named_as_such(converted, dense_pt):
    _, yolo_out, _ = converted
    for command in (["verify", str(yolo_out)], ["report", str(yolo_out)]):
        result = invoke(*command)
        stderr = result.stderr.replace("\n", "")
        assert result.exit_code == 2 and "is a converted model in ultralytics' format" in stderr, result.output
        assert "YOLO(path)" in stderr and "unreadable" not in stderr and "hint:" not in stderr
    result = invoke("verify", str(dense_pt))  # a dense YOLO .pt: convert it
    stderr = result.stderr.replace("\n", "")
    assert result.exit_code == 2 and "is a YOLO checkpoint (ultralytics' format" in stderr, result.output
    assert f"hint: convert it with 'scconv convert ultralytics:{dense_pt} --trust-pickle" in stderr


def test_a_missing_extra_exits_2_naming_the_pip_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ultralytics" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'scconv-surgery\[yolo\]'"):
        create_model("ultralytics:yolov8n.yaml")
    result = invoke("convert", "ultralytics:yolov8n.yaml", "--out", str(tmp_path / "m.pt"))
    assert result.exit_code == 2 and "pip install 'scconv-surgery[yolo]'" in result.stderr.replace("\n", "")
    assert not (tmp_path / "m.pt").exists()


def test_a_trusted_pt_carries_its_weights_and_records_them(dense_pt):
    with pytest.raises(WeightsFileError, match="runs code") as err:
        yolo_module().read_yolo_checkpoint(dense_pt)
    assert err.value.untrusted_pickle
    model, record = rebuild_base(ModelSource.parse(f"ultralytics:{dense_pt}", trust_pickle=True))
    dense = torch.load(dense_pt, weights_only=False)["model"]
    torch.testing.assert_close(model.state_dict(), dense.state_dict())
    assert record.weights.kind.value == "file" and record.weights.name == "dense.pt"
    assert record.weights.sha256 == hashlib.sha256(dense_pt.read_bytes()).hexdigest()
    assert record.kwargs["cfg"]["backbone"] == dense.yaml["backbone"]


def test_the_yolo_preset_replaces_the_c2f_bottleneck_convs(converted):
    _, _, doc = converted
    replaced = [d["name"] for d in doc["plan"]["decisions"] if d["action"] == "replace"]
    assert replaced == YOLOV8N_BOTTLENECKS


def test_load_rebuilds_from_the_yaml_and_fuse_keeps_the_outputs(converted, dense_pt):
    out, _, doc = converted
    manifest = read_checkpoint(out).manifest
    assert [d.name for d in manifest.plan.replaced] == YOLOV8N_BOTTLENECKS
    assert manifest.source.weights.sha256 == hashlib.sha256(dense_pt.read_bytes()).hexdigest()
    model = load(out)
    assert isinstance(model, yolo_module().ScConvDetectionModel) and model.yaml["nc"] == 2
    x = x64()
    with torch.no_grad():
        before = model(x)[0]
        fused = model.fuse(verbose=False)
        after = fused(x)[0]
    assert sum(isinstance(m, FusedScConv) for m in fused.modules()) == len(YOLOV8N_BOTTLENECKS)
    assert fused.is_fused()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)


def test_yolo_loads_the_pt_predicts_and_exports_onnx(converted, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    out, yolo_out, _ = converted
    ckpt = torch.load(yolo_out, weights_only=False)
    assert [d["name"] for d in ckpt["scconv_surgery"]["replaced"]] == YOLOV8N_BOTTLENECKS
    yolo = YOLO(str(yolo_out))
    assert sum(isinstance(m, ScConv) for m in yolo.model.modules()) == len(YOLOV8N_BOTTLENECKS)
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert len(yolo.predict(pixels, imgsz=64, verbose=False)) == 1
    torch.testing.assert_close(yolo.model.state_dict(), load(out).state_dict())
    onnx_path = yolo.export(format="onnx", imgsz=64, simplify=False, dynamic=False, verbose=False)
    x = x64(1)
    with torch.no_grad():
        expected = load(out)(x)[0].numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def yolo_data(tmp_path, classes=2):
    """A tiny YOLO data set (2 train, 2 val images at 64x64) and its data.yaml."""
    root = tmp_path / "data"
    for split in ("train", "val"):
        images(root / "images" / split, 2)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(2):
            (root / "labels" / split / f"{i}.txt").write_text(f"{i % classes} 0.5 0.5 0.4 0.3\n")
    data = tmp_path / "data.yaml"
    names = "".join(f"  {i}: c{i}\n" for i in range(classes))
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return dict(data=str(data), imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False,
                project=str(tmp_path / "runs"), exist_ok=True)


def test_plain_yolo_train_trains_the_scconv_model_and_validates(converted, tmp_path):
    _, yolo_out, _ = converted
    args = yolo_data(tmp_path)
    before = {k: v.clone() for k, v in YOLO(str(yolo_out)).model.state_dict().items()}
    yolo = YOLO(str(yolo_out))
    yolo.train(epochs=1, amp=False, name="train", **args)  # ultralytics' own call: no trainer= needed
    assert type(yolo.trainer).__name__ == "ScConvDetectionTrainer"
    layers = [n for n, m in yolo.model.named_modules() if isinstance(m, ScConv)]
    assert layers == YOLOV8N_BOTTLENECKS
    last = tmp_path / "runs" / "train" / "weights" / "last.pt"
    trained = YOLO(str(last)).model
    assert [n for n, m in trained.named_modules() if isinstance(m, ScConv)] == YOLOV8N_BOTTLENECKS
    moved = [k for k, v in trained.state_dict().items() if "cru" in k and k.endswith("weight")
             and not torch.equal(v, before[k].to(v.dtype))]  # last.pt is saved in float16
    assert moved, "the SCConv weights did not train"
    metrics = yolo.val(name="val", **args)
    assert 0.0 <= metrics.box.map50 <= 1.0


def test_an_interrupted_training_resumes_as_the_scconv_model(converted, tmp_path):
    _, yolo_out, _ = converted
    args = yolo_data(tmp_path)
    yolo = YOLO(str(yolo_out))

    def interrupt(trainer):
        raise KeyboardInterrupt  # after the first epoch's last.pt is written

    yolo.add_callback("on_model_save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        yolo.train(epochs=2, amp=False, name="resume", **args)
    last = tmp_path / "runs" / "resume" / "weights" / "last.pt"
    resumed = YOLO(str(last))
    resumed.train(resume=True)
    assert type(resumed.trainer).__name__ == "ScConvDetectionTrainer" and resumed.trainer.start_epoch == 1
    assert [n for n, m in resumed.model.named_modules() if isinstance(m, ScConv)] == YOLOV8N_BOTTLENECKS


def test_trainer_builds_the_recorded_conversion_for_other_class_counts_and_from_scratch(converted, tmp_path):
    _, yolo_out, _ = converted
    yolo = YOLO(str(yolo_out))
    assert [d["name"] for d in yolo.model.yaml[yolo_module().YAML_KEY]["replaced"]] == YOLOV8N_BOTTLENECKS
    for nc, weights in ((3, yolo.model), (2, None)):  # another class count; pretrained=False
        trainer = yolo_module().ScConvDetectionTrainer(overrides={"data": yolo_data(tmp_path / str(nc), nc)["data"],
                                                                  "model": str(yolo_out), "device": "cpu"})
        trainer.data = {"nc": nc, "channels": 3, "names": {i: str(i) for i in range(nc)}}
        model = trainer.get_model(cfg=yolo.model.yaml, weights=weights, verbose=False)
        assert [n for n, m in model.named_modules() if isinstance(m, ScConv)] == YOLOV8N_BOTTLENECKS
        assert model.model[-1].nc == nc
        key = "model.2.m.0.cv1.conv.cru.pwc2.weight"
        assert torch.equal(model.state_dict()[key], yolo.model.state_dict()[key]) == (weights is not None)


def test_training_scconv_layers_without_the_record_fails_loudly(converted, tmp_path):
    _, yolo_out, _ = converted
    model = YOLO(str(yolo_out)).model
    cfg = {k: v for k, v in model.yaml.items() if k != yolo_module().YAML_KEY}  # as a hand-pickled model would be
    trainer = yolo_module().ScConvDetectionTrainer(overrides={"data": yolo_data(tmp_path)["data"],
                                                              "model": str(yolo_out), "device": "cpu"})
    trainer.data = {"nc": 2, "channels": 3, "names": {0: "a", 1: "b"}}
    with pytest.raises(ValueError, match="does not record them, so training would build and train the dense"):
        trainer.get_model(cfg=cfg, weights=model, verbose=False)


def test_a_converted_head_with_another_class_count_is_refused_by_name():
    from ultralytics.nn.tasks import DetectionModel

    from scconv_surgery import convert

    model, _ = create_model("ultralytics:yolov8n.yaml", num_classes=2)
    converted, plan = convert(model)  # every eligible 3x3, the Detect head's included
    yolo_module().record_conversion(converted, plan.replaced)
    rebuilt = yolo_module().apply_record(DetectionModel(copy.deepcopy(converted.yaml), nc=2, verbose=False))
    assert type(rebuilt) is yolo_module().ScConvDetectionModel
    assert [n for n, m in rebuilt.named_modules() if isinstance(m, ScConv)] == [d.name for d in plan.replaced]
    with pytest.raises(ValueError, match=r"'model\.22\.cv3\.0\.0\.conv' does not fit .* nc=100 .*'yolo' preset"):
        yolo_module().apply_record(DetectionModel(copy.deepcopy(converted.yaml), nc=100, verbose=False))


TASKS = [("yolov8n-seg.yaml", "segment", "ScConvSegmentationModel"), ("yolo11n-pose.yaml", "pose", "ScConvPoseModel"),
         ("yolov8n-obb.yaml", "obb", "ScConvOBBModel"), ("yolo11n-cls.yaml", "classify", "ScConvClassificationModel")]


@pytest.mark.parametrize("name,task,class_name", TASKS)
def test_other_tasks_convert_load_in_yolo_predict_and_fuse(name, task, class_name, tmp_path):
    yolo_module()  # ultralytics' log handler made outside CliRunner, whose streams close after each invoke
    out, yolo_out = tmp_path / "m.pt", tmp_path / "m_yolo.pt"
    result = invoke("convert", f"ultralytics:{name}", "--preset", "yolo", "--num-classes", "3", "--input-size", SIZE,
                    "--out", str(out), "--yolo-out", str(yolo_out), "--json")
    assert result.exit_code == 0, result.output
    replaced = [d["name"] for d in json.loads(result.stdout)["plan"]["decisions"] if d["action"] == "replace"]
    assert replaced and all(re.fullmatch(r"model\.\d+\.m\.\d+\.(m\.\d+\.)?cv[12]\.conv", n) for n in replaced)
    yolo = YOLO(str(yolo_out))
    assert yolo.task == task and type(yolo.model).__name__ == class_name
    assert [n for n, m in yolo.model.named_modules() if isinstance(m, ScConv)] == replaced
    x = x64()
    model = load(out).eval()
    with torch.no_grad():
        before = model(x)
        fused = model.fuse(verbose=False)(x)
    first = (lambda y: y[0] if isinstance(y, (tuple, list)) else y)
    torch.testing.assert_close(first(fused), first(before), rtol=1e-4, atol=1e-4)
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert len(yolo.predict(pixels, imgsz=64, verbose=False)) == 1
    trainer_class = {"segment": "ScConvSegmentationTrainer", "pose": "ScConvPoseTrainer", "obb": "ScConvOBBTrainer",
                     "classify": "ScConvClassificationTrainer"}[task]
    assert type(yolo._smart_load("trainer")).__name__ == "type" and yolo._smart_load("trainer").__name__ == trainer_class


def test_a_segmentation_model_trains_as_scconv(tmp_path):
    out = tmp_path / "seg_yolo.pt"
    result = invoke("convert", "ultralytics:yolov8n-seg.yaml", "--preset", "yolo", "--num-classes", "2",
                    "--input-size", SIZE, "--dry-run", "--yolo-out", str(out))
    assert result.exit_code == 0 and not out.exists()  # a dry run writes nothing
    result = invoke("convert", "ultralytics:yolov8n-seg.yaml", "--preset", "yolo", "--num-classes", "2",
                    "--input-size", SIZE, "--out", str(tmp_path / "seg.pt"), "--yolo-out", str(out))
    assert result.exit_code == 0, result.output
    args = yolo_data(tmp_path)
    for split in ("train", "val"):  # polygons instead of boxes
        for i in range(2):
            (tmp_path / "data" / "labels" / split / f"{i}.txt").write_text(f"{i} 0.3 0.3 0.7 0.3 0.7 0.6 0.3 0.6\n")
    yolo = YOLO(str(out))
    yolo.train(epochs=1, amp=False, name="seg", **args)
    assert type(yolo.trainer).__name__ == "ScConvSegmentationTrainer"
    assert type(yolo.model).__name__ == "ScConvSegmentationModel"
    assert sum(isinstance(m, ScConv) for m in YOLO(str(tmp_path / "runs" / "seg" / "weights" / "last.pt")).model.modules()) \
        == YOLOV8N_SEG_REPLACED


def test_importing_ultralytics_leaves_pil_open_alone():
    from PIL import Image

    yolo_module()
    assert Image.open.__module__.startswith("PIL")  # no pip install of pi-heif on an unreadable image


def test_calibration_on_a_folder_of_images(tmp_path, dense_pt):
    folder = images(tmp_path / "images", 3)
    result = invoke("convert", f"ultralytics:{dense_pt}", "--trust-pickle", "--input-size", SIZE,
                    "--include", r"re:model\.2\.m\.0\.cv[12]\.conv", "--calibrate", str(folder),
                    "--calibrate-steps", "2", "--calibrate-batch-size", "2", "--out", str(tmp_path / "c.pt"), "--json")
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)["calibration"]
    layers = calibration["layers"]
    assert [layer["name"] for layer in layers] == ["model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"]
    assert all(np.isfinite(layer["error_before"]) and np.isfinite(layer["error_after"]) for layer in layers)
    assert calibration["batchnorms"] == []  # a YOLO model's statistics come from augmented training images
    dense = YOLO(str(dense_pt)).model.state_dict()
    assert torch.equal(load(tmp_path / "c.pt").state_dict()["model.0.bn.running_mean"], dense["model.0.bn.running_mean"])


def test_a_conversion_of_a_yolo_pt_calibrates_later_from_that_pt(tmp_path, dense_pt):
    out = tmp_path / "m.pt"
    result = invoke("convert", f"ultralytics:{dense_pt}", "--trust-pickle", "--input-size", SIZE,
                    "--include", r"re:model\.2\.m\.0\.cv[12]\.conv", "--out", str(out))
    assert result.exit_code == 0, result.output
    folder = images(tmp_path / "images", 2)
    common = ["calibrate", str(out), "--data", str(folder), "--steps", "1", "--batch-size", "2",
              "--weights", str(dense_pt)]
    result = invoke(*common, "--out", str(tmp_path / "c.pt"))
    assert result.exit_code == 2 and "hint: pass --trust-pickle" in result.stderr, result.output
    result = invoke(*common, "--trust-pickle", "--out", str(tmp_path / "c.pt"), "--json")
    assert result.exit_code == 0, result.output
    assert [layer["name"] for layer in json.loads(result.stdout)["calibration"]["layers"]] == \
        ["model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv"]
    other = tmp_path / "other.pt"
    other.write_bytes(dense_pt.read_bytes() + b"\0")  # not the recorded file
    result = invoke(*common[:-1], str(other), "--trust-pickle", "--out", str(tmp_path / "d.pt"))
    assert result.exit_code == 2 and "sha256 differs" in result.stderr.replace("\n", ""), result.output


def test_calibration_images_are_read_as_yolo_predict_reads_them():
    from scconv_surgery.images import image_transform

    model, source = create_model("ultralytics:yolov8n.yaml")
    wide = Image.fromarray(np.full((32, 64, 3), 255, dtype=np.uint8))  # white, twice as wide as high
    x = image_transform(model, source, (3, 64, 64))(wide)
    assert x.shape == (3, 64, 64) and x.max() == 1.0  # in [0, 1]: no mean / std normalisation
    assert torch.allclose(x[:, :16], torch.tensor(114 / 255)) and torch.equal(x[:, 16:48], torch.ones(3, 32, 64))
    classifier, source = create_model("ultralytics:yolo11n-cls.yaml")
    assert image_transform(classifier, source)(wide).shape == (3, 224, 224)  # ultralytics' classify imgsz
