package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
)

// newArtifactNode is an orchestrator with no runtime: ResolveTemplate
// fetches and takes no snapshot.
func newArtifactNode(t *testing.T, fetch func(context.Context, string) (io.ReadCloser, error)) *Orchestrator {
	return &Orchestrator{cfg: Config{DataDir: t.TempDir(), FetchTemplate: fetch},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// writeCustom lays out a built custom template under o's template root.
func writeCustom(t *testing.T, o *Orchestrator, key string) string {
	t.Helper()
	dir := filepath.Join(o.templateRoot(), customKind, key)
	tree := filepath.Join(dir, base.RootfsDir)
	for _, d := range []string{"etc", "usr/bin", "gvisor"} {
		p := filepath.Join(tree, d)
		if d == "gvisor" {
			p = filepath.Join(dir, d) // a runtime's snapshot: node-local
		}
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(tree, "etc/marker"):   "built on A\n",
		filepath.Join(dir, base.KernelFile): "kernel",
		filepath.Join(dir, base.InitrdFile): "initrd",
		filepath.Join(dir, "gvisor/state"):  "snapshot of A",
		filepath.Join(tree, "usr/bin/su"):   "setuid",
	}
	for p, c := range files {
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(tree, "usr/bin/su"), 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(tree, "etc/marker"), filepath.Join(tree, "etc/marker2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/marker", filepath.Join(tree, "marker-link")); err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(runtime.Template{ID: "custom-" + key[:16], VCPUs: 1, MemoryMB: 256, DiskMB: 512})
	if err := os.WriteFile(filepath.Join(dir, base.ManifestFile), m, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshotParams(dir, BuildParams{StartCmd: "sleep infinity", Env: map[string]string{"A": "1"}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestTemplateAcrossNodes(t *testing.T) {
	const token = "node-token"
	key := strings.Repeat("ab", 32)
	ref := CustomRef(key)
	a := newArtifactNode(t, nil)
	writeCustom(t, a, key)
	path, h, err := NewTemplateHandler(a, token)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(ctx context.Context, ref, tok string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+TemplatePath+ref, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		return http.DefaultClient.Do(req)
	}
	var fetches atomic.Int32
	b := newArtifactNode(t, func(ctx context.Context, ref string) (io.ReadCloser, error) {
		fetches.Add(1)
		resp, err := get(ctx, ref, token)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("%s", resp.Status)
		}
		return resp.Body, nil
	})

	for _, c := range []struct {
		ref, tok string
		want     int
	}{{ref, "wrong", http.StatusUnauthorized}, {CustomRef(strings.Repeat("cd", 32)), token, http.StatusNotFound}, {"../etc", token, http.StatusNotFound}} {
		resp, err := get(context.Background(), c.ref, c.tok)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s with token %q: %d, want %d", c.ref, c.tok, resp.StatusCode, c.want)
		}
	}

	dir, err := b.ResolveTemplate(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(b.templateRoot(), customKind, key); dir != want {
		t.Fatalf("resolved to %s, want %s", dir, want)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, base.RootfsDir, "etc/marker")); string(got) != "built on A\n" {
		t.Errorf("marker: %q", got)
	}
	if l, _ := os.Readlink(filepath.Join(dir, base.RootfsDir, "marker-link")); l != "/etc/marker" {
		t.Errorf("symlink: %q", l)
	}
	if fi, err := os.Stat(filepath.Join(dir, base.RootfsDir, "usr/bin/su")); err != nil || fi.Mode()&fs.ModeSetuid == 0 {
		t.Errorf("setuid file: %v %v", fi, err)
	}
	s1, _ := os.Stat(filepath.Join(dir, base.RootfsDir, "etc/marker"))
	s2, _ := os.Stat(filepath.Join(dir, base.RootfsDir, "etc/marker2"))
	if s1 == nil || s2 == nil || s1.Sys().(*syscall.Stat_t).Ino != s2.Sys().(*syscall.Stat_t).Ino {
		t.Error("hard link not kept")
	}
	if _, err := os.Stat(filepath.Join(dir, "gvisor")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the sender's snapshot came along: %v", err)
	}
	b2, _ := os.ReadFile(filepath.Join(dir, snapshotFile))
	var sp snapshotParams
	if err := json.Unmarshal(b2, &sp); err != nil || sp.StartCmd != "sleep infinity" || sp.Env["A"] != "1" {
		t.Errorf("snapshot parameters: %s %v", b2, err)
	}
	if _, err := b.ResolveTemplate(context.Background(), ref); err != nil || fetches.Load() != 1 {
		t.Errorf("second resolve: %v, %d fetches, want 1", err, fetches.Load())
	}
	if got := b.CustomTemplates(); len(got) != 1 || got[0] != ref {
		t.Errorf("B holds %v, want [%s]", got, ref)
	}

	// A template no node has: an error, and nothing left behind.
	missing := CustomRef(strings.Repeat("ef", 32))
	if _, err := b.ResolveTemplate(context.Background(), missing); err == nil {
		t.Error("resolved a template no node has")
	}
	entries, _ := os.ReadDir(filepath.Join(b.templateRoot(), customKind))
	for _, e := range entries {
		if e.IsDir() && e.Name() != key {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestResolveTemplateRefs(t *testing.T) {
	o := newArtifactNode(t, nil)
	if dir, err := o.ResolveTemplate(context.Background(), "/var/lib/cocoon/templates/base/x"); err != nil || dir != "/var/lib/cocoon/templates/base/x" {
		t.Errorf("absolute path: %q %v", dir, err)
	}
	for _, ref := range []string{"custom/../../etc", "custom/short", "base/x", ""} {
		if _, err := o.ResolveTemplate(context.Background(), ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("%q: %v, want ErrNotFound", ref, err)
		}
	}
	// Outside a fleet a node cannot fetch.
	if _, err := o.ResolveTemplate(context.Background(), CustomRef(strings.Repeat("ab", 32))); !errors.Is(err, ErrNotFound) {
		t.Errorf("no fetcher: %v, want ErrNotFound", err)
	}
}
