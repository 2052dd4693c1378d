#!/bin/sh
# After removal: forget the unit. The state in /var/lib/weldr and the
# configuration stay, as an operator expects of a server package.
set -e
if [ -d "${WELDR_SYSTEMD_RUNTIME:-/run/systemd/system}" ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
