// Command code-interpreter serves E2B's code interpreter wire on port 49999
// inside a code-interpreter sandbox (see internal/codeinterp). It starts the
// default Python kernel (numpy, pandas and matplotlib imported) before it
// listens, so a ready check on /health means a warm kernel, and the
// template's snapshot holds it. Build it static:
// CGO_ENABLED=0 go build ./cmd/code-interpreter.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cocoon-run/cocoon/internal/codeinterp"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "code-interpreter:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("code-interpreter", flag.ContinueOnError)
	addr := fs.String("listen", "0.0.0.0:"+strconv.Itoa(codeinterp.Port), "address to listen on")
	python := fs.String("python", "python3", "Python interpreter with ipykernel")
	node := fs.String("node", "node", "Node.js for JavaScript contexts")
	envd := fs.String("envd", "http://127.0.0.1:49983", "envd's URL, asked for the sandbox's env vars (empty: none)")
	cwd := fs.String("cwd", "/home/user", "working directory of contexts created without one")
	warm := fs.Bool("warm", true, "start the default Python context before listening")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	tmp, err := os.MkdirTemp("", "code-interpreter-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	langs := map[string]codeinterp.Language{}
	if codeinterp.Available(*python) {
		py, err := codeinterp.Python(*python, tmp)
		if err != nil {
			return err
		}
		langs["python"] = py
	}
	if codeinterp.Available(*node) {
		js, err := codeinterp.JavaScript(*node, tmp)
		if err != nil {
			return err
		}
		langs["javascript"] = js
		if codeinterp.HasTypeScript(*node) {
			if langs["typescript"], err = codeinterp.TypeScript(*node, tmp); err != nil {
				return err
			}
		}
	}
	if codeinterp.Available("bash") {
		langs["bash"] = codeinterp.Bash("bash")
	}
	if len(langs) == 0 {
		return errors.New("neither python nor node is available")
	}
	def := "python"
	if _, ok := langs[def]; !ok {
		def = "javascript"
	}
	if *cwd != "" {
		if fi, err := os.Stat(*cwd); err != nil || !fi.IsDir() {
			*cwd, _ = os.Getwd()
		}
	}
	srv := codeinterp.New(codeinterp.Config{
		Languages: langs, DefaultLanguage: def, Cwd: *cwd, EnvdURL: *envd, Log: log,
		Aliases: map[string]string{"python3": "python", "py": "python", "js": "javascript", "node": "javascript", "sh": "bash", "shell": "bash", "ts": "typescript"},
	})
	defer srv.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *warm {
		t0 := time.Now()
		if err := srv.Warm(ctx); err != nil {
			return fmt.Errorf("start the default context: %w", err)
		}
		log.Info("default context ready", "language", def, "took", time.Since(t0).Round(time.Millisecond))
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	log.Info("listening", "addr", l.Addr().String())
	if err := hs.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
