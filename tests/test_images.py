import pytest
import timm
import torch
import torchvision
from PIL import Image

from scconv_surgery.errors import ImageDataError
from scconv_surgery.images import find_images, image_transform, load_images
from scconv_surgery.models import ModelSource


def write_image(path, size=(40, 30), color=(128, 128, 128), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder (a folder per class), plus files that are not images and a hidden folder."""
    root = tmp_path / "images"
    for name in ("cat/1.png", "cat/2.JPG", "dog/a.jpeg", "dog/deep/b.bmp", "c.webp"):
        write_image(root / name)
    write_image(root / ".cache/hidden.png")
    write_image(root / "dog/.hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_images_searches_recursively_for_image_suffixes(image_folder):
    found = [p.relative_to(image_folder).as_posix() for p in find_images(image_folder)]
    assert found == ["c.webp", "cat/1.png", "cat/2.JPG", "dog/a.jpeg", "dog/deep/b.bmp"]


@pytest.mark.parametrize("make, words", [
    (lambda root: root / "missing", "no such folder"),
    (lambda root: write_image(root / "one.png"), "is not a folder"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "holds no image files"),
], ids=["missing", "file", "empty"])
def test_unusable_folders_are_named_with_the_fix(tmp_path, make, words):
    (tmp_path / "text").mkdir()
    path = make(tmp_path)
    with pytest.raises(ImageDataError, match=words) as info:
        find_images(path)
    assert info.value.path == str(path)


def test_load_images_reads_a_seeded_choice_with_the_models_preprocessing(tmp_path):
    for i in range(10):
        write_image(tmp_path / f"{i}.png", color=(10 * i, 10 * i, 10 * i))
    model = timm.create_model("resnet18")
    transform = image_transform(model, input_size=(3, 32, 32))
    images, paths = load_images(tmp_path, transform, num_images=3, seed=0)
    again, same = load_images(tmp_path, transform, num_images=3, seed=0)
    _, other = load_images(tmp_path, transform, num_images=3, seed=1)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float16
    assert paths == same and paths != other and torch.equal(images, again)
    # ImageNet normalisation from resnet18's pretrained_cfg: a grey level g gives (g / 255 - mean) / std
    grey = int(paths[0].stem) * 10 / 255
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    torch.testing.assert_close(images[0].float().mean((1, 2)), (grey - mean) / std, atol=2e-3, rtol=0)
    everything, _ = load_images(tmp_path, transform, num_images=None, dtype=torch.float32)
    assert everything.shape[0] == 10 and everything.dtype == torch.float32


def test_an_unreadable_file_is_named(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageDataError, match="cannot be read as an image") as info:
        load_images(tmp_path, image_transform(timm.create_model("resnet18"), input_size=(3, 16, 16)))
    assert info.value.path == str(tmp_path / "bad.png")


def test_torchvision_models_take_their_weights_transforms():
    image = Image.new("RGB", (300, 260), (200, 30, 90))
    source = ModelSource("torchvision", "resnet50")
    expected = torchvision.models.ResNet50_Weights.DEFAULT.transforms()(image)
    model = torchvision.models.resnet50()
    torch.testing.assert_close(image_transform(model, source)(image), expected)
    assert image_transform(model, source, (3, 64, 64))(image).shape == (3, 64, 64)


def test_one_channel_models_get_grey_images_and_others_are_refused():
    model = timm.create_model("resnet18", in_chans=1)
    image = Image.new("RGB", (20, 20), (255, 0, 0))
    assert image_transform(model, input_size=(1, 16, 16))(image).shape == (1, 16, 16)
    with pytest.raises(ImageDataError, match="takes 4 channels"):
        image_transform(model, input_size=(4, 16, 16))


@pytest.mark.parametrize("mode, value, grey", [("I;16", 32768, 32768 / 65535), ("F", 0.25, 0.25)])
def test_high_bit_depth_grey_images_keep_their_brightness(tmp_path, mode, value, grey):
    # PIL's own convert("RGB") clips 16-bit values, turning a mid-grey 16-bit PNG white
    import numpy as np
    from PIL import Image

    dtype, suffix = (np.uint16, "png") if mode == "I;16" else (np.float32, "tif")
    Image.fromarray(np.full((40, 40), value, dtype=dtype)).save(tmp_path / f"deep.{suffix}")
    with Image.open(tmp_path / f"deep.{suffix}") as image:
        assert image.mode == mode
    model = timm.create_model("resnet18")
    images, _ = load_images(tmp_path, image_transform(model, input_size=(3, 32, 32)), dtype=torch.float32)
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    torch.testing.assert_close(images[0].mean((1, 2)), (round(grey * 255) / 255 - mean) / std, atol=2e-3, rtol=0)


def test_nan_holes_of_a_float_tiff_are_read_as_0_counted_and_named(tmp_path):
    """No raw numpy RuntimeWarning: the NaN pixels become 0 before the scaling, and the note says so."""
    import warnings

    import numpy as np

    from scconv_surgery.images import ImageValueWarning, read_images

    pixels = np.full((40, 40), 0.5, dtype=np.float32)
    pixels[:10] = np.nan  # 400 holes
    Image.fromarray(pixels).save(tmp_path / "holes.tif")
    Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)).save(tmp_path / "whole.tif")
    model = timm.create_model("resnet18")
    transform = image_transform(model, input_size=(1, 40, 40))
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" would raise here
        images = read_images([tmp_path / "holes.tif", tmp_path / "whole.tif"], transform, dtype=torch.float32,
                             notes=notes)
    assert notes == [f"{tmp_path / 'holes.tif'}: 400 of 1600 pixels are NaN (no value); they were read as 0 (black)"]
    assert torch.isfinite(images).all()
    black = (0 - sum(model.pretrained_cfg["mean"]) / 3) / (sum(model.pretrained_cfg["std"]) / 3)
    torch.testing.assert_close(images[0, 0, :5, 5:35], torch.full((5, 30), black), atol=2e-3, rtol=0)
    with pytest.warns(ImageValueWarning, match="holes.tif: 400 of 1600 pixels are NaN"):  # without notes
        read_images([tmp_path / "holes.tif"], transform)
