package ocitest_test

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/cocoon-run/cocoon/internal/template/oci"
	"github.com/cocoon-run/cocoon/internal/template/oci/ocitest"
)

// TestTreeLayerRoundTrip archives a tree with TreeLayer, pushes it to the
// test registry and flattens it back with the oci package: owners, modes,
// links, skipped and rewritten entries come out as intended.
func TestTreeLayerRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ownership)")
	}
	src := t.TempDir()
	mk := func(p, data string, mode os.FileMode, uid, gid int) {
		t.Helper()
		full := filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(full, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil { // after chown, which clears setuid
			t.Fatal(err)
		}
	}
	mk("etc/passwd", "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n", 0o644, 0, 0)
	mk("srv/secret", "s3cret", 0o600, 1234, 4321)
	mk("usr/bin/su", "suid", 0o755|os.ModeSetuid, 0, 0)
	mk("skip/me", "gone", 0o644, 0, 0)
	mk("usr/local/bin/envd", "envd", 0o755, 0, 0)
	if err := os.Link(filepath.Join(src, "usr/bin/su"), filepath.Join(src, "usr/bin/su2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/bin/su", filepath.Join(src, "usr/bin/sulink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "tmp"), 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}

	layer, err := ocitest.TreeLayer(src, ocitest.TreeOptions{
		Skip: func(rel string) bool { return rel == "skip" || rel == "usr/local/bin/envd" },
		Rewrite: map[string]func([]byte) []byte{
			"etc/passwd": func(b []byte) []byte {
				return bytes.ReplaceAll(b, []byte("user:x:1000:1000::/home/user:/bin/sh\n"), nil)
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := ocitest.Image(v1.Config{Env: []string{"A=b"}}, layer)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ocitest.Handler("", "", nil))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/tree:1"
	if err := ocitest.Push(ref, img, authn.Anonymous); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	pulled, _, err := oci.Pull(ctx, oci.Ref{Image: ref, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := oci.Flatten(ctx, pulled, out, nil); err != nil {
		t.Fatal(err)
	}
	if cfg, err := oci.ImageConfig(pulled); err != nil || len(cfg.Env) != 1 || cfg.Env[0] != "A=b" {
		t.Errorf("config: %+v, %v", cfg, err)
	}

	ocitest.CheckFiles(t, out, []ocitest.FileWant{
		{Path: "srv/secret", Mode: 0o600, UID: 1234, GID: 4321},
		{Path: "usr/bin/su", Mode: 0o755 | os.ModeSetuid, UID: 0, GID: 0},
		{Path: "tmp", Mode: 0o777 | os.ModeDir | os.ModeSticky, UID: 0, GID: 0},
		{Path: "usr/bin/sulink", Mode: 0o777 | os.ModeSymlink, UID: 0, GID: 0},
	})
	if l, _ := os.Readlink(filepath.Join(out, "usr/bin/sulink")); l != "/usr/bin/su" {
		t.Errorf("sulink -> %q", l)
	}
	ocitest.CheckHardLink(t, out, "usr/bin/su", "usr/bin/su2")
	for _, gone := range []string{"skip", "usr/local/bin/envd"} {
		if _, err := os.Lstat(filepath.Join(out, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was not skipped: %v", gone, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(out, "etc/passwd")); string(b) != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("passwd not rewritten: %q", b)
	}
}
