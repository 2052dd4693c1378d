// Package manager is the weldr process that owns everything but the proxying.
//
// The process tree:
//
//	systemd ─ weldr (manager) ─┬─ weldr worker ─┐
//	                           ├─ weldr worker ─┼─ accept() on one shared listening socket
//	                           └─ ...          ─┘
//
// The manager opens the proxy and admin listeners through tableflip, so that
// they outlive the process across upgrades. It starts Proxy.Workers workers
// as "/proc/self/exe worker", each with the proxy listener as fd 3 and one end
// of a unix socketpair as fd 4, sends each the full pool, and restarts any
// that dies, with backoff. It keeps the authoritative pool: the admin API
// (and, later, health checks) change it, and every change is broadcast to
// every worker as an ipc message in the order it was made. Workers send
// counter deltas back; the manager sums them for /stats.
//
// SIGTERM and SIGINT stop the admin API and ask every worker to drain: stop
// accepting, finish in-flight requests within lifecycle.drain_timeout, exit.
// The manager exits 0 once its workers are gone. SIGHUP starts a new
// generation of the binary now on disk with the configuration now on disk;
// it inherits the listeners, and this generation drains and exits once the
// new one is ready.
package manager
