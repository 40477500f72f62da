#!/usr/bin/env bash
# Start or stop a private Docker daemon for nb2task's container tests (DESIGN §7).
#
#   tests/containers/dockerd.sh start DIR   # prints the DOCKER_HOST (unix://DIR/docker.sock)
#   tests/containers/dockerd.sh stop DIR
#   tests/containers/dockerd.sh client      # prints the path of Debian's docker client
#
# Everything lives under DIR: data root, exec root, pid file, socket and log. Both commands are
# idempotent. The daemon never creates a bridge or touches iptables: build and run with
# `--network host`. Debian's client (with BuildKit) is the one to use, not the `docker` first on
# PATH, which has no buildx. Installs docker.io and mmdebstrap with apt-get when missing.
#
# Environment: NB2TASK_DOCKERD_START_TIMEOUT (s, default 60), NB2TASK_DOCKERD_STOP_TIMEOUT
# (s, default 30), NB2TASK_NO_APT=1 to never run apt-get.
set -euo pipefail

log() { printf 'dockerd.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_installed() {
    if command -v dockerd >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 \
        && dpkg -L docker.io >/dev/null 2>&1; then
        return 0
    fi
    [ "${NB2TASK_NO_APT:-}" = 1 ] && die "dockerd/mmdebstrap missing and NB2TASK_NO_APT=1"
    [ "$(id -u)" = 0 ] || die "dockerd/mmdebstrap missing; as root run: apt-get update && apt-get install -y --no-install-recommends docker.io mmdebstrap"
    log "installing docker.io and mmdebstrap with apt-get"
    timeout 300 apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive timeout 600 \
        apt-get install -y -qq --no-install-recommends docker.io mmdebstrap >&2
}

client() {
    local c
    c=$(dpkg -L docker.io 2>/dev/null | grep -m1 'bin/docker$') || true
    if [ -z "$c" ] || [ ! -x "$c" ]; then
        die "Debian's docker client (package docker.io) not found"
    fi
    printf '%s\n' "$c"
}

# Whether a pid runs (an exited process that nobody has reaped yet does not).
alive() {
    local state
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ]
}

# Whether a pid is a live process whose command line names DIR: a recycled pid is never ours.
ours() {
    alive "$1" || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2/"
}

# The pid in a pid file, or nothing.
read_pid() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }

pid_of() { read_pid "$1/dockerd.pid"; }

answers() { DOCKER_HOST="unix://$1/docker.sock" timeout 10 "$(client)" info >/dev/null 2>&1; }

# Unmount whatever a killed daemon left mounted under DIR (deepest first).
unmount_below() {
    local m
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

# The containerd that dockerd started under DIR, if it outlived its daemon (by its pid file).
stop_containerd() {
    local cpid
    cpid=$(read_pid "$1/exec/containerd/containerd.pid")
    ours "$cpid" "$1" || return 0
    kill -TERM "$cpid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$cpid" || return 0; sleep 0.1; done
    kill -KILL "$cpid" 2>/dev/null || true
}

start() {
    local dir="$1" pid deadline
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    local sock="$dir/docker.sock"
    # The unix socket path limit is 108 bytes; containerd's socket sits deeper than ours.
    [ ${#dir} -le 70 ] || die "DIR too long for unix sockets (${#dir} > 70 chars): $dir"
    ensure_installed
    pid=$(pid_of "$dir")
    if ours "$pid" "$dir"; then
        log "dockerd already running (pid $pid)"
    else
        # Stale state from a daemon that did not stop cleanly (its containerd may still run).
        stop_containerd "$dir"
        rm -f "$dir/dockerd.pid" "$sock"
        unmount_below "$dir"
        rm -rf "$dir/exec"
        mkdir -p "$dir/data" "$dir/exec"
        log "starting dockerd in $dir (log: $dir/dockerd.log)"
        # setsid: the daemon outlives this script and is not in the caller's process group.
        setsid dockerd \
            --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
            -H "unix://$sock" \
            --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
            --default-ulimit nofile=4096:4096 --default-ulimit nproc=4096:4096 \
            --exec-opt native.cgroupdriver=cgroupfs \
            >"$dir/dockerd.log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$dir/dockerd.launch.pid"
    fi
    deadline=$(( $(date +%s) + ${NB2TASK_DOCKERD_START_TIMEOUT:-60} ))
    until answers "$dir"; do
        if ! alive "$pid"; then
            tail -n 20 "$dir/dockerd.log" >&2 || true
            die "dockerd exited before answering (see $dir/dockerd.log)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 20 "$dir/dockerd.log" >&2 || true
            die "dockerd did not answer within ${NB2TASK_DOCKERD_START_TIMEOUT:-60}s (pid $pid)"
        fi
        sleep 0.2
    done
    printf 'unix://%s\n' "$sock"
}

stop() {
    local dir="$1" pid deadline
    [ -d "$dir" ] || { log "nothing to stop in $dir"; return 0; }
    dir=$(cd "$dir" && pwd -P)
    pid=$(pid_of "$dir")
    ours "$pid" "$dir" || pid=$(read_pid "$dir/dockerd.launch.pid")
    if ours "$pid" "$dir"; then
        # Only ever this daemon, by its pid; it stops its containers and its containerd.
        kill -TERM "$pid"
        deadline=$(( $(date +%s) + ${NB2TASK_DOCKERD_STOP_TIMEOUT:-30} ))
        while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        if alive "$pid"; then
            log "dockerd (pid $pid) did not stop in time; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "dockerd (pid $pid) stopped"
    else
        log "dockerd not running in $dir"
    fi
    stop_containerd "$dir"
    # dockerd leaves its exec root's netns/default (nsfs) mounted, a killed one more.
    unmount_below "$dir"
    rm -f "$dir/dockerd.pid" "$dir/dockerd.launch.pid" "$dir/docker.sock"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    client) client ;;
    *) die "usage: $0 {start DIR|stop DIR|client}" ;;
esac
