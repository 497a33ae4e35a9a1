# Shared by the scripts that run a local server (sourced, not run). The caller sets NAME,
# shellcheck shell=bash
# PIDFILE and LOG, and defines say() and healthy(); install_venv also needs CACHE and VENV.

# Whether GET $1 answers 200 within 2 s (a server's health endpoint).
http_ok() {
  python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

# Installs the PyPI packages given after the description into the venv $VENV, once: one
# installer at a time, and a venv without its marker is unfinished and made again.
install_venv() {
  local what=$1
  shift
  [ -f "$VENV/.installed" ] && return 0
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.install.lock"
  flock 9
  if [ ! -f "$VENV/.installed" ]; then
    say "installing $what from PyPI"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$VENV/.installed"
  fi
  flock -u 9
}

# Installs the npm packages $2... (exact versions) into their own npm prefix $1, once. The
# marker is written last, so an install that failed or was killed half-way is redone from
# scratch on the next call; a lock keeps two runs from installing into each other.
install_into() {
  local dir=$1
  shift
  [ -f "$dir/.installed" ] && return 0
  mkdir -p "$(dirname "$dir")"
  (
    exec 9>"$dir.lock"
    flock 9
    [ -f "$dir/.installed" ] && exit 0
    say "installing $* from npm into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    # Its own package.json, or npm would walk up and install into a parent directory.
    echo '{ "private": true }' >"$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund --save-exact "$@" >&2)
    touch "$dir/.installed"
  )
}

# The PID of the server this PID file names, if it is running.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# Waits up to $1 seconds for healthy(); fails (after stopping the server) if it never is, or at
# once if the server exits.
wait_healthy() {
  local deadline=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$deadline" ]; do
    healthy && return 0
    if ! running_pid >/dev/null; then
      say "$NAME exited; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      return 1
    fi
    sleep 0.2
  done
  say "$NAME did not become healthy within $1 s"
  stop
  return 1
}

# Starts the command $3... in the background (output in $LOG, PID in $PIDFILE) and waits up to
# $1 seconds for healthy(); until it is healthy, any way out of the calling script stops it.
# Prints $2 (the server's URL) once it is.
launch() {
  local seconds=$1 url=$2
  shift 2
  mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$LOG")"
  trap 'stop' EXIT
  trap 'exit 130' INT TERM HUP
  nohup "$@" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  wait_healthy "$seconds"
  trap - EXIT INT TERM HUP
  echo "$url"
}

# Stops the server this script started, by its PID: TERM, then KILL after 5 s.
stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "stopped $NAME (pid $pid)"
  fi
  rm -f "$PIDFILE"
}
