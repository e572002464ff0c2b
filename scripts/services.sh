#!/usr/bin/env bash
# Starts (or stops) throwaway PostgreSQL and Redis servers on loopback for the test suite.
#
#   scripts/services.sh start   installs them from Debian's packages when missing, starts
#                               them on free ports, writes .services/env (DSN and URL)
#   scripts/services.sh stop    stops both and removes their data
#   scripts/services.sh check   fails, naming it, when what `start` needs is missing and
#                               cannot be installed
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="$ROOT/.services"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Two distinct free ports: both sockets are held until both are bound (probed one after the
# other, the second could be the first again).
free_ports() {
  python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

# The newest server's bin directory: a client-only package has psql there but no initdb.
pg_bin() { ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 | xargs -r dirname; }

install_missing() {
  local packages=()
  [ -n "$(pg_bin)" ] || packages+=(postgresql)
  command -v redis-server >/dev/null || packages+=(redis-server)
  if [ ${#packages[@]} -gt 0 ]; then
    echo "installing ${packages[*]} from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}"
    # The packages start system-wide servers we do not use.
    as_root service postgresql stop >/dev/null 2>&1 || true
    as_root service redis-server stop >/dev/null 2>&1 || true
  fi
}

start() {
  stop >/dev/null 2>&1 || true
  install_missing
  mkdir -p "$STATE"
  local bin pg_port redis_port pg_dir run_as=()
  bin="$(pg_bin)"
  read -r pg_port redis_port < <(free_ports)
  # The cluster lives under /tmp, which the server's user can reach wherever the repo is.
  pg_dir="$(mktemp -d /tmp/llm-agent-runtime-pg.XXXXXX)"
  echo "$pg_dir" >"$STATE/pg_dir"
  # PostgreSQL refuses to run as root: use the packaged `postgres` user then.
  if [ "$(id -u)" = 0 ]; then
    run_as=(runuser -u postgres --)
    chown postgres "$pg_dir"
  fi
  # No locale of the environment's: one the machine has not generated (a LANG forwarded by
  # ssh, set in a container image) makes initdb fail.
  "${run_as[@]}" "$bin/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync \
    --no-locale -E UTF8 >/dev/null
  "${run_as[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -o \
    "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres agent_runtime_test
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" --dir "$STATE"
  for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis-cli -p "$redis_port" ping >/dev/null
  cat >"$STATE/env" <<ENV
export LLM_AGENT_RUNTIME_TEST_POSTGRES_DSN=postgresql://postgres@127.0.0.1:$pg_port/agent_runtime_test
export LLM_AGENT_RUNTIME_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/0
export LLM_AGENT_RUNTIME_REQUIRE_SERVICES=1
ENV
  echo "PostgreSQL on 127.0.0.1:$pg_port, Redis on 127.0.0.1:$redis_port"
}

stop() {
  local bin pg_dir run_as=()
  bin="$(pg_bin)"
  [ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)
  pg_dir="$(cat "$STATE/pg_dir" 2>/dev/null || true)"
  if [ -n "$bin" ] && [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ]; then
    "${run_as[@]}" "$bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null || true
  fi
  [ -n "$pg_dir" ] && rm -rf "$pg_dir"
  local pid
  pid="$(cat "$STATE/redis.pid" 2>/dev/null || true)"
  # Only our server: a pid left behind by a server that died may belong to another process.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
    kill "$pid" 2>/dev/null || true
  fi
  rm -rf "$STATE"
}

# What `start` needs and cannot install itself: fails at once (before a test build), naming it.
check() {
  local missing=()
  command -v flock >/dev/null || missing+=("flock, which keeps two runs of one checkout apart: apt-get install util-linux")
  if [ -z "$(pg_bin)" ] || ! command -v redis-server >/dev/null; then
    if ! command -v apt-get >/dev/null; then
      missing+=("PostgreSQL and Redis servers for the tests, from Debian's packages (postgresql, redis-server): this host has no apt-get to install them")
    elif [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
      missing+=("root or sudo, to install the test servers: apt-get install postgresql redis-server")
    fi
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    printf 'missing: %s\n' "${missing[@]}" >&2
    exit 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  check) check ;;
  *) echo "usage: $0 start|stop|check" >&2; exit 2 ;;
esac
