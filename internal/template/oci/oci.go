// Package oci turns an OCI (or Docker) image from a registry into a Cocoon
// root filesystem tree: it pulls the image with go-containerregistry,
// flattens its layers in order (whiteouts, hard links, symbolic links,
// permissions and ownership kept), adds the `user` account when the image
// lacks it, and installs envd and cocoon-init (rootfs.Customize). The same
// safe tar extraction serves exported build sandboxes and uploaded COPY
// archives.
package oci

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
)

// ErrUnknownImage means the registry does not have the image (or the
// credentials do not grant access to it).
var ErrUnknownImage = errors.New("image not found in the registry")

// Ref names an image and how to reach it.
type Ref struct {
	// Image is a reference such as "debian:bookworm" or
	// "registry.example.com/team/app@sha256:...".
	Image string
	// Username and Password authenticate to a private registry.
	Username string
	Password string
	// Insecure allows plain HTTP (local and test registries).
	Insecure bool
	// MaxBytes caps the flattened image's file data (Import; 0: no cap):
	// the template's disk size.
	MaxBytes int64
}

// Pull resolves ref for linux/amd64 (or the host platform) and returns the
// image and its digest.
func Pull(ctx context.Context, ref Ref) (v1.Image, string, error) {
	var nopts []name.Option
	if ref.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref.Image, nopts...)
	if err != nil {
		return nil, "", fmt.Errorf("parse image %q: %w", ref.Image, err)
	}
	auth := authn.Anonymous
	if ref.Username != "" || ref.Password != "" {
		auth = authn.FromConfig(authn.AuthConfig{Username: ref.Username, Password: ref.Password})
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuth(auth),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && (te.StatusCode == http.StatusNotFound || te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden) {
			return nil, "", fmt.Errorf("pull %s: %w: %v", ref.Image, ErrUnknownImage, err)
		}
		return nil, "", fmt.Errorf("pull %s: %w", ref.Image, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, "", fmt.Errorf("pull %s: digest: %w", ref.Image, err)
	}
	return img, d.String(), nil
}

// Flatten extracts img's layers, lowest first, into dir, applying
// whiteouts. logf (optional) is told about each layer.
func Flatten(ctx context.Context, img v1.Image, dir string, logf func(string, ...any)) error {
	return flatten(ctx, img, dir, 0, 0, logf)
}

// flatten is Flatten with a cap on the layers' file data, all layers
// together (0: none), unprivileged (ExtractAs) onto hostID's id range
// unless hostID is 0.
func flatten(ctx context.Context, img v1.Image, dir string, hostID uint32, maxBytes int64, logf func(string, ...any)) error {
	var counted int64
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("flatten: layers: %w", err)
	}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if logf != nil {
			d, _ := l.Digest()
			sz, _ := l.Size()
			logf("layer %d/%d %s (%d bytes)", i+1, len(layers), d, sz)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("flatten: layer %d: %w", i+1, err)
		}
		opts := ExtractOptions{Whiteouts: true, MaxBytes: maxBytes, Counted: &counted}
		if hostID != 0 {
			err = ExtractAs(ctx, rc, dir, hostID, opts)
		} else {
			err = Extract(rc, dir, opts)
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("flatten: layer %d: %w", i+1, err)
		}
	}
	return nil
}

// Config is what Cocoon keeps of an image's configuration.
type Config struct {
	Env        []string
	WorkingDir string
	User       string
	Entrypoint []string
	Cmd        []string
}

// ImageConfig returns img's runtime configuration.
func ImageConfig(img v1.Image) (Config, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return Config{}, fmt.Errorf("image config: %w", err)
	}
	c := cf.Config
	return Config{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}, nil
}

// Import pulls ref and builds a Cocoon root filesystem tree from it in dir:
// the flattened image, the user account and the Cocoon guest pieces. The
// image is the tenant's: its layers are unpacked and the tree prepared by
// unprivileged children (ExtractAs, PrepareAs), owned by the ids from
// guest.TreeHostID on.
func Import(ctx context.Context, ref Ref, dir string, g rootfs.Guest, logf func(string, ...any)) (Config, string, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	logf("pull %s", ref.Image)
	img, digest, err := Pull(ctx, ref)
	if err != nil {
		return Config{}, "", err
	}
	logf("image %s", digest)
	if err := flatten(ctx, img, dir, guest.TreeHostID, ref.MaxBytes, logf); err != nil {
		return Config{}, "", err
	}
	cfg, err := ImageConfig(img)
	if err != nil {
		return Config{}, "", err
	}
	if err := PrepareAs(ctx, dir, guest.TreeHostID, g); err != nil {
		return Config{}, "", err
	}
	return cfg, digest, nil
}

// Prepare makes any root filesystem tree bootable as a Cocoon guest: the
// standard directories, the `user` account (uid 1000) when missing, envd and
// cocoon-init.
func Prepare(ctx context.Context, dir string, g rootfs.Guest) error {
	for _, d := range []string{"etc", "proc", "sys", "dev", "run", "tmp", "home", "root", "usr/local/bin", "usr/local/sbin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	_ = os.Chmod(filepath.Join(dir, "tmp"), 0o1777|os.ModeSticky)
	if err := EnsureUser(dir, "user", 1000); err != nil {
		return err
	}
	if err := rootfs.Customize(ctx, dir, g); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return ensureTini(dir, g.TiniPath)
}

// ensureTini installs the static tini at src as usr/bin/tini (the gVisor
// runtime's init) unless the tree has one; an empty src skips it.
func ensureTini(dir, src string) error {
	dst := filepath.Join(dir, "usr", "bin", "tini")
	if _, err := os.Lstat(dst); err == nil || src == "" {
		return nil
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("prepare: tini: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("prepare: tini: %w", err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return fmt.Errorf("prepare: tini: %w", err)
	}
	return nil
}

// EnsureUser adds the account name (uid = gid = id, home /home/<name>,
// shell bash or sh) to the tree's passwd, group and shadow files unless it
// already exists.
func EnsureUser(dir, name string, id int) error {
	passwd := filepath.Join(dir, "etc", "passwd")
	if has, err := hasEntry(passwd, name); err != nil {
		return err
	} else if has {
		return nil
	}
	shell := "/bin/sh"
	if _, err := os.Lstat(filepath.Join(dir, "bin", "bash")); err == nil {
		shell = "/bin/bash"
	}
	home := "/home/" + name
	if err := appendLine(passwd, fmt.Sprintf("%s:x:%d:%d::%s:%s", name, id, id, home, shell), 0o644); err != nil {
		return err
	}
	group := filepath.Join(dir, "etc", "group")
	if has, err := hasEntry(group, name); err != nil {
		return err
	} else if !has {
		if err := appendLine(group, fmt.Sprintf("%s:x:%d:", name, id), 0o644); err != nil {
			return err
		}
	}
	shadow := filepath.Join(dir, "etc", "shadow")
	if _, err := os.Stat(shadow); err == nil {
		if err := appendLine(shadow, name+":!:19000:0:99999:7:::", 0o640); err != nil {
			return err
		}
	}
	h := filepath.Join(dir, strings.TrimPrefix(home, "/"))
	if err := os.MkdirAll(h, 0o750); err != nil {
		return fmt.Errorf("ensure user: %w", err)
	}
	return os.Chown(h, id, id)
}

func hasEntry(file, name string) (bool, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ensure user: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name+":") {
			return true, nil
		}
	}
	return false, sc.Err()
}

func appendLine(file, line string, mode os.FileMode) error {
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ensure user: %w", err)
	}
	// Keep an existing file's mode and owner (shadow is root:shadow 0640).
	uid, gid := 0, 0
	if fi, err := os.Stat(file); err == nil {
		mode = fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	b = append(b, line+"\n"...)
	// Write a new file: the old one may be a hard link shared with a cache.
	tmp := file + ".cocoon-tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("ensure user: %w", err)
	}
	if err := os.Chmod(tmp, mode); err != nil { // not masked by the umask
		return fmt.Errorf("ensure user: %w", err)
	}
	if err := os.Lchown(tmp, uid, gid); err != nil {
		return fmt.Errorf("ensure user: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("ensure user: %w", err)
	}
	return nil
}
