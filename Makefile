# Two commands from a fresh clone:
#   make run   - set up a virtualenv and start the server on the embedded defaults
#   make test  - set up the virtualenv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test venv clean

$(BIN)/twistd: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(BIN)/twistd

run: venv
	$(BIN)/twistd --nodaemon --pidfile= quartet-sftpd $(ARGS)

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
