# ssl-ct: two commands on a fresh machine (see README):
#   make study   install (once), run the whole study on the built-in synthetic CT data, build the book
#   make test    install (once), run the tests
#
# The environment is a virtualenv keyed by the hash of requirements.txt, kept outside the clone
# ($(SSL_CT_HOME), default ~/.cache/ssl-ct): repeat runs and other clones reuse it as long as the
# pinned requirements are unchanged; a changed requirements.txt builds a fresh one.

PYTHON_BOOT ?= python3
SSL_CT_HOME ?= $(HOME)/.cache/ssl-ct
REQ_HASH := $(shell $(PYTHON_BOOT) -c "import hashlib,sys;print(hashlib.sha256(open('requirements.txt','rb').read()).hexdigest()[:12])")
VENV ?= $(SSL_CT_HOME)/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
PROFILE ?= quick
OUT ?= outputs/$(PROFILE)
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: study book test install clean

install: $(VENV)/.complete

# No file prerequisite: the hash of requirements.txt is in the path, and a fresh clone's newer
# file times must not trigger a rebuild of an environment that already matches.
$(VENV)/.complete:
	@echo ">> creating environment $(VENV) (once per requirements.txt version)"
	rm -rf "$(VENV)"
	$(PYTHON_BOOT) -m venv "$(VENV)"
	"$(VENV)/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
	"$(VENV)/bin/python" -m pip check
	touch "$@"

study: install
	"$(PY)" -m ssl_lib study --profile $(PROFILE) --output "$(OUT)"

book: install
	"$(PY)" -m ssl_lib book --output "$(OUT)"

test: install
	"$(PY)" -m pytest -q tests $(PYTEST_ARGS)

clean:
	rm -rf _build outputs
