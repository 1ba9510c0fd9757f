# Sourced by the scripts: defines `uv`, installing it first where it is missing.
# uv comes from PyPI with pip; on Debian's own Python, pip refuses to install into the
# system (PEP 668), so there it goes in with --break-system-packages (uv is a single
# static binary and touches nothing else), and pip itself comes from apt where absent.
ensure_uv() {
  if type -P uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1; then
    return
  fi
  if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
      && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install --quiet uv 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages uv
}

uv() {
  if type -P uv >/dev/null 2>&1; then command uv "$@"; else python3 -m uv "$@"; fi
}

# The same, replacing the shell (signals reach the program, not a waiting bash).
exec_uv() {
  if type -P uv >/dev/null 2>&1; then exec uv "$@"; else exec python3 -m uv "$@"; fi
}

ensure_uv
