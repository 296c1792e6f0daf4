"""Bad input gets one line on stderr naming the flag, the value and the rule: exit 2, no traceback, before compute."""
from __future__ import annotations

import pytest
import torch

from flows.cli import error_line, main

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
