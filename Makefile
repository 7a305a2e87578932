# The two commands of the README. Both install what is missing first (scripts/bootstrap.sh).
.PHONY: run test lint bootstrap

bootstrap:
	@scripts/bootstrap.sh

# Sandbox cluster + controller in the foreground (JSON log lines). Ctrl-C stops both.
# The router is ProxySQL when a `proxysql` is on PATH, else HAProxy (ROUTER=haproxy|proxysql).
run: bootstrap
	@scripts/run-sandbox.sh

# Lint (Python and the Dockerfile), then the whole suite (unit tests and integration tests on
# real mariadbd, HAProxy and, when a `proxysql` is on PATH, ProxySQL: the report header and the
# last line say which ProxySQL was used, or why none).
test: bootstrap
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	.venv/bin/hadolint Dockerfile
	.venv/bin/pytest -q

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/ruff format --check hacontrol tests
