// Package rootfs builds a guest root filesystem: a Debian tree made with
// debootstrap from the host's configured mirror, customized for Cocoon
// (user, sudo, envd, cocoon-init), and turned into an ext4 image with
// mkfs.ext4 -d, without mounting anything. Every stage is cached.
package rootfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// DirName is the tree inside a rootfs cache directory; ImageName the ext4 image.
const (
	DirName   = "rootfs"
	ImageName = "rootfs.ext4"
)

// DefaultInclude are the packages added to a minbase system.
var DefaultInclude = []string{"bash", "python3", "ca-certificates", "procps", "sudo", "tini", "iproute2"}

// Debian describes a debootstrap run.
type Debian struct {
	Suite   string   // e.g. bookworm
	Mirror  string   // e.g. from HostMirror
	Variant string   // e.g. minbase
	Include []string // extra packages
}

// key hashes everything that changes the debootstrapped tree.
func (d Debian) key() string {
	return cache.Key("debootstrap", "1", d.Suite, d.Mirror, d.Variant, strings.Join(d.Include, ","))
}

// Logf receives a build's log lines (debootstrap's "I: ..." lines).
type Logf func(format string, args ...any)

// Debootstrap returns a debootstrapped tree for d under
// <cacheRoot>/debootstrap/<key>/rootfs. Downloaded packages are kept in
// <cacheRoot>/debs/<suite> so a rebuild with other inputs is quicker.
func Debootstrap(ctx context.Context, cacheRoot string, d Debian, logf Logf) (string, error) {
	if d.Suite == "" || d.Mirror == "" {
		return "", fmt.Errorf("debootstrap: suite and mirror are required")
	}
	debs, err := filepath.Abs(filepath.Join(cacheRoot, "debs", d.Suite))
	if err != nil {
		return "", fmt.Errorf("debootstrap: %w", err)
	}
	dir, _, err := cache.Ensure(ctx, cacheRoot, "debootstrap", d.key(), func(ctx context.Context, dir string) error {
		if err := os.MkdirAll(debs, 0o755); err != nil {
			return fmt.Errorf("debootstrap: %w", err)
		}
		args := []string{"--cache-dir=" + debs}
		if d.Variant != "" {
			args = append(args, "--variant="+d.Variant)
		}
		if len(d.Include) > 0 {
			args = append(args, "--include="+strings.Join(d.Include, ","))
		}
		args = append(args, d.Suite, filepath.Join(dir, DirName), d.Mirror)
		return runLogged(ctx, logf, "debootstrap", args...)
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, DirName), nil
}

// Guest describes the Cocoon additions to a debootstrapped tree.
type Guest struct {
	// EnvdPath is a static envd binary, installed at guest.EnvdPath.
	EnvdPath string
	// TiniPath is a static tini, installed as /usr/bin/tini (the gVisor
	// runtime's init) in trees that lack one, such as imported images.
	// Customize does not use it; oci.Prepare does.
	TiniPath string
}

// customizeFormat versions Customize; bump it whenever Customize changes.
const customizeFormat = "1"

// Build returns the customized tree for (base, g) under
// <cacheRoot>/rootfs/<key>/rootfs; baseKey identifies base's contents.
func Build(ctx context.Context, cacheRoot, base, baseKey string, g Guest) (dir, key string, err error) {
	envdHash, err := cache.HashFile(g.EnvdPath)
	if err != nil {
		return "", "", fmt.Errorf("envd: %w", err)
	}
	key = cache.Key("rootfs", customizeFormat, baseKey, envdHash, guest.CocoonInit(), sudoers, hosts)
	cdir, _, err := cache.Ensure(ctx, cacheRoot, "rootfs", key, func(ctx context.Context, dir string) error {
		tree := filepath.Join(dir, DirName)
		// A full copy: the debootstrap tree stays pristine for other envd builds.
		if err := runLogged(ctx, nil, "cp", "-a", "--reflink=auto", base, tree); err != nil {
			return err
		}
		return Customize(ctx, tree, g)
	})
	if err != nil {
		return "", "", err
	}
	return filepath.Join(cdir, DirName), key, nil
}

const sudoers = "user ALL=(ALL:ALL) NOPASSWD: ALL\n"

var hosts = "127.0.0.1\tlocalhost\n127.0.1.1\t" + guest.DefaultHostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// Customize adds Cocoon's pieces to a Debian tree in place: the user
// "user" (uid 1000, passwordless sudo), envd, cocoon-init, hostname, hosts
// and resolv.conf. The tree works both as a microVM root (cocoon-init is
// PID 1) and as a gVisor root (tini runs envd directly).
func Customize(ctx context.Context, tree string, g Guest) error {
	if _, err := os.Stat(filepath.Join(tree, "etc", "passwd")); err != nil {
		return fmt.Errorf("customize: not a root filesystem: %w", err)
	}
	// Imported images may already have the account (see oci.EnsureUser).
	if passwd, _ := os.ReadFile(filepath.Join(tree, "etc", "passwd")); !bytes.Contains(append([]byte("\n"), passwd...), []byte("\nuser:")) {
		if err := runLogged(ctx, nil, "chroot", tree, "useradd", "--create-home", "--uid", "1000", "--user-group", "--shell", "/bin/bash", "user"); err != nil {
			return err
		}
	}
	files := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"etc/sudoers.d/user", 0o440, sudoers},
		{"etc/hostname", 0o644, guest.DefaultHostname + "\n"},
		{"etc/hosts", 0o644, hosts},
		{"etc/resolv.conf", 0o644, "nameserver " + guest.DefaultDNS + "\n"},
		{strings.TrimPrefix(guest.InitPath, "/"), 0o755, guest.CocoonInit()},
	}
	for _, f := range files {
		if err := writeFile(filepath.Join(tree, f.path), []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("customize: %w", err)
		}
	}
	envd, err := os.ReadFile(g.EnvdPath)
	if err != nil {
		return fmt.Errorf("customize: envd: %w", err)
	}
	if err := writeFile(filepath.Join(tree, strings.TrimPrefix(guest.EnvdPath, "/")), envd, 0o755); err != nil {
		return fmt.Errorf("customize: %w", err)
	}
	// Package lists and caches are dead weight in every sandbox.
	for _, glob := range []string{"var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "var/log/*.log"} {
		m, _ := filepath.Glob(filepath.Join(tree, glob))
		for _, p := range m {
			os.Remove(p)
		}
	}
	return nil
}

// writeFile replaces path (through a rename, never writing into an
// existing inode) with data and mode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".cocoon-tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Image returns an ext4 image of tree of sizeMB under
// <cacheRoot>/ext4/<key>/rootfs.ext4; treeKey identifies tree's contents.
func Image(ctx context.Context, cacheRoot, tree, treeKey string, sizeMB int) (string, error) {
	key := cache.Key("ext4", "1", treeKey, strconv.Itoa(sizeMB), guest.RootLabel)
	dir, _, err := cache.Ensure(ctx, cacheRoot, "ext4", key, func(ctx context.Context, dir string) error {
		return MakeExt4(ctx, tree, filepath.Join(dir, ImageName), sizeMB)
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, ImageName), nil
}

// MakeExt4 writes a sparse ext4 image of sizeMB MiB at out holding tree,
// labelled guest.RootLabel.
func MakeExt4(ctx context.Context, tree, out string, sizeMB int) error {
	if sizeMB <= 0 {
		return fmt.Errorf("mkfs: bad size %d MiB", sizeMB)
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	// -m 1: a sandbox's user wants the space; -E root_owner: / belongs to root.
	return runLogged(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", guest.RootLabel, "-m", "1",
		"-E", "root_owner=0:0", "-d", tree, out)
}

// runLogged runs a command, passing its output lines to logf (if any) and
// returning the tail of its output with an error.
func runLogged(ctx context.Context, logf Logf, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if logf != nil {
				logf("%s", line)
			}
			tail = append(tail, line)
			if len(tail) > 20 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		var b bytes.Buffer
		for _, l := range tail {
			b.WriteString("\n  " + l)
		}
		return fmt.Errorf("%s: %w%s", name, err, b.String())
	}
	return nil
}
