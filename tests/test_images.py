"""Tests for image loading: every mode to RGB uint8, resizing, and clear errors."""
import warnings

import numpy as np
import pytest
from PIL import Image

from minicap.data.images import ImageFiles, load_image, load_images

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    loaded = load_image(_save(tmp_path, "a.png", Image.fromarray(array)))
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, array)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 128], [200, 255]], np.uint8)
    loaded = load_image(_save(tmp_path, "g.png", Image.fromarray(gray, "L")))
    assert loaded.shape == (2, 2, 3)
    np.testing.assert_array_equal(loaded[..., 1], gray)
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[1, 1] = (0, 0, 0, 0)  # fully transparent black
    loaded = load_image(_save(tmp_path, "t.png", Image.fromarray(rgba, "RGBA")))
    np.testing.assert_array_equal(loaded[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(loaded[1, 1], (255, 255, 255))


def test_palette_and_cmyk(tmp_path):
    palette = Image.fromarray(np.full((3, 3, 3), (0, 0, 255), np.uint8)).convert("P")
    np.testing.assert_array_equal(load_image(_save(tmp_path, "p.png", palette))[1, 1], (0, 0, 255))
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(_save(tmp_path, "c.jpg", cmyk, quality=95))
    assert loaded.shape == (4, 4, 3)
    assert loaded[..., 0].mean() > 200 and loaded[..., 1:].mean() < 60


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 32896], [65535, 257]], np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    loaded = load_image(_save(tmp_path, "s.png", image))
    np.testing.assert_array_equal(loaded[..., 0], [[0, 128], [255, 1]])


def test_resize_and_load_images(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", Image.new("RGB", (40 + i, 30), (10 * i, 0, 0))) for i in range(3)]
    assert load_image(paths[0], image_size=8).shape == (8, 8, 3)
    assert load_image(paths[0], image_size=(6, 10)).shape == (6, 10, 3)
    batch = load_images(paths, 16)
    assert batch.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(batch[:, 5, 5, 0], [0, 10, 20])
    with pytest.raises(ValueError, match="needs an image_size"):
        load_images(paths, None)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_image(paths[0], image_size=0)


def test_huge_jpeg_is_decoded_reduced(tmp_path):
    # 10,000 x 10,000 would be 300 MB decoded; draft mode decodes it at 1/8 scale.
    path = _save(tmp_path, "huge.jpg", Image.new("RGB", (10_000, 10_000), (0, 200, 0)), quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            assert image.size == (1250, 1250)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no decompression-bomb warning either
        loaded = load_image(path, image_size=64)
    assert loaded.shape == (64, 64, 3) and abs(int(loaded[..., 1].mean()) - 200) < 5


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ValueError, match="folder.jpg.*is a directory"):
        load_image(tmp_path / "folder.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image file.*junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    good = _save(tmp_path, "good.jpg", Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read image file.*cut.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_image_files_read_on_indexing(tmp_path):
    paths = [_save(tmp_path, f"{i}.png", Image.new("RGB", (9, 7), (i, 2 * i, 0))) for i in range(4)]
    files = ImageFiles(paths, (5, 6))
    assert len(files) == 4 and files.shape == (4, 5, 6, 3)
    assert files[1].shape == (5, 6, 3) and files[1][0, 0, 1] == 2
    np.testing.assert_array_equal(files[1:3][:, 0, 0, 0], [1, 2])
    np.testing.assert_array_equal(files[np.array([3, 0])][:, 0, 0, 0], [3, 0])
    with pytest.raises(ValueError, match="needs an image_size"):
        ImageFiles(paths, None)


def test_the_sample_photo_is_a_photograph_that_loads():
    from minicap.data.images import sample_photo

    image = load_image(sample_photo(), 224)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert image.std() > 20  # a photograph, not a flat colour


def test_a_photo_from_a_url_or_a_path(tmp_path):
    from minicap.data.images import load_photo
    from tests.support.photo_stand_ins import serve

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "green.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with serve(tmp_path) as url:
        pixels = load_photo(url + "green.png", 8)
        assert pixels.shape == (8, 8, 3) and tuple(pixels[4, 4]) == (10, 200, 30)
        with pytest.raises(ValueError, match="cannot download the photo at .*missing.png"):
            load_photo(url + "missing.png")
        with pytest.raises(ValueError, match="cannot read image file .*broken.jpg"):
            load_photo(url + "broken.jpg")
    assert load_photo(tmp_path / "green.png").shape == (30, 40, 3)
