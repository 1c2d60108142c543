package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNoSecretsInOutput is issue 18's "the admin token is printed to stdout
// at start": `cocoon api` at first start (it creates the admin token, the
// default team's API key and the secrets key) prints none of them, nor the
// node token; they are in 0600 files whose paths it names.
func TestNoSecretsInOutput(t *testing.T) {
	bin := os.Getenv("COCOON_BIN")
	if bin == "" {
		t.Skip("COCOON_BIN not set (make build)")
	}
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "api", "--data-dir", dir, "--listen", addr,
		"--node-id", "n1", "--node-url", "http://127.0.0.1:1", "--debug")
	cmd.Env = append(os.Environ(), "COCOON_ADMIN_TOKEN=", "COCOON_NODE_TOKEN=")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Up once the API answers.
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("cocoon api did not start: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	_ = cmd.Wait()

	secrets := map[string]string{}
	for _, name := range []string{"admin.token", "node.token"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out.String())
		}
		secrets[name] = strings.TrimSpace(string(b))
	}
	env, err := os.ReadFile(filepath.Join(dir, "sdk.env"))
	if err != nil {
		t.Fatalf("sdk.env: %v\n%s", err, out.String())
	}
	for _, line := range strings.Split(string(env), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok && k == "E2B_API_KEY" {
			secrets["API key"] = strings.Trim(v, `"'`)
		}
	}
	if secrets["API key"] == "" {
		t.Fatalf("no E2B_API_KEY in sdk.env: %s", env)
	}
	for name, v := range secrets {
		if strings.Contains(out.String(), v) {
			t.Errorf("the output shows the %s:\n%s", name, out.String())
		}
	}
	if !strings.Contains(out.String(), filepath.Join(dir, "admin.token")) {
		t.Errorf("the output does not say where the admin token is:\n%s", out.String())
	}
	for _, name := range []string{"admin.token", "node.token", "secrets.key", "sdk.env", "cocoon.db"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %#o, want 0600", name, fi.Mode().Perm())
		}
	}
}
