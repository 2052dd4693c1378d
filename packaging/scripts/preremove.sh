#!/bin/sh
# Before removal (not before an upgrade): stop and disable the service.
#   deb: prerm remove | upgrade ...
#   rpm: %preun <count>   (0 on removal)
set -e
case "$1" in
  remove|0) ;;
  *) exit 0 ;;
esac
if [ -d "${WELDR_SYSTEMD_RUNTIME:-/run/systemd/system}" ]; then
  systemctl disable --now weldr.service >/dev/null 2>&1 || true
fi
exit 0
