# The two commands of the README. Both install what they need first.
.PHONY: up test install lock clean

install:
	./scripts/bootstrap.sh

up: install
	.venv/bin/ringcast up

test: install
	.venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=25

lock:
	./scripts/lock.sh

clean:
	rm -rf .venv .pytest_cache
