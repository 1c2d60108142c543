package cocoon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cocoon "github.com/cocoon-run/cocoon/sdk/go"
)

// The end-to-end tests run against a real server when COCOON_SDK_E2E=1
// and E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL point at it
// (scripts/e2e-server.sh runs them on gvisor:sqlite).
func e2eClient(t *testing.T) *cocoon.Client {
	t.Helper()
	if os.Getenv("COCOON_SDK_E2E") != "1" {
		t.Skip("set COCOON_SDK_E2E=1 and E2B_API_KEY/E2B_API_URL/E2B_SANDBOX_URL to run against a server")
	}
	c, err := cocoon.NewClient(cocoon.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func e2eTemplate() string {
	if t := os.Getenv("COCOON_SDK_E2E_TEMPLATE"); t != "" {
		return t
	}
	return "base"
}

// newSandbox creates a sandbox killed at the end of the test.
func newSandbox(t *testing.T, c *cocoon.Client, opts cocoon.CreateOptions) *cocoon.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if opts.Template == "" {
		opts.Template = e2eTemplate()
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Minute
	}
	sb, err := c.Create(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var nf *cocoon.NotFoundError
		if err := sb.Kill(context.Background()); err != nil && !errors.As(err, &nf) {
			t.Errorf("kill %s: %v", sb.ID, err)
		}
	})
	return sb
}

func TestE2ELifecycle(t *testing.T) {
	c := e2eClient(t)
	ctx := context.Background()
	tag := fmt.Sprintf("sdk-go-%d", time.Now().UnixNano())
	a := newSandbox(t, c, cocoon.CreateOptions{Metadata: map[string]string{"suite": tag, "n": "a"}, Envs: map[string]string{"GREETING": "hi"}})
	b := newSandbox(t, c, cocoon.CreateOptions{Metadata: map[string]string{"suite": tag, "n": "b"}})

	info, err := a.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != cocoon.StateRunning || info.Metadata["n"] != "a" || info.SandboxID != a.ID {
		t.Fatalf("info: %+v", info)
	}
	res, err := a.Commands.Run(ctx, "echo $GREETING", nil)
	if err != nil || res.Stdout != "hi\n" {
		t.Fatalf("create envs: %+v %v", res, err)
	}

	// List: the metadata filter, then pages of one.
	var seen []string
	next := ""
	for range 5 {
		page, err := c.List(ctx, cocoon.ListOptions{Metadata: map[string]string{"suite": tag}, Limit: 1, NextToken: next})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Sandboxes) > 1 {
			t.Fatalf("page of %d with limit 1", len(page.Sandboxes))
		}
		for _, s := range page.Sandboxes {
			seen = append(seen, s.SandboxID)
		}
		if next = page.NextToken; next == "" {
			break
		}
	}
	slices.Sort(seen)
	want := []string{a.ID, b.ID}
	slices.Sort(want)
	if !slices.Equal(seen, want) {
		t.Fatalf("listed %v, want %v", seen, want)
	}

	// SetTimeout moves the end.
	if err := a.SetTimeout(ctx, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	if info, err = a.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(info.EndAt); d > 95*time.Second || d < 60*time.Second {
		t.Fatalf("end in %v after SetTimeout(90s)", d)
	}
	if _, err := a.Metrics(ctx, cocoon.MetricsOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Logs(ctx, cocoon.LogsOptions{}); err != nil {
		t.Fatal(err)
	}

	// Pause, pause again (409), resume: files survive.
	if _, err := a.Files.Write(ctx, "/tmp/kept", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	if err := a.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	var ae *cocoon.APIError
	if err := a.Pause(ctx); !errors.As(err, &ae) || ae.Status != 409 {
		t.Fatalf("second pause: %v", err)
	}
	if info, err = a.Info(ctx); err != nil || info.State != cocoon.StatePaused {
		t.Fatalf("after pause: %+v %v", info, err)
	}
	r, err := c.Resume(ctx, a.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Files.Read(ctx, "/tmp/kept"); err != nil || string(got) != "kept" {
		t.Fatalf("after resume: %q %v", got, err)
	}

	// Kill: then not found, for the API and for envd through the proxy.
	if err := b.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	var nf *cocoon.NotFoundError
	if _, err := b.Info(ctx); !errors.As(err, &nf) {
		t.Fatalf("info after kill: %v", err)
	}
	if err := b.Kill(ctx); !errors.As(err, &nf) {
		t.Fatalf("second kill: %v", err)
	}
	var killed *cocoon.SandboxKilledError
	if _, err := b.Commands.Run(ctx, "true", nil); !errors.As(err, &nf) && !errors.As(err, &killed) {
		t.Fatalf("run in a killed sandbox: %v", err)
	}
}

func TestE2EErrors(t *testing.T) {
	c := e2eClient(t)
	ctx := context.Background()
	var nf *cocoon.NotFoundError
	if _, err := c.Info(ctx, "nosuchsandbox"); !errors.As(err, &nf) {
		t.Fatalf("unknown sandbox: %v", err)
	}
	if _, err := c.Create(ctx, cocoon.CreateOptions{Template: "no-such-template"}); !errors.As(err, &nf) {
		t.Fatalf("unknown template: %v", err)
	}
	bad, err := cocoon.NewClient(cocoon.Config{APIKey: "e2b_wrong"})
	if err != nil {
		t.Fatal(err)
	}
	var auth *cocoon.AuthError
	if _, err := bad.List(ctx, cocoon.ListOptions{}); !errors.As(err, &auth) {
		t.Fatalf("bad key: %v", err)
	}
	down, err := cocoon.NewClient(cocoon.Config{APIURL: "http://127.0.0.1:1", MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	var ce *cocoon.ConnectionError
	if _, err := down.List(ctx, cocoon.ListOptions{}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "E2B_API_URL") {
		t.Fatalf("no server: %v", err)
	}
}

func TestE2ECommands(t *testing.T) {
	c := e2eClient(t)
	sb := newSandbox(t, c, cocoon.CreateOptions{})
	ctx := context.Background()

	t.Run("run", func(t *testing.T) {
		res, err := sb.Commands.Run(ctx, "cd; echo $A $PWD; echo err >&2", &cocoon.RunOptions{Envs: map[string]string{"A": "a"}})
		if err != nil || res.Stderr != "err\n" || !strings.HasPrefix(res.Stdout, "a /") {
			t.Fatalf("%+v %v", res, err)
		}
		res, err = sb.Commands.Run(ctx, "pwd", &cocoon.RunOptions{Cwd: "/tmp"})
		if err != nil || res.Stdout != "/tmp\n" {
			t.Fatalf("cwd: %+v %v", res, err)
		}
		_, err = sb.Commands.Run(ctx, "echo out; exit 3", nil)
		var exit *cocoon.CommandExitError
		if !errors.As(err, &exit) || exit.ExitCode != 3 || exit.Stdout != "out\n" {
			t.Fatalf("exit 3: %v", err)
		}
	})

	t.Run("streaming", func(t *testing.T) {
		var mu sync.Mutex
		var got []string
		cb := func(prefix string) func([]byte) {
			return func(b []byte) { mu.Lock(); got = append(got, prefix+string(b)); mu.Unlock() }
		}
		// Callbacks come in the order of the events; the lines are
		// separate writes 50 ms apart.
		_, err := sb.Commands.Run(ctx, "for i in 1 2 3; do echo o$i; echo e$i >&2; sleep 0.05; done",
			&cocoon.RunOptions{OnStdout: cb("1:"), OnStderr: cb("2:")})
		if err != nil {
			t.Fatal(err)
		}
		joined := strings.Join(got, "")
		for _, w := range []string{"1:o1\n", "2:e1\n", "1:o3\n", "2:e3\n"} {
			if !strings.Contains(joined, w) {
				t.Fatalf("callbacks got %q, want %q in it", got, w)
			}
		}
		if strings.Index(joined, "1:o1") > strings.Index(joined, "1:o3") {
			t.Fatalf("out of order: %q", got)
		}
	})

	t.Run("background stdin list connect kill", func(t *testing.T) {
		h, err := sb.Commands.Start(ctx, "read line; echo got $line", &cocoon.RunOptions{Stdin: true, Tag: "reader"})
		if err != nil {
			t.Fatal(err)
		}
		ps, err := sb.Commands.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ps, func(p cocoon.ProcessInfo) bool { return p.PID == h.PID && p.Tag == "reader" }) {
			t.Fatalf("pid %d not in %+v", h.PID, ps)
		}
		if err := h.SendStdin(ctx, []byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		res, err := h.Wait(ctx)
		if err != nil || res.Stdout != "got hello\n" {
			t.Fatalf("%+v %v", res, err)
		}

		// A process attached again by Connect, then killed.
		loop, err := sb.Commands.Start(ctx, "while :; do echo tick; sleep 0.1; done", nil)
		if err != nil {
			t.Fatal(err)
		}
		ticks := make(chan struct{}, 100)
		again, err := sb.Commands.Connect(ctx, loop.PID, &cocoon.ConnectOptions{OnStdout: func([]byte) {
			select {
			case ticks <- struct{}{}:
			default:
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		<-ticks
		if err := loop.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		var exit *cocoon.CommandExitError
		if _, err := again.Wait(ctx); !errors.As(err, &exit) || exit.ExitCode != -1 {
			t.Fatalf("connected wait after kill: %v", err)
		}
		if _, err := loop.Wait(ctx); !errors.As(err, &exit) {
			t.Fatalf("wait after kill: %v", err)
		}
		var nf *cocoon.NotFoundError
		if err := sb.Commands.Kill(ctx, loop.PID); !errors.As(err, &nf) {
			t.Fatalf("kill of an ended process: %v", err)
		}
	})

	t.Run("context cancellation kills", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := sb.Commands.Run(cctx, "sleep 60", &cocoon.RunOptions{Tag: "cancelled"})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 10*time.Second {
			t.Fatalf("after %v: %v", time.Since(t0), err)
		}
		ps, err := sb.Commands.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(ps, func(p cocoon.ProcessInfo) bool { return p.Tag == "cancelled" }) {
			t.Fatalf("the cancelled command still runs: %+v", ps)
		}
		_, err = sb.Commands.Run(ctx, "sleep 60", &cocoon.RunOptions{Timeout: 300 * time.Millisecond})
		var te *cocoon.TimeoutError
		if !errors.As(err, &te) {
			t.Fatalf("RunOptions.Timeout: %v", err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		const n = 8
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := sb.Commands.Run(ctx, fmt.Sprintf("sleep 0.2; echo %d", i), nil)
				if err != nil {
					errs <- err
				} else if res.Stdout != fmt.Sprintf("%d\n", i) {
					errs <- fmt.Errorf("command %d printed %q", i, res.Stdout)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestE2EPTY(t *testing.T) {
	c := e2eClient(t)
	sb := newSandbox(t, c, cocoon.CreateOptions{})
	ctx := context.Background()
	var mu sync.Mutex
	var out bytes.Buffer
	changed := make(chan struct{}, 1)
	h, err := sb.PTY.Create(ctx, cocoon.PTYOptions{Cols: 80, Rows: 24, OnData: func(b []byte) {
		mu.Lock()
		out.Write(b)
		mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor := func(s string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			mu.Lock()
			ok := strings.Contains(out.String(), s)
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-changed:
			case <-deadline:
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("no %q in the terminal: %q", s, out.String())
			}
		}
	}
	if err := sb.PTY.SendInput(ctx, h.PID, []byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	waitFor("24 80")
	if err := sb.PTY.Resize(ctx, h.PID, 100, 30); err != nil {
		t.Fatal(err)
	}
	if err := sb.PTY.SendInput(ctx, h.PID, []byte("stty size; exit 5\n")); err != nil {
		t.Fatal(err)
	}
	waitFor("30 100")
	var exit *cocoon.CommandExitError
	if _, err := h.Wait(ctx); !errors.As(err, &exit) || exit.ExitCode != 5 {
		t.Fatalf("pty exit: %v", err)
	}
	h, err = sb.PTY.Create(ctx, cocoon.PTYOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.PTY.Kill(ctx, h.PID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Wait(ctx); !errors.As(err, &exit) {
		t.Fatalf("pty kill: %v", err)
	}
}

func TestE2EFiles(t *testing.T) {
	c := e2eClient(t)
	sb := newSandbox(t, c, cocoon.CreateOptions{})
	ctx := context.Background()
	fs := sb.Files

	data := make([]byte, 3<<20+17)
	rand.Read(data)
	if _, err := fs.Write(ctx, "/tmp/t/bin", data); err != nil {
		t.Fatal(err)
	}
	got, err := fs.Read(ctx, "/tmp/t/bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (want %d): %v", len(got), len(data), err)
	}
	if _, err := fs.WriteStream(ctx, "/tmp/t/stream", io.LimitReader(bytes.NewReader(data), 1<<20)); err != nil {
		t.Fatal(err)
	}
	r, err := fs.ReadStream(ctx, "/tmp/t/stream")
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data[:1<<20]) {
		t.Fatalf("stream: %d bytes, %v", len(got), err)
	}
	if _, err := fs.WriteMany(ctx, []cocoon.WriteEntry{{Path: "/tmp/t/d/a", Data: []byte("a")}, {Path: "/tmp/t/d/e/b", Data: []byte("bb")}}); err != nil {
		t.Fatal(err)
	}
	st, err := fs.Stat(ctx, "/tmp/t/d/e/b")
	if err != nil || st.Size != 2 || st.Type != cocoon.FileTypeFile || st.Name != "b" {
		t.Fatalf("stat: %+v %v", st, err)
	}
	list, err := fs.List(ctx, "/tmp/t/d", 2)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range list {
		paths = append(paths, e.Path)
	}
	slices.Sort(paths)
	if !slices.Equal(paths, []string{"/tmp/t/d/a", "/tmp/t/d/e", "/tmp/t/d/e/b"}) {
		t.Fatalf("list depth 2: %v", paths)
	}
	if l1, err := fs.List(ctx, "/tmp/t/d", 1); err != nil || len(l1) != 2 {
		t.Fatalf("list depth 1: %+v %v", l1, err)
	}
	if ok, err := fs.MakeDir(ctx, "/tmp/t/new/deep"); !ok || err != nil {
		t.Fatalf("mkdir: %v %v", ok, err)
	}
	if ok, err := fs.MakeDir(ctx, "/tmp/t/new/deep"); ok || err != nil {
		t.Fatalf("mkdir again: %v %v", ok, err)
	}
	if _, err := fs.Rename(ctx, "/tmp/t/d/a", "/tmp/t/new/a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := fs.Exists(ctx, "/tmp/t/d/a"); ok || err != nil {
		t.Fatalf("exists after rename: %v %v", ok, err)
	}
	if ok, err := fs.Exists(ctx, "/tmp/t/new/a"); !ok || err != nil {
		t.Fatalf("exists: %v %v", ok, err)
	}
	if err := fs.Remove(ctx, "/tmp/t/new"); err != nil {
		t.Fatal(err)
	}
	var nf *cocoon.NotFoundError
	if _, err := fs.Read(ctx, "/tmp/t/new/a"); !errors.As(err, &nf) {
		t.Fatalf("read removed: %v", err)
	}
	if _, err := fs.Stat(ctx, "/nonexistent"); !errors.As(err, &nf) {
		t.Fatalf("stat missing: %v", err)
	}

	// Watch: the events of a write under the directory.
	if _, err := fs.MakeDir(ctx, "/tmp/w"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := fs.Watch(wctx, "/tmp/w", cocoon.WatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Write(ctx, "/tmp/w/f", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for ev := range w.Events {
		if ev.Name == "f" && (ev.Type == cocoon.EventCreate || ev.Type == cocoon.EventWrite) {
			break
		}
	}
	w.Stop()
	if wctx.Err() != nil {
		t.Fatal("no event for /tmp/w/f")
	}
}
