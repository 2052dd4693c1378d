// Command weldr is an HTTP/1.1 reverse proxy and load balancer for fleets
// whose backends come and go. See the README for how to run it.
//
//	weldr -config /etc/weldr/config.toml    run the manager (and its workers)
//	weldr -check-config -config FILE        validate a configuration and exit
//	weldr -version                          print the version and exit
//
// "weldr worker" is the hidden mode the manager starts its workers in.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"

	"github.com/weldr-proxy/weldr/ipc"
	"github.com/weldr-proxy/weldr/manager"
	"github.com/weldr-proxy/weldr/worker"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(runWorker())
	}
	os.Exit(runManager(os.Args[1:], os.Stdout, os.Stderr))
}

func runManager(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weldr", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/weldr/config.toml", "configuration `file`")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "weldr: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *version {
		fmt.Fprintf(stdout, "weldr %s\n", manager.Version)
		return 0
	}
	cfg, err := manager.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "weldr: %s: %v\n", *path, err)
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: configuration is valid\n", *path)
		return 0
	}
	log := worker.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := manager.Run(ctx, *path, cfg, log); err != nil {
		log.Error("weldr stopped", "error", err)
		return 1
	}
	log.Info("weldr stopped")
	return 0
}

// runWorker is a worker process: fd 3 is the shared proxy listener, fd 4 its
// end of the socketpair to the manager.
func runWorker() int {
	// SIGINT from a terminal reaches the whole process group; the manager
	// decides when workers stop. SIGHUP is the manager's business too.
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	// Until the manager's settings arrive (worker.Run), in its log.format.
	log := worker.NewLogger(os.Stderr, "info", os.Getenv(ipc.LogFormatEnv))
	// WELDR_WORKER_CPUPROFILE=path writes each worker's CPU profile to
	// path.<pid> until it exits: for the performance work, see
	// docs/BENCHMARKS.md.
	if path := os.Getenv("WELDR_WORKER_CPUPROFILE"); path != "" {
		if f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid())); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		log.Error("worker: opening the proxy listener (fd 3)", "error", err)
		return 1
	}
	conn, err := net.FileConn(os.NewFile(4, "ipc"))
	if err != nil {
		log.Error("worker: opening the manager socket (fd 4)", "error", err)
		return 1
	}
	// The bell the manager rings for pool changes, if it passed one.
	var bell *ipc.Bell
	if s := os.Getenv(ipc.BellEnv); s != "" {
		fd, err := strconv.Atoi(s)
		if err == nil {
			bell, err = ipc.OpenBell(fd)
		}
		if err != nil {
			log.Warn("worker: no bell: pool changes will reach this worker late when it is busy", ipc.BellEnv, s, "error", err)
		}
	}
	// The board where the workers count their connections, if it passed one.
	sh := worker.Shared{Bell: bell}
	if s := os.Getenv(ipc.BoardEnv); s != "" {
		var err error
		sh.Board, sh.Seat, err = openBoard(s, os.Getenv(ipc.BoardSeatEnv))
		if err != nil {
			log.Warn("worker: no board: this worker may take more than its share of connections that arrive at once", "error", err)
		}
	}
	if err := worker.Run(ctx, ln, conn, sh, os.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("worker stopped", "pid", os.Getpid(), "error", err)
		return 1
	}
	return 0
}

// openBoard opens the board whose file descriptor and seat the manager
// passed in the environment as fd and seat.
func openBoard(fd, seat string) (*ipc.Board, int, error) {
	f, err := strconv.Atoi(fd)
	if err != nil {
		return nil, 0, fmt.Errorf("%s=%q: not a file descriptor", ipc.BoardEnv, fd)
	}
	n, err := strconv.Atoi(seat)
	if err != nil {
		return nil, 0, fmt.Errorf("%s=%q: not a seat number", ipc.BoardSeatEnv, seat)
	}
	b, err := ipc.OpenBoard(f, n)
	return b, n, err
}
