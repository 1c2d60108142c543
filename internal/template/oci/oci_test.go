package oci

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

	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/oci/ocitest"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
)

// testRegistry is an in-process OCI registry (ocitest.Handler) that asks
// for basic-auth credentials when user is not empty; it returns its host:port.
func testRegistry(t *testing.T, user, pass string) string {
	t.Helper()
	srv := httptest.NewServer(ocitest.Handler(user, pass, nil))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// testImage is two layers over a static busybox: the upper one deletes a
// file, empties a directory (opaque whiteout) and adds files.
func testImage(t *testing.T) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Skipf("no /bin/busybox: %v", err)
	}
	lower := tarOf(t,
		dir("bin"), dir("etc"), dir("usr"), dir("usr/bin"),
		entry{name: "bin/busybox", typ: '0', body: string(bb), mode: 0o755},
		symlink("bin/sh", "busybox"),
		symlink("bin/ls", "/bin/busybox"),
		entry{name: "etc/passwd", typ: '0', body: "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/srv:/bin/sh\n", mode: 0o644},
		entry{name: "etc/group", typ: '0', body: "root:x:0:\napp:x:1234:\n", mode: 0o644},
		entry{name: "etc/shadow", typ: '0', body: "root:*:19000:0:99999:7:::\n", mode: 0o640, gid: 42},
		entry{name: "usr/bin/su", typ: '0', body: "suid", mode: 0o4755},
		hardlink("usr/bin/su2", "usr/bin/su"),
		dir("srv"), entry{name: "srv/secret", typ: '0', body: "s3cret", mode: 0o600, uid: 1234, gid: 1234},
		dir("cache"), file("cache/old", "old"), dir("cache/sub"), file("cache/sub/older", "older"),
		file("etc/remove-me", "bye"),
	)
	upper := tarOf(t,
		dir("etc"), file("etc/.wh.remove-me", ""),
		dir("cache"), file("cache/.wh..wh..opq", ""), file("cache/fresh", "new"),
		file("srv/added", "layer 2"),
	)
	var layers []v1.Layer
	for _, b := range []*bytes.Buffer{lower, upper} {
		l, err := ocitest.BytesLayer(b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := ocitest.Image(v1.Config{Env: []string{"PATH=/bin:/usr/bin", "GREETING=hi"}, WorkingDir: "/srv", User: "app", Cmd: []string{"/bin/sh", "-c", "sleep 1"}}, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t *testing.T, ref string, img v1.Image, auth authn.Authenticator) {
	t.Helper()
	if err := ocitest.Push(ref, img, auth); err != nil {
		t.Fatal(err)
	}
}

// fakeGuest returns guest pieces whose contents the test can recognize.
func fakeGuest(t *testing.T) rootfs.Guest {
	dir := t.TempDir()
	envd := filepath.Join(dir, "envd")
	tini := filepath.Join(dir, "tini-static")
	if err := os.WriteFile(envd, []byte("envd binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tini, []byte("tini binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	return rootfs.Guest{EnvdPath: envd, TiniPath: tini}
}

func TestImport(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (ownership)")
	}
	ctx := context.Background()
	img := testImage(t)
	wantDigest, _ := img.Digest()

	open := testRegistry(t, "", "")
	private := testRegistry(t, "alice", "pw")
	push(t, open+"/team/app:v1", img, authn.Anonymous)
	push(t, private+"/team/app:v1", img, authn.FromConfig(authn.AuthConfig{Username: "alice", Password: "pw"}))

	tests := []struct {
		name    string
		ref     Ref
		wantErr error // nil: imports
	}{
		{"public", Ref{Image: open + "/team/app:v1", Insecure: true}, nil},
		{"by digest", Ref{Image: open + "/team/app@" + wantDigest.String(), Insecure: true}, nil},
		{"private with credentials", Ref{Image: private + "/team/app:v1", Username: "alice", Password: "pw", Insecure: true}, nil},
		{"private without credentials", Ref{Image: private + "/team/app:v1", Insecure: true}, ErrUnknownImage},
		{"private with a wrong password", Ref{Image: private + "/team/app:v1", Username: "alice", Password: "no", Insecure: true}, ErrUnknownImage},
		{"unknown tag", Ref{Image: open + "/team/app:v2", Insecure: true}, ErrUnknownImage},
		{"unknown repository", Ref{Image: open + "/nobody/here:latest", Insecure: true}, ErrUnknownImage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var logs []string
			cfg, digest, err := Import(ctx, tt.ref, dir, fakeGuest(t), func(f string, a ...any) { logs = append(logs, f) })
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Import: got %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if digest != wantDigest.String() {
				t.Errorf("digest: got %s, want %s", digest, wantDigest)
			}
			if cfg.User != "app" || cfg.WorkingDir != "/srv" || len(cfg.Env) != 2 || strings.Join(cfg.Cmd, " ") != "/bin/sh -c sleep 1" {
				t.Errorf("config: got %+v", cfg)
			}
			checkImportedTree(t, dir, guest.TreeHostID)
		})
	}
}

// checkImportedTree checks an imported tree whose guest root is host id
// base (Import unpacks onto guest.TreeHostID).
func checkImportedTree(t *testing.T, dir string, base uint32) {
	t.Helper()
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
		}
		return string(b)
	}
	// Whiteouts applied.
	for _, gone := range []string{"etc/remove-me", "cache/old", "cache/sub", "etc/.wh.remove-me", "cache/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s should be gone: %v", gone, err)
		}
	}
	if got := read("cache/fresh"); got != "new" {
		t.Errorf("cache/fresh: %q", got)
	}
	if got := read("srv/added"); got != "layer 2" {
		t.Errorf("srv/added: %q", got)
	}
	// Modes, owners, links.
	modes := []ocitest.FileWant{
		{Path: "srv/secret", Mode: 0o600, UID: 1234, GID: 1234},
		{Path: "usr/bin/su", Mode: 0o755 | os.ModeSetuid, UID: 0, GID: 0},
		{Path: "etc/shadow", Mode: 0o640, UID: 0, GID: 42},
		{Path: "bin/busybox", Mode: 0o755, UID: 0, GID: 0},
		{Path: "home/user", Mode: 0o750 | os.ModeDir, UID: 1000, GID: 1000},
		{Path: "tmp", Mode: 0o777 | os.ModeDir | os.ModeSticky, UID: 0, GID: 0},
		{Path: strings.TrimPrefix(guest.EnvdPath, "/"), Mode: 0o755, UID: 0, GID: 0},
		{Path: strings.TrimPrefix(guest.InitPath, "/"), Mode: 0o755, UID: 0, GID: 0},
		{Path: "usr/bin/tini", Mode: 0o755, UID: 0, GID: 0},
		{Path: "etc/sudoers.d/user", Mode: 0o440, UID: 0, GID: 0},
	}
	for i := range modes {
		modes[i].UID += base
		modes[i].GID += base
	}
	ocitest.CheckFiles(t, dir, modes)
	if l, _ := os.Readlink(filepath.Join(dir, "bin/ls")); l != "/bin/busybox" {
		t.Errorf("bin/ls -> %q", l)
	}
	ocitest.CheckHardLink(t, dir, "usr/bin/su", "usr/bin/su2")
	// The user account, added next to the image's own.
	passwd := read("etc/passwd")
	if !strings.Contains(passwd, "app:x:1234:1234::/srv:/bin/sh\n") || !strings.Contains(passwd, "\nuser:x:1000:1000::/home/user:/bin/sh\n") {
		t.Errorf("passwd:\n%s", passwd)
	}
	if g := read("etc/group"); !strings.Contains(g, "\nuser:x:1000:\n") {
		t.Errorf("group:\n%s", g)
	}
	if s := read("etc/shadow"); !strings.Contains(s, "\nuser:!:") {
		t.Errorf("shadow:\n%s", s)
	}
	// The guest pieces.
	if got := read(strings.TrimPrefix(guest.EnvdPath, "/")); got != "envd binary" {
		t.Errorf("envd: %q", got)
	}
	if got := read("usr/bin/tini"); got != "tini binary" {
		t.Errorf("tini: %q", got)
	}
}

// TestPrepareKeepsTiniAndUser checks Prepare on a tree that already has
// the user account and tini: neither is replaced.
func TestPrepareKeepsTiniAndUser(t *testing.T) {
	dir := t.TempDir()
	for p, data := range map[string]string{
		"etc/passwd":   "root:x:0:0::/root:/bin/sh\nuser:x:1001:1001::/home/user:/bin/zsh\n",
		"usr/bin/tini": "the image's tini",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := Prepare(context.Background(), dir, fakeGuest(t)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "usr/bin/tini")); string(b) != "the image's tini" {
		t.Errorf("tini replaced: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/passwd")); strings.Count(string(b), "\nuser:") != 1 {
		t.Errorf("passwd:\n%s", b)
	}
}
