// Command envd is the daemon inside every Cocoon sandbox: it serves the
// E2B-compatible process and filesystem services, file transfer, /init and
// metrics on one port. Build it static: CGO_ENABLED=0 go build ./cmd/envd.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/cocoon-run/cocoon/internal/envd"
	"github.com/cocoon-run/cocoon/internal/envd/oom"
	"github.com/cocoon-run/cocoon/internal/envd/reaper"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "envd:", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func run() error {
	port := envd.DefaultPort
	if v := os.Getenv("ENVD_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("parse ENVD_PORT: %w", err)
		}
		port = p
	}
	fs := flag.NewFlagSet("envd", flag.ContinueOnError)
	fs.IntVar(&port, "port", port, "port to listen on (env ENVD_PORT)")
	addr := fs.String("addr", envOr("ENVD_ADDR", ""), "address to listen on; overrides -port (env ENVD_ADDR)")
	token := fs.String("token", envOr("ENVD_ACCESS_TOKEN", ""), "initial access token (env ENVD_ACCESS_TOKEN)")
	defUser := fs.String("default-user", envOr("ENVD_DEFAULT_USER", ""), `default account (default "user" when it exists, else envd's own)`)
	debug := fs.Bool("debug", os.Getenv("ENVD_DEBUG") != "", "log every request (env ENVD_DEBUG)")
	oomMode := fs.String("oom-killer", envOr("ENVD_OOM_KILLER", "auto"),
		"kill the largest process when the sandbox runs out of memory: on, off, or auto: on under gVisor when envd is PID 1 or 2, the sandbox's own daemon (env ENVD_OOM_KILLER)")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *version {
		fmt.Println(envd.Version)
		return nil
	}

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	// JSON lines, as E2B's envd writes them: the sandbox's logs API serves
	// them and the official CLI parses each one (`e2b sandbox logs`).
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	listen := *addr
	if listen == "" {
		listen = net.JoinHostPort("", strconv.Itoa(port))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// As a sandbox's PID 1 (gVisor's OCI process, a microVM's init after
	// cocoon-init) envd reaps orphans itself: kill -9 -1 inside spares
	// PID 1, and the sandbox outlives it.
	var rp *reaper.Reaper
	if os.Getpid() == 1 {
		rp = reaper.New()
		go rp.Run(ctx)
		// Go's default for SIGHUP is to exit; a handled signal (unlike an
		// ignored one) is reset to default in the processes envd starts.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			for range hup {
				log.Info("SIGHUP ignored: envd is PID 1")
			}
		}()
	}
	srv, err := envd.New(envd.Config{AccessToken: *token, DefaultUser: *defUser, Logger: log, Reaper: rp})
	if err != nil {
		return fmt.Errorf("assemble envd: %w", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	switch *oomMode {
	case "on", "auto":
		// auto: only as a gVisor sandbox's own daemon (PID 1 or 2): a
		// microVM's kernel has an OOM killer, and a machine envd merely
		// runs on (tests, a host) is not envd's to police.
		gvisor := oom.UnderGVisor()
		if *oomMode == "on" || (os.Getpid() <= 2 && gvisor) {
			// envd does not lower its own oom_score_adj: the processes it
			// starts would inherit it, and Killer spares -1000.
			k := &oom.Killer{Log: log}
			if gvisor {
				k.Sample = oom.Sysinfo
			}
			go func() {
				if err := k.Run(ctx); err != nil && ctx.Err() == nil {
					log.Warn("oom killer stopped", "err", err)
				}
			}()
		}
	case "off":
	default:
		return fmt.Errorf("-oom-killer %q: want on, off or auto", *oomMode)
	}
	log.Info("envd starting", "version", envd.Version, "addr", ln.Addr().String(), "pid", os.Getpid(), "token", *token != "")
	if err := srv.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("envd stopped")
	return nil
}
