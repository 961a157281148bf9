# ssl-ct: two commands on a fresh machine (see README):
#   make study   install (once), run the whole study on the built-in synthetic CT data, build the book
#   make test    install (once), run the tests
# and: make book (rebuild the book from an output folder), make lab (JupyterLab on the notebooks),
#      make publish (run the study, push its book to the gh-pages branch),
#      make notebooks (regenerate the notebook templates and the book's table of contents)
#
# The environment is a virtualenv keyed by the hash of requirements.txt (what ssl_lib and the
# notebooks import) and requirements-dev.txt (test and publishing tools), kept outside the clone
# ($(SSL_CT_HOME), default ~/.cache/ssl-ct): repeat runs and other clones reuse it as long as the
# pinned requirements are unchanged; a changed file builds a fresh one.

PYTHON_BOOT ?= python3
SSL_CT_HOME ?= $(HOME)/.cache/ssl-ct
REQ_FILES := requirements.txt requirements-dev.txt
REQ_HASH := $(shell $(PYTHON_BOOT) -c "import hashlib,sys;print(hashlib.sha256(b''.join(open(f,'rb').read() for f in sys.argv[1:])).hexdigest()[:12])" $(REQ_FILES))
VENV ?= $(SSL_CT_HOME)/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
PROFILE ?= quick
OUT ?= outputs/$(PROFILE)
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# The book's repository and launch buttons link to REPO_URL (e.g. make publish REPO_URL=https://github.com/me/ssl-ct);
# without it, to the clone's GitHub `origin` if it has one, else there are no such buttons (ssl_lib/book_config.py).
ifdef REPO_URL
export SSL_CT_REPO_URL := $(REPO_URL)
endif

.PHONY: study book test test-fast install lab publish clean notebooks

# ssl_lib is installed editable into the environment, so a kernel started anywhere (JupyterLab runs
# notebooks in notebooks/) imports it; redone when the environment's ssl_lib is another clone's.
install: $(VENV)/.complete
	@(cd / && env -u PYTHONPATH "$(PY)" -c "import ssl_lib,sys; sys.exit(ssl_lib.__file__ != '$(CURDIR)/ssl_lib/__init__.py')" 2>/dev/null) \
	  || "$(PY)" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$(CURDIR)"

# No file prerequisite: the hash of requirements.txt is in the path, and a fresh clone's newer
# file times must not trigger a rebuild of an environment that already matches.
$(VENV)/.complete:
	@echo ">> creating environment $(VENV) (once per version of $(REQ_FILES))"
	rm -rf "$(VENV)"
	$(PYTHON_BOOT) -m venv "$(VENV)"
	"$(VENV)/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	"$(VENV)/bin/python" -m pip check
	touch "$@"

study: install
	"$(PY)" -m ssl_lib study --profile $(PROFILE) --output "$(OUT)"

book: install
	"$(PY)" -m ssl_lib book --output "$(OUT)"

test: install
	"$(PY)" -m pytest -q tests $(PYTEST_ARGS)

# The tests not marked slow (no study, no training run, no subprocess of the runner): quick
# feedback while working; `make test` (what CI runs) runs everything.
test-fast: install
	"$(PY)" -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

# The notebook templates (notebooks/*.ipynb) and the book's _toc.yml, generated from ssl_lib.templates:
# edit the text there, then run this (a test checks that the committed files are what it writes).
notebooks: install
	"$(PY)" tools/make_notebooks.py

# JupyterLab on the study, on working copies of the templates in lab/ (not tracked; a copy is
# made once and never overwritten, so your edits and outputs stay yours and the committed
# templates never change): relative output_dir values are under the repository root, kernels
# use the study's kernel spec (ssl_lib/jupyter: no TCP warning in the terminal).
LAB_ARGS ?=
LAB_DIR ?= lab
lab: install
	@mkdir -p "$(LAB_DIR)"; for f in notebooks/*.ipynb; do [ -e "$(LAB_DIR)/$${f##*/}" ] || cp "$$f" "$(LAB_DIR)/"; done
	JUPYTER_PATH="$(CURDIR)/ssl_lib/jupyter$(if $(JUPYTER_PATH),:$(JUPYTER_PATH))" "$(VENV)/bin/jupyter" lab \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/$(LAB_DIR) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# Publishing: the same build as `make study` (and as .github/workflows/book.yml), then ghp-import
# commits the HTML to the $(PAGES_BRANCH) branch and pushes it to $(PAGES_REMOTE) (GitHub Pages
# serves that branch). PUBLISH_BUILD=book publishes an already run study without rerunning it.
PAGES_BRANCH ?= gh-pages
PAGES_REMOTE ?= origin
PUBLISH_BUILD ?= study
publish: $(PUBLISH_BUILD)
	"$(VENV)/bin/ghp-import" --no-jekyll --force --push --branch "$(PAGES_BRANCH)" --remote "$(PAGES_REMOTE)" \
	  --message "Book of the $(PROFILE) study" "$(OUT)/book/_build/html"

clean:
	rm -rf _build outputs
