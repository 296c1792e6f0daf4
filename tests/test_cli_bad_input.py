"""Bad input gets one line on stderr naming the flag, the value and the rule: exit 2, no traceback, before compute."""
from __future__ import annotations

import pytest
import torch

from askshift.cli.main import error_line, main

NO_CUDA = not torch.cuda.is_available()

BAD_INPUTS = [
    (["data", "write", "digits", "--split", "train", "--out", "{tmp}/c", "--jpeg-quality", "200"],
     ["--jpeg-quality", "200"]),
    (["data", "write", "digits", "--split", "train", "--out", "{tmp}/c", "--max-resolution", "0"],
     ["--max-resolution", "0"]),
    (["data", "write", "digits", "--split", "train", "--out", "{tmp}/c", "--num-workers", "-1"],
     ["--num-workers", "-1"]),
    (["run", "baseline", "--dataset", "nosuch", "--store", "{tmp}/s"], ["nosuch"]),
    (["run", "baseline", "--seeds", "-1", "--store", "{tmp}/s"], ["--seeds", "-1"]),
    (["run", "baseline", "--model", "cnn:huge", "--store", "{tmp}/s"], ["huge"]),
    (["split-check", "--seed", "-5"], ["--seed", "-5"]),
    (["pretrain", "--out", "/proc/nope/p.pt"], ["--out", "/proc"]),
    (["pretrain", "--out", "{tmp}/p.pt", "--seed", "-1"], ["--seed", "-1"]),
    (["serve", "--port", "99999"], ["--port", "99999", "65535"]),
    (["serve", "--limit", "0"], ["--limit", "0"]),
    (["serve", "--startup-timeout", "-5"], ["--startup-timeout", "-5"]),
]
if NO_CUDA:
    BAD_INPUTS += [
        (["run", "baseline", "--device", "cuda", "--store", "{tmp}/s"], ["no CUDA device", "--device cpu"]),
        (["pretrain", "--out", "{tmp}/p.pt", "--device", "cuda"], ["no CUDA device", "--device cpu"]),
    ]


@pytest.mark.parametrize("argv, words", BAD_INPUTS, ids=[" ".join(a[:2] + a[-2:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_flag_value_and_rule(argv, words, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists() and not (tmp_path / "p.pt").exists()


def test_validation_error_line_lists_every_error_with_field_and_value():
    from pydantic import BaseModel, Field, ValidationError

    class Options(BaseModel):
        jpeg_quality: int = Field(90, ge=1, le=100)
        num_workers: int = Field(0, ge=0)

    with pytest.raises(ValidationError) as info:
        Options(jpeg_quality=200, num_workers=-1)
    line = error_line(info.value)
    assert "\n" not in line
    assert "--jpeg-quality (got 200)" in line and "--num-workers (got -1)" in line and "less than or equal to 100" in line


# --- bad data, files and folders: each needs something on disk first ---------------------------------------------
def _photos(tmp, **kw):
    from photo_fixtures import make_imagefolder

    return make_imagefolder(tmp / "P", classes=kw.pop("classes", 2), per_class=(3, 2), seed=1, sizes=(40, 90), **kw)


def _corrupt(tmp):
    from photo_fixtures import add_corrupt_jpeg

    root = _photos(tmp)
    add_corrupt_jpeg(root / "train" / "circle")
    return root


def _no_val(tmp):
    import shutil

    root = _photos(tmp)
    shutil.rmtree(root / "val")
    return root


def _empty_class(tmp):
    from photo_fixtures import add_empty_class

    root = _photos(tmp)
    add_empty_class(root)
    return root


def _garbage_weights(tmp):
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    return tmp / "garbage.pt"


def _other_arch_weights(tmp):
    import timm

    torch.save(timm.create_model("resnet34").state_dict(), tmp / "resnet34.pth")
    return tmp / "resnet34.pth"


def _store_file(tmp):
    (tmp / "s").write_text("I am a file")
    return tmp / "s"


def _bad_cifar(tmp):
    (tmp / "C" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp / "C" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    return tmp / "C"


def _bad_shift_params(tmp):
    (tmp / "spec.yaml").write_text("name: bad\nreference: {dataset: digits}\n"
                                   "targets:\n  t: {dataset: digits, shift: tint, shift_params: {alpha: 2}}\n")
    return tmp / "spec.yaml"


BAD_DATA = [
    ("shift params", _bad_shift_params, ["run", "baseline", "--shift", "{x}", "--store", "{tmp}/s"], ["tint", "alpha=2"]),
    ("npz not an archive", _garbage_weights, ["data", "write", "npz", "--root", "{x}", "--split", "train",
                                              "--out", "{tmp}/s"], ["not a .npz archive"]),
    ("corrupt jpegs", _corrupt, ["run", "baseline", "--dataset", "imagefolder", "--root", "{x}", "--store", "{tmp}/s"],
     ["2 of", "cannot be decoded", "truncated.jpg", "garbage.jpg"]),
    ("no val folder", _no_val, ["run", "baseline", "--dataset", "imagefolder", "--root", "{x}", "--store", "{tmp}/s"],
     ["val"]),
    ("empty class", _empty_class, ["run", "baseline", "--dataset", "imagefolder", "--root", "{x}", "--store", "{tmp}/s"],
     ["empty", "has no images"]),
    ("one class", lambda t: _photos(t, classes=1),
     ["run", "baseline", "--dataset", "imagefolder", "--root", "{x}", "--store", "{tmp}/s"], ["at least two class"]),
    ("split corrupt", _corrupt, ["run", "split", "--reference", "imagefolder", "--reference-root", "{x}", "--shifted",
                                 "imagefolder", "--shifted-root", "{x}", "--store", "{tmp}/s"], ["cannot be decoded"]),
    ("cifar layout", _bad_cifar, ["run", "baseline", "--dataset", "cifar10", "--root", "{x}", "--store", "{tmp}/s"],
     ["cifar10", "missing"]),
    ("garbage weights", _garbage_weights,
     ["run", "finetune", "--models", "cnn:small", "--pretrained", "{x}", "--store", "{tmp}/s"],
     ["--pretrained", "garbage.pt", "not a PyTorch weights file"]),
    ("other architecture", _other_arch_weights,
     ["run", "finetune", "--models", "timm:resnet18", "--pretrained", "{x}", "--store", "{tmp}/s"],
     ["resnet34.pth", "timm:resnet18", "no place for"]),
    ("store is a file", _store_file, ["run", "baseline", "--store", "{x}"], ["--store", "is a file"]),
    ("store not writable", lambda t: None, ["run", "baseline", "--store", "/proc/askshift-store"],
     ["--store", "/proc", "cannot"]),
    ("cache not writable", lambda t: None, ["run", "split", "--shift", "out_of_support", "--store", "{tmp}/s",
                                            "--cache-dir", "/proc/askshift-cache"], ["--cache-dir", "/proc"]),
    ("zoo margin", lambda t: None, ["zoo", "--results", "{tmp}", "--margin", "-1", "--store", "{tmp}/s"],
     ["--margin", "-1"]),
    ("finetune seed", lambda t: None, ["run", "finetune", "--seed", "-3", "--store", "{tmp}/s"], ["--seed", "-3"]),
    ("split seed", lambda t: None, ["run", "split", "--shift", "out_of_support", "--seed", "-2", "--store", "{tmp}/s"],
     ["--seed", "-2"]),
]
if NO_CUDA:
    BAD_DATA += [
        ("finetune cuda", lambda t: None, ["run", "finetune", "--device", "cuda", "--store", "{tmp}/s"], ["no CUDA device"]),
        ("split cuda", lambda t: None, ["run", "split", "--shift", "out_of_support", "--device", "cuda",
                                        "--store", "{tmp}/s"], ["no CUDA device"]),
    ]


@pytest.mark.parametrize("make, argv, words", [case[1:] for case in BAD_DATA], ids=[case[0] for case in BAD_DATA])
def test_bad_data_files_and_folders_are_one_line_before_anything_is_written(make, argv, words, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    made = make(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{x}", str(made)) for a in argv]
    store_before = (tmp_path / "s").read_bytes() if (tmp_path / "s").is_file() else None
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    store = tmp_path / "s"
    assert (store.read_bytes() == store_before) if store_before is not None else not store.exists()


def test_decodable_images_are_remembered_so_a_rerun_checks_only_new_or_changed_files(tmp_path):
    from photo_fixtures import add_corrupt_jpeg, image_files

    from askshift.lib.data.image_check import unreadable_images

    root = _photos(tmp_path)
    files = image_files(root)
    assert unreadable_images(files, tmp_path / "cache") == {}
    assert (tmp_path / "cache" / "decodable-images.json").is_file()
    bad = add_corrupt_jpeg(root / "val" / "square")
    found = unreadable_images([*files, *bad], tmp_path / "cache")
    assert sorted(p.name for p in found) == ["garbage.jpg", "truncated.jpg"]
    files[0].write_bytes(bad[0].read_bytes())  # a remembered file replaced by a broken one is checked again
    assert files[0] in unreadable_images(files, tmp_path / "cache")
