import subprocess
import sys

from nemo_resrl.cli import main


def test_unimplemented_commands_say_so_and_fail(capsys):
    assert main(["train"]) == 2
    assert "not implemented yet" in capsys.readouterr().out


def test_console_script_entry_point_resolves():
    out = subprocess.run([sys.executable, "-m", "nemo_resrl.cli", "eval"], capture_output=True, text=True)
    assert out.returncode == 2 and "issue 8" in out.stdout
