# Two commands do all set-up on a fresh machine:
#   make run    install everything, migrate, create an admin login, start the app on :5000
#   make test   install everything (and Chromium for browser tests), run the whole suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FLASK := $(VENV)/bin/flask --app app

.PHONY: install run test

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

run: install
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	$(FLASK) run --host 127.0.0.1 --port 5000

test: install
	$(PY) -m pytest -q
