"""Publishing: `make publish` pushes the built book to a pages branch; the Pages workflow runs the same build."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ssl_lib.paths import REPO


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_make_publish_pushes_the_html_to_the_pages_branch(tmp_path):
    remote = tmp_path / "remote.git"
    git("init", "--bare", "-q", str(remote), cwd=tmp_path)
    clone = tmp_path / "clone"
    clone.mkdir()
    git("init", "-q", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start", cwd=clone)
    shutil.copy(REPO / "requirements.txt", clone)
    html = clone / "out" / "book" / "_build" / "html"
    html.mkdir(parents=True)
    (html / "index.html").write_text("<html>the book</html>")
    venv = Path(sys.executable).parent.parent
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["make", "-f", str(REPO / "Makefile"), "publish", "PUBLISH_BUILD=", f"VENV={venv}", "OUT=out",
                    f"PAGES_REMOTE={remote}"], cwd=clone, env=env, check=True, capture_output=True, text=True)
    files = git("ls-tree", "--name-only", "gh-pages", cwd=remote).split()
    assert files == [".nojekyll", "index.html"]
    assert git("show", "gh-pages:index.html", cwd=remote) == "<html>the book</html>"


def test_pages_workflow_runs_the_same_build():
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "book.yml").read_text())
    steps = flow["jobs"]["build"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    assert runs == ["make study PROFILE=quick"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "outputs/quick/book/_build/html"  # where `make study` puts the book
    dry = subprocess.run(["make", "-n", "publish", "PROFILE=quick"], cwd=REPO, capture_output=True, text=True).stdout
    assert "ssl_lib study --profile quick --output \"outputs/quick\"" in dry  # publish builds with make study
    assert "ghp-import" in dry and "outputs/quick/book/_build/html" in dry


def test_config_has_the_launch_buttons_and_repository_to_fill_in():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["repository"]["url"].startswith("https://")
    buttons = config["launch_buttons"]
    assert buttons["binderhub_url"] and buttons["colab_url"] and "jupyterhub_url" in buttons
    assert config["html"]["use_repository_button"] is True
