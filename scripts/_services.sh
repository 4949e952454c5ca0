# Sourced by demo.sh and test.sh: system programs the platform tests and demo start themselves.
# redis-server and chromium (Debian's packages) are installed when missing and this runs as root with
# apt-get; otherwise the Redis tests and the browser test skip with a visible reason.
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
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (Debian package) for the playground's browser test"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
      || echo "[setup] could not install chromium; the browser test will be skipped"
  else
    echo "[setup] chromium not found (apt-get install chromium); the browser test will be skipped"
  fi
fi
