"""The environment is what the project promises: CPU torch here, pins consistent, CLI complete."""

import re
import shutil
from pathlib import Path

import torch

from dsaml_utils import cli

ROOT = Path(__file__).resolve().parents[1]


def test_torch_is_cpu_build_without_gpu():
    # On a machine without an NVIDIA driver, a CUDA build of torch means the pin failed.
    if shutil.which("nvidia-smi") is None:
        assert torch.version.cuda is None, f"CUDA torch {torch.version.cuda} installed on a CPU machine"


def test_torch_pin_is_portable():
    pins = (ROOT / "constraints.txt").read_text() + (ROOT / "requirements.txt").read_text()
    torch_pins = re.findall(r"^torch==(\S+)", pins, flags=re.M)
    assert torch_pins and all(v == "2.13.0" for v in torch_pins), torch_pins
    assert not re.search(r"^(torchvision|torchaudio|tensorflow|learn2learn|nvidia-)", pins, flags=re.M)


def test_environment_yml_uses_the_same_pins():
    text = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in text and "-c constraints.txt" in text


def test_every_command_module_registers_a_subcommand():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"synth", "inspect", "train", "evaluate", "workbook", "bench"} <= set(sub.choices)
    for group in cli.COMMAND_GROUPS:
        assert callable(group.register), group.__name__
