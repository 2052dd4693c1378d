#!/bin/sh
# After install or upgrade: make systemd see the unit; on upgrade, hand the
# running service over to the new binary with SIGHUP (a zero-downtime
# upgrade), or restart it if it cannot reload. A fresh install is not
# started: edit /etc/weldr/config.toml, then `systemctl enable --now weldr`.
#   deb: postinst configure <old-version>   (old-version empty on install)
#   rpm: %post <count>                      (2 or more on upgrade)
set -e
upgrade=no
case "$1" in
  configure) [ -n "${2:-}" ] && upgrade=yes ;;
  [2-9]*) upgrade=yes ;;
esac
if [ -d "${WELDR_SYSTEMD_RUNTIME:-/run/systemd/system}" ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  if [ "$upgrade" = yes ]; then
    systemctl try-reload-or-restart weldr.service || true
  fi
fi
exit 0
