# Sourced by demo.sh and test.sh: system services the platform tests and demo start themselves.
# redis-server (Debian's package) is installed when missing and this runs as root with apt-get;
# otherwise the Redis tests skip with a visible reason.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing redis-server (Debian package) for the event store tests"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1; } \
      || echo "[setup] could not install redis-server; Redis tests will be skipped"
  else
    echo "[setup] redis-server not found (apt-get install redis-server); Redis tests will be skipped"
  fi
fi
