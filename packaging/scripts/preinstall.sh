#!/bin/sh
# Create the weldr system user before the files that belong to it land.
set -e
if getent passwd weldr >/dev/null 2>&1; then
  exit 0
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
  echo 'u weldr - "weldr reverse proxy" /var/lib/weldr /usr/sbin/nologin' | systemd-sysusers -
elif command -v useradd >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/weldr --no-create-home \
    --shell /usr/sbin/nologin --comment "weldr reverse proxy" weldr
else
  adduser --system --group --home /var/lib/weldr --no-create-home \
    --shell /usr/sbin/nologin weldr
fi
