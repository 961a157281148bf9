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
    for name in ("requirements.txt", "requirements-dev.txt"):  # the Makefile keys the environment by both
        shutil.copy(REPO / name, clone)
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


def test_links_come_from_the_repository_address_or_are_not_shown():
    from ssl_lib.book_config import github_url, repository_url, staged_config

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    text = (REPO / "_config.yml").read_text()
    assert "your-org" not in text and "example.org" not in text  # no placeholder to fill in
    linked = staged_config(config, {}, "https://github.com/me/ssl-ct", "https://hub.me.org")
    assert linked["repository"]["url"] == "https://github.com/me/ssl-ct"
    assert linked["html"]["use_repository_button"] is True
    assert linked["launch_buttons"]["binderhub_url"] and linked["launch_buttons"]["colab_url"]
    assert linked["launch_buttons"]["jupyterhub_url"] == "https://hub.me.org"
    bare = staged_config(config, {"x": "1"}, None)
    assert "url" not in bare["repository"] and bare["html"]["use_repository_button"] is False
    assert bare["launch_buttons"]["binderhub_url"] == bare["launch_buttons"]["colab_url"] == ""
    assert bare["launch_buttons"]["jupyterhub_url"] == ""
    assert bare["html"]["use_download_button"] is True and bare["parse"]["myst_substitutions"] == {"x": "1"}
    assert github_url("git@github.com:me/ssl-ct.git") == github_url("https://github.com/me/ssl-ct") \
        == "https://github.com/me/ssl-ct"
    assert github_url("/srv/git/ssl-ct.git") is None and github_url("https://gitlab.com/me/x") is None
    assert repository_url(None, {"SSL_CT_REPO_URL": "https://github.com/a/b/"}) == "https://github.com/a/b"
    assert repository_url(None, {"GITHUB_REPOSITORY": "a/c"}) == "https://github.com/a/c"
    assert repository_url(None, {}) is None


def test_repository_address_from_the_origin_remote(tmp_path):
    from ssl_lib.book_config import repository_url

    git("init", "-q", cwd=tmp_path)
    assert repository_url(tmp_path, {}) is None  # no remote: no links
    git("remote", "add", "origin", "git@github.com:me/ssl-ct.git", cwd=tmp_path)
    assert repository_url(tmp_path, {}) == "https://github.com/me/ssl-ct"


def test_make_passes_repo_url_to_the_build():
    dry = subprocess.run(["make", "-n", "-p", "study", "REPO_URL=https://github.com/me/x"], cwd=REPO,
                         capture_output=True, text=True).stdout
    assert "SSL_CT_REPO_URL := https://github.com/me/x" in dry
