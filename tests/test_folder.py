"""Tests for loading a folder of one's own captioned images (captions.csv or the Kaggle layout)."""
import os
import random
import re
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from minicap.data.folder import load_caption_folder, validation_images

# Independent of Keras's backend (or runs each backend itself): runs once, on the default one.
pytestmark = pytest.mark.single_backend


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def _image(path, mode="RGB", size=(20, 14), colour=(200, 30, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path)
    return path


def _load(*args, **kwargs):
    """``load_caption_folder`` that fails on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_caption_folder(*args, **kwargs)


def _skipped(*args, **kwargs):
    """``(set, the warning's text)`` of a load that skips rows."""
    with pytest.warns(UserWarning, match="skipped") as record:
        result = load_caption_folder(*args, **kwargs)
    (message,) = [str(w.message) for w in record if "skipped" in str(w.message)]
    return result, message


def test_modes_sizes_and_quoted_captions(tmp_path):
    folder = tmp_path / "holiday"
    _image(folder / "rgb.jpg", size=(64, 40))
    _image(folder / "gray.png", "L", size=(10, 30))
    _image(folder / "alpha.png", "RGBA")
    _image(folder / "print.jpg", "CMYK")
    _image(folder / "palette.png", "P", size=(7, 7))
    _write(folder / "captions.csv", "image,caption\n"
           'rgb.jpg,"A red wall, bright in the sun ."\n'
           "gray.png,  a gray photo  \n"
           "alpha.png,a see-through picture\n"
           "print.jpg,a printed page\n"
           'palette.png,"few colours, few ""words"""\n'
           "rgb.jpg,second caption of the red wall\n")
    data = _load(folder, "all", image_size=8)
    assert data.name == "holiday" and data.split == "all" and len(data) == 5
    assert [os.path.basename(p) for p in data.paths] == ["rgb.jpg", "gray.png", "alpha.png", "print.jpg", "palette.png"]
    assert data.captions[0] == ["A red wall, bright in the sun .", "second caption of the red wall"]
    assert data.captions[1] == ["a gray photo"] and data.captions[4] == ['few colours, few "words"']
    images = data.load_images(8)
    assert images.shape == (5, 8, 8, 3) and images.dtype == np.uint8
    assert images[3, ..., 0].mean() > 150  # the CMYK red stays red


def test_kaggle_layout_captions_txt_and_images_folder(tmp_path):
    root = tmp_path / "flickr8k"
    for index in range(3):
        _image(root / "Images" / f"{index}_photo.jpg")
    lines = [f"{index}_photo.jpg,caption {k} of {index} ." for index in range(3) for k in range(5)]
    _write(root / "captions.txt", "image,caption\n" + "\n".join(lines) + "\n")
    data = _load(root, "all")
    assert data.name == "flickr8k" and len(data) == 3 and all(len(c) == 5 for c in data.captions)
    assert data.paths[0] == str(root / "Images" / "0_photo.jpg")
    assert data.captions[2] == [f"caption {k} of 2 ." for k in range(5)]


def test_csv_path_with_subfolders_and_absolute_paths(tmp_path):
    _image(tmp_path / "data" / "sub" / "a.png")
    _image(tmp_path / "data" / "sub" / "deeper" / "b.png")
    elsewhere = _image(tmp_path / "elsewhere" / "c.png")
    csv_file = _write(tmp_path / "data" / "my list.csv",
                      f"Image , CAPTION\nsub/a.png,one\n./sub/deeper/b.png,two\n{elsewhere},three\nsub/a.png,four\n")
    data = _load(csv_file, "all")
    assert data.name == "data"
    assert data.paths == [str(tmp_path / "data" / "sub" / "a.png"), str(tmp_path / "data" / "sub" / "deeper" / "b.png"),
                          str(elsewhere)]
    assert data.captions == [["one", "four"], ["two"], ["three"]]


def test_split_column_decides(tmp_path):
    for name in "abcde":
        _image(tmp_path / f"{name}.png")
    text = ("caption,split,image\n"
            "first,train,a.png\nsecond,Validation,b.png\nthird,test,c.png\nfourth, dev ,d.png\nfifth,TRAIN,e.png\n")
    _write(tmp_path / "captions.csv", text)
    assert [os.path.basename(p) for p in _load(tmp_path, "train").paths] == ["a.png", "e.png"]
    val = _load(tmp_path, "dev")
    assert val.split == "val" and [os.path.basename(p) for p in val.paths] == ["b.png", "d.png"]
    assert _load(tmp_path, "test").captions == [["third"]]
    # b.png is val on line 3: line 7 putting it in train is reported and skipped.
    _write(tmp_path / "captions.csv", text + "sixth,train,b.png\n")
    data, message = _skipped(tmp_path, "all")
    assert data.captions[1] == ["second"]
    assert "line 7: image 'b.png' is in the train split here but in val on line 3" in message


def _many(folder, count, shuffle_seed=None):
    names = [f"photo_{index:03d}.png" for index in range(count)]
    for name in names:
        _image(folder / name, size=(4, 4))
    rows = [f"{name},caption {k} of {name}" for name in names for k in range(2)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    _write(folder / "captions.csv", "image,caption\n" + "\n".join(rows) + "\n")
    return names


def test_validation_tenth_is_exact_and_depends_only_on_names(tmp_path):
    names = _many(tmp_path / "first", 37)
    train, val = _load(tmp_path / "first", "train"), _load(tmp_path / "first", "val", val_fraction=0.1)
    assert len(val) == 4 and len(train) == 33  # round(3.7)
    assert not set(train.paths) & set(val.paths)
    assert all(len(c) == 2 for c in val.captions)
    chosen = {os.path.basename(p) for p in val.paths}
    _many(tmp_path / "second", 37, shuffle_seed=3)  # other rows' order
    assert {os.path.basename(p) for p in _load(tmp_path / "second", "val").paths} == chosen
    shutil.move(tmp_path / "first", tmp_path / "renamed")  # another folder name
    assert {os.path.basename(p) for p in _load(tmp_path / "renamed", "val").paths} == chosen
    # The sizes at the edges: at least one, never all, none for 0.
    assert len(validation_images(names[:2], 0.1)) == 1 and len(validation_images(names[:1], 0.5)) == 0
    assert len(validation_images(names, 0.99)) == 36 and validation_images(names, 0) == set()
    assert len(_load(tmp_path / "renamed", "val", val_fraction=0.5)) == round(0.5 * 37)


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    _image(tmp_path / "good.png")
    _image(tmp_path / "other.png")
    _write(tmp_path / "broken.png", b"\x89PNG but not really")
    _write(tmp_path / "captions.csv", "image,caption,split\n"  # line 1
           "good.png,a good image,train\n"  # 2
           "missing.jpg,an image nobody saved,train\n"  # 3
           "good.png,,train\n"  # 4
           "good.png,a, comma,train\n"  # 5
           "\n"  # 6: blank lines are skipped quietly
           "broken.png,cannot be decoded,train\n"  # 7
           ',"a caption over\ntwo lines",train\n'  # 8-9
           "other.png,another image,foo\n"  # 10
           "broken.png,its second caption,train\n"  # 11
           'other.png,"quoted,\n\nover three lines",train\n'  # 12-14
           "missing.jpg,its second caption,train\n")  # 15
    data, message = _skipped(tmp_path, "train")
    assert data.captions == [["a good image"], ["quoted,\n\nover three lines"]]
    assert repr(str(tmp_path / "captions.csv")) in message and "skipped 8 row(s)" in message
    lines = re.findall(r"line (\d+): (.*)", message)
    assert [int(n) for n, _ in lines] == [3, 4, 5, 7, 8, 10, 11, 15]
    assert lines[0][1] == "image 'missing.jpg' does not exist" and lines[-1][1] == lines[0][1]
    assert lines[1][1] == "empty caption"
    assert lines[2][1] == "expected 3 columns, got 4 (quote captions that contain commas)"
    assert lines[3][1].startswith("cannot read image 'broken.png': ") and lines[6][1] == lines[3][1]
    assert lines[4][1] == "empty image name"
    assert lines[5][1] == "unknown split 'foo' (expected train, val or test)"


def test_image_checks_only_when_asked_and_only_for_the_split(tmp_path):
    _image(tmp_path / "good.png")
    _write(tmp_path / "broken.png", b"not an image")
    _write(tmp_path / "captions.csv", "image,caption,split\ngood.png,fine,train\nbroken.png,bad,test\n")
    assert len(_load(tmp_path, "train")) == 1  # the test split's broken image is not read
    assert len(_load(tmp_path, "test", check_images=False)) == 1
    with pytest.raises(ValueError, match="has no images in the test split"), pytest.warns(UserWarning, match="line 3"):
        load_caption_folder(tmp_path, "test")


def test_header_error_names_file_and_headers(tmp_path):
    _write(tmp_path / "captions.csv", "filename,text\na.png,hello\n")
    with pytest.raises(ValueError, match=r"captions\.csv.*line 1: header 'filename,text'; expected 'image,caption'"):
        load_caption_folder(tmp_path)
    _write(tmp_path / "captions.csv", "image\tcaption\na.png\thello\n")  # tab-separated is not this format
    with pytest.raises(ValueError, match=r"header 'image\\tcaption'"):
        load_caption_folder(tmp_path)
    _write(tmp_path / "captions.csv", "")
    with pytest.raises(ValueError, match="header ''"):
        load_caption_folder(tmp_path)


def test_empty_split_and_bad_arguments(tmp_path):
    _image(tmp_path / "only.png")
    _write(tmp_path / "captions.csv", "image,caption\nonly.png,the only image\n")
    assert len(_load(tmp_path, "train")) == 1
    with pytest.raises(ValueError, match=r"captions\.csv has no images in the val split"):
        load_caption_folder(tmp_path, "val")
    with pytest.raises(ValueError, match="no split column, no test"):
        load_caption_folder(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be 'train', 'val'.*got 'training'"):
        load_caption_folder(tmp_path, "training")
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 1\), got 1.0"):
        load_caption_folder(tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size must be"):
        load_caption_folder(tmp_path, image_size=-3)


def test_missing_folder_or_caption_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no captions\.csv or captions\.txt"):
        load_caption_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_caption_folder(tmp_path / "nowhere")


def test_byte_order_mark_and_bad_bytes(tmp_path):
    _image(tmp_path / "café.png")
    _image(tmp_path / "b.png")
    text = "image,caption\ncafé.png,un café crème\nb.png,ok\n"
    _write(tmp_path / "captions.csv", "\ufeff" + text)  # as Excel saves "CSV UTF-8"
    data = _load(tmp_path, "all")
    assert data.captions == [["un café crème"], ["ok"]]
    _write(tmp_path / "captions.csv", text.encode("utf-8").replace(b"ok", b"o\xffk"))
    with pytest.warns(UserWarning, match=r"lines \[3\] are not valid UTF-8"):
        data = load_caption_folder(tmp_path, "all")
    assert data.captions[1] == ["o\ufffdk"]


# ---------------------------------------------------------------- the split a training run of a folder uses

def _names(data):
    return [os.path.basename(path) for path in data.paths]


def test_a_run_on_a_folder_validates_on_a_tenth_of_the_images_it_never_trains_on(tmp_path):
    from minicap.config import profile
    from minicap.data.datasets import load_data

    names = _many(tmp_path / "mine", 30)
    config = profile("quick", dataset=str(tmp_path / "mine"))
    train, val = load_data(config)
    assert len(val) == 3 and len(train) == 27
    assert not set(_names(train)) & set(_names(val)) and set(_names(train)) | set(_names(val)) == set(names)
    assert all(captions == [f"caption {k} of {name}" for k in range(2)]
               for name, captions in zip(_names(train) + _names(val), train.captions + val.captions))
    # The same split on every call, and for the same images listed in another order, in another folder.
    again_train, again_val = load_data(config)
    assert (_names(again_train), _names(again_val)) == (_names(train), _names(val))
    _many(tmp_path / "shuffled", 30, shuffle_seed=5)
    shuffled_train, shuffled_val = load_data(config.replace(dataset=str(tmp_path / "shuffled")))
    assert set(_names(shuffled_val)) == set(_names(val)) and set(_names(shuffled_train)) == set(_names(train))


def test_a_run_on_a_folder_with_a_split_column_uses_the_files_split(tmp_path):
    from minicap.config import profile
    from minicap.data.datasets import load_data

    names = [f"photo_{index:03d}.png" for index in range(10)]
    for name in names:
        _image(tmp_path / name, size=(4, 4))
    # The file's own choice, unlike the tenth that the names would give (and a test split that trains on nothing).
    chosen = sorted(set(names) - validation_images(names, 0.1))[:3]
    tested = [name for name in names if name not in chosen][:2]
    splits = {name: "val" if name in chosen else "test" if name in tested else "train" for name in names}
    _write(tmp_path / "captions.csv", "image,caption,split\n" + "".join(
        f"{name},caption of {name},{splits[name]}\n" for name in names))
    train, val = load_data(profile("quick", dataset=str(tmp_path)))
    assert _names(val) == chosen
    assert _names(train) == [name for name in names if splits[name] == "train"]
    assert len(train) == 5
