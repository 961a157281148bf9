"""JupyterLab works: ssl_lib installs editable, a kernel in notebooks/ imports it, relative
output folders are under the repository root, and the kernel's TCP warning stays off the terminal."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from ssl_lib.kernel import JUPYTER_DIR, SHUTDOWN_INTERRUPT, TCP_WARNING, jupyter_env
from ssl_lib.paths import REPO, StudyPaths, resolve_output


def test_relative_output_is_under_the_repository(tmp_path):
    assert resolve_output("outputs/quick") == REPO / "outputs" / "quick"
    assert StudyPaths("outputs/quick").store("lidc") == REPO / "outputs" / "quick" / "stores" / "lidc"
    assert StudyPaths(tmp_path).root == tmp_path  # absolute folders are kept


def test_jupyter_env_puts_the_study_kernel_first():
    env = jupyter_env({"JUPYTER_PATH": "/x" + os.pathsep + str(JUPYTER_DIR)})
    assert env["JUPYTER_PATH"].split(os.pathsep) == [str(JUPYTER_DIR), "/x"]
    spec = json.loads((JUPYTER_DIR / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][:3] == ["python", "-m", "ssl_lib.kernel"]


NOTEBOOK_RUN = r"""
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell('output_dir = "outputs/quick"', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("import os, ssl_lib\nfrom ssl_lib.paths import StudyPaths\n"
                                      "print(os.getcwd()); print(ssl_lib.__file__); print(StudyPaths(output_dir).root)")]
NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": sys.argv[1]}}).execute()
print(nb.cells[1].outputs[0]["text"], end="")
"""


@pytest.mark.slow
def test_editable_install_kernel_in_notebooks_folder(tmp_path):
    """A fresh environment gets ssl_lib the way ``make install`` does it (pip's editable install,
    no build isolation); a notebook executed there with notebooks/ as its working folder and no
    PYTHONPATH imports this clone's ssl_lib and finds outputs/quick under the repository root.
    The kernel is the study's (JUPYTER_PATH), whose stderr carries no TCP warning."""
    venv = tmp_path / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this env's packages
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-e", str(REPO)], check=True)
    assert not list(REPO.glob("*.egg-info")), "the editable install left build files in the clone"
    env = jupyter_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", NOTEBOOK_RUN, str(REPO / "notebooks")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cwd, module, root = proc.stdout.splitlines()
    assert Path(cwd) == REPO / "notebooks"
    assert Path(module) == REPO / "ssl_lib" / "__init__.py"
    assert Path(root) == REPO / "outputs" / "quick"
    assert TCP_WARNING not in proc.stderr


def test_default_kernel_would_print_the_warning(tmp_path):
    """The control: ipykernel's own kernel does print it (so the test above can fail)."""
    from jupyter_client.manager import start_new_kernel

    err = tmp_path / "stderr.txt"
    with open(err, "w") as fh:
        km, kc = start_new_kernel(kernel_name="python3", stderr=fh)
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    if "JUPYTER_PATH" in os.environ and str(JUPYTER_DIR) in os.environ["JUPYTER_PATH"]:
        pytest.skip("this process already uses the study's kernel")
    assert TCP_WARNING in err.read_text()


#: Starts a kernel (the one JUPYTER_PATH names ``python3``), interrupts it while it handles a
#: message rather than a cell (as jupyter_client's shutdown_kernel does when papermill ends a
#: notebook), and prints the kernel's stderr.
INTERRUPT_IN_HANDLER = r"""
import pathlib, sys, tempfile, time
from jupyter_client.manager import start_new_kernel
flag = pathlib.Path(tempfile.mkdtemp()) / "started"
err = pathlib.Path(sys.argv[1])
with open(err, "w") as fh:
    km, kc = start_new_kernel(kernel_name="python3", stderr=fh)
    kc.execute_interactive(
        "import pathlib, time\n"
        "def _slow(*args):\n"
        f"    pathlib.Path({str(flag)!r}).write_text('x')\n"
        "    time.sleep(60)\n"
        "get_ipython().kernel.shell_handlers['slow_request'] = _slow\n", timeout=60)
    kc.shell_channel.send(kc.session.msg("slow_request", {}))
    t0 = time.monotonic()
    while not flag.exists() and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    km.interrupt_kernel()
    kc.kernel_info(reply=True, timeout=60)  # answered after the interrupted handler: its log is written
    kc.stop_channels()
    km.shutdown_kernel(now=True)
print(err.read_text())
"""


def test_study_kernel_is_quiet_when_shutdown_interrupts_a_handler(tmp_path):
    """The study's kernel drops ipykernel's "KeyboardInterrupt caught in kernel." (logged when
    the interrupt jupyter_client sends at shutdown lands inside a message handler); IPython's own
    kernel logs it (the control, so the check can fail)."""
    base = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    out = {}
    for name, env in (("study", jupyter_env(base)), ("default", base)):
        proc = subprocess.run([sys.executable, "-c", INTERRUPT_IN_HANDLER, str(tmp_path / f"{name}.txt")], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        out[name] = proc.stdout
    assert SHUTDOWN_INTERRUPT in out["default"]
    assert SHUTDOWN_INTERRUPT not in out["study"]


def test_make_lab_command():
    """`make lab` starts JupyterLab at the repository on working copies of the templates (lab/, made
    once, never overwritten), with the study's kernel spec, and passes --allow-root exactly when
    run as root."""
    venv = Path(sys.executable).parent.parent
    dry = subprocess.run(["make", "-n", "lab", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    line = next(x for x in dry.replace("\\\n", " ").splitlines() if "jupyter" in x and " lab " in x)
    assert f'JUPYTER_PATH="{JUPYTER_DIR}' in line and f'--ServerApp.root_dir="{REPO}"' in line
    assert "/lab/tree/lab" in line and "/lab/tree/notebooks" not in line
    assert '[ -e "lab/${f##*/}" ] || cp "$f" "lab/"' in dry  # copies made once, a user's copy kept
    assert ("--allow-root" in line) == (os.getuid() == 0)
