"""svd_trt/cli.py's handler: expected failures are one line and exit 2, a missing [export] module
names the extra, anything else keeps its traceback."""

from __future__ import annotations

import pytest

from svd_trt.cli import one_line_errors
from svd_trt.errors import UserError


def _raising(error: BaseException):
    @one_line_errors
    def command() -> None:
        raise error

    return command


@pytest.mark.parametrize("module", ["torch", "torch.nn", "onnx", "safetensors.torch", "polygraphy.backend"])
def test_missing_export_module_is_one_line_naming_the_extra(capsys, module):
    with pytest.raises(SystemExit) as exit_info:
        _raising(ModuleNotFoundError(f"No module named {module!r}", name=module))()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    root = module.split(".")[0]
    assert err == [
        f"Error: this command needs the export tools ({root} is not installed): pip install 'svd-trt[export]'"
    ]


def test_other_missing_modules_keep_their_traceback():
    """numpy missing is a broken install, not a user error: the traceback is the useful report."""
    with pytest.raises(ModuleNotFoundError):
        _raising(ModuleNotFoundError("No module named 'numpy'", name="numpy"))()


def test_user_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _raising(UserError("first line\nsecond line"))()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "Error: first line\n"


def test_ctrl_c_exits_130(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _raising(KeyboardInterrupt())()
    assert exit_info.value.code == 130 and "Traceback" not in capsys.readouterr().err
