"""The processes a training watches: its parent, and the shell's parent when a shell ran the command."""

import json
import os
import subprocess
import sys


def test_the_watched_starters_are_the_parent_and_the_shell_dvc_runs_commands_through():
    code = "from retinaseg.training import starters; import os; print(starters.watched(), os.getpid(), os.getppid())"
    direct = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    pairs, pid, ppid = direct.rsplit(" ", 2)
    assert json.loads(pairs.replace("(", "[").replace(")", "]")) == [[int(pid), int(ppid)]]
    through_shell = subprocess.run(["bash", "-c", f"{sys.executable} -c '{code}'; true"], capture_output=True,
                                   text=True, check=True).stdout
    pairs, pid, ppid = through_shell.rsplit(" ", 2)
    assert json.loads(pairs.replace("(", "[").replace(")", "]")) == [[int(pid), int(ppid)], [int(ppid), os.getpid()]]
