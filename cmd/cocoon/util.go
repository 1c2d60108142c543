package main

import (
	"connectrpc.com/connect"
	"fmt"
	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"io"
	"log/slog"
	"net/netip"
	"os"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func parsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad address pool %q: %w", s, err)
	}
	return p, nil
}

// newLogger returns the process's structured logger.
func newLogger(w io.Writer, debug bool) *slog.Logger {
	lvl := slog.LevelInfo
	if debug {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func connectRequestNode() *connect.Request[orchestratorv1.NodeRequest] {
	return connect.NewRequest(&orchestratorv1.NodeRequest{})
}
