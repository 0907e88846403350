# shellcheck shell=bash
# Sourced by the scripts and .ci/run. `need TOOL[:PACKAGE]...` installs from Debian each tool
# that is not on PATH (from the package of the tool's name, or PACKAGE), as root, and fails
# through the caller's `die` otherwise.
need() {
  local missing=() tools=() tool
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null || { missing+=("${tool#*:}") && tools+=("${tool%%:*}"); }
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs ${missing[*]}: run as root to install them, or apt-get install ${missing[*]}"
  echo "== installing ${missing[*]} from Debian"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is still missing after apt-get install"
  done
}

# `release_binary`: sets $colorproxy to $COLORPROXY, or to a release build made now the way the
# shipped binary is built: with profile-guided optimisation (scripts/pgo.sh).
release_binary() {
  colorproxy=${COLORPROXY:-}
  if [ -z "$colorproxy" ]; then
    echo "== scripts/pgo.sh (the release build with profile-guided optimisation)"
    scripts/pgo.sh >"${TMPDIR:-/tmp}/colorproxy-pgo.log" 2>&1 ||
      { cat "${TMPDIR:-/tmp}/colorproxy-pgo.log" >&2; die "scripts/pgo.sh failed"; }
    colorproxy=target/release/colorproxy
  fi
  [ -x "$colorproxy" ] || die "no colorproxy binary at $colorproxy"
}

# `log_addr LOG TEXT PID`: waits up to 10 s for "TEXT ip:port" in LOG (myapp's and colorproxy's
# first lines, where a port 0 choice is announced) and prints the address; prints the log and
# returns 1 when it does not come, or PID exits first.
log_addr() {
  local addr
  for _ in $(seq 100); do
    addr=$(grep -o "$2 [0-9.:]*" "$1" | head -n1 | awk '{print $NF}') || true
    [ -z "$addr" ] || { echo "$addr" && return 0; }
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "no '$2' line in $1:" >&2 && cat "$1" >&2 && return 1
}
