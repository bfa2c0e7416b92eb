# The two commands of the README. Both install what they need first.
.PHONY: up test install bench clean

install:
	./scripts/bootstrap.sh

up: install
	.venv/bin/ringcast up

test: install
	.venv/bin/python -m pytest -q

clean:
	rm -rf .venv .pytest_cache
