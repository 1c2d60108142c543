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

// DefaultInclude are the packages debootstrap adds to a minbase system:
// what Cocoon itself needs.
var DefaultInclude = []string{"bash", "python3", "ca-certificates", "procps", "sudo", "tini", "iproute2"}

// DefaultInstall are the packages apt installs into the debootstrapped
// tree, without recommends: what agents expect of a sandbox, as in E2B's
// base image. debootstrap's own resolver cannot install them: npm depends
// on virtual packages.
var DefaultInstall = []string{
	"python3-pip", "python3-venv", "python3-dev",
	"nodejs", "npm",
	"git", "curl", "wget", "unzip", "jq", "less", "xz-utils", "openssh-client",
	"gcc", "g++", "make", "libc6-dev",
}

// Debian describes a debootstrap run.
type Debian struct {
	Suite   string   // e.g. bookworm
	Mirror  string   // e.g. from HostMirror
	Variant string   // e.g. minbase
	Include []string // extra packages for debootstrap
	// Install are packages apt-get installs in the tree afterwards (with
	// dpkgLean in place, so their documentation is never unpacked).
	Install []string
}

// key hashes everything that changes the debootstrapped tree.
func (d Debian) key() string {
	return cache.Key("debootstrap", "2", d.Suite, d.Mirror, d.Variant, strings.Join(d.Include, ","),
		strings.Join(d.Install, ","), dpkgLean)
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
		tree := filepath.Join(dir, DirName)
		args = append(args, d.Suite, tree, d.Mirror)
		if err := runLogged(ctx, logf, "debootstrap", args...); err != nil {
			return err
		}
		if err := writeFile(filepath.Join(tree, dpkgLeanPath), []byte(dpkgLean), 0o644); err != nil {
			return fmt.Errorf("debootstrap: %w", err)
		}
		if len(d.Install) == 0 {
			return nil
		}
		return aptInstall(ctx, tree, debs, d.Install, logf)
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
	// TiniPath is a static tini, installed as /usr/bin/tini in trees that
	// lack one, such as imported images (no longer any runtime's init:
	// envd is PID 1).
	// Customize does not use it; oci.Prepare does.
	TiniPath string
}

// customizeFormat versions Customize; bump it whenever Customize changes.
const customizeFormat = "3"

// Build returns the customized tree for (base, g) under
// <cacheRoot>/rootfs/<key>/rootfs; baseKey identifies base's contents.
func Build(ctx context.Context, cacheRoot, base, baseKey string, g Guest) (dir, key string, err error) {
	envdHash, err := cache.HashFile(g.EnvdPath)
	if err != nil {
		return "", "", fmt.Errorf("envd: %w", err)
	}
	key = cache.Key("rootfs", customizeFormat, baseKey, envdHash, guest.CocoonInit(), sudoers, hosts, dpkgLean)
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

// dpkgLean keeps documentation, manual pages and translations other than
// English out of the image and out of every package a sandbox installs
// later; Customize removes what debootstrap already unpacked.
const dpkgLean = `# Cocoon: keep the sandbox image lean.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/en*
path-include /usr/share/locale/locale.alias
`

const dpkgLeanPath = "etc/dpkg/dpkg.cfg.d/01-cocoon-lean"

// tmpKeep keeps the image's /tmp non-empty (see Customize).
const tmpKeep = "tmp/.cocoon-disk"

// aptInstall installs pkgs into tree with the tree's own apt (its
// sources.list names the mirror debootstrap used), with /proc mounted and
// the download cache debs bound at the tree's archive directory. Both
// mounts are detached before it returns, so removing a failed tree never
// reaches into the host.
func aptInstall(ctx context.Context, tree, debs string, pkgs []string, logf Logf) (err error) {
	archives := filepath.Join(tree, "var/cache/apt/archives")
	mounts := []struct{ target, src, fstype, opts string }{
		{filepath.Join(tree, "proc"), "proc", "proc", "nosuid,nodev,noexec"},
		{archives, debs, "", "bind"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("apt install: %w", err)
		}
		args := []string{"-o", m.opts, m.src, m.target}
		if m.fstype != "" {
			args = append([]string{"-t", m.fstype}, args...)
		}
		if err := runLogged(ctx, nil, "mount", args...); err != nil {
			return fmt.Errorf("apt install: %w", err)
		}
		defer func() {
			if uerr := runLogged(context.WithoutCancel(ctx), nil, "umount", "-l", m.target); uerr != nil && err == nil {
				err = fmt.Errorf("apt install: %w", uerr)
			}
		}()
	}
	apt := func(args ...string) error {
		cmd := append([]string{tree, "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C",
			"apt-get", "-q", "-y", "-o", "APT::Install-Recommends=false", "-o", "Dpkg::Use-Pty=false"}, args...)
		return runLogged(ctx, logf, "chroot", cmd...)
	}
	if err := apt("update"); err != nil {
		return fmt.Errorf("apt install: %w", err)
	}
	if err := apt(append([]string{"install"}, pkgs...)...); err != nil {
		return fmt.Errorf("apt install: %w", err)
	}
	return nil
}

// leanDirs are emptied after debootstrap, matching dpkgLean (copyright
// files and English translations stay), with apt's package lists and
// caches. Each entry is a directory and whether its entries' own entries
// are pruned (one level deeper) rather than its entries.
var leanDirs = []struct {
	dir  string
	deep bool
}{
	{"usr/share/doc", true}, {"usr/share/man", false}, {"usr/share/info", false},
	{"usr/share/lintian", false}, {"usr/share/locale", false},
	{"var/cache/apt", false}, {"var/cache/apt/archives", false},
	{"var/lib/apt/lists", false}, {"var/log/apt", false},
}

// keepLean reports whether the path rel (inside the tree) stays.
func keepLean(rel string) bool {
	b := filepath.Base(rel)
	switch {
	case strings.HasPrefix(rel, "usr/share/doc/"):
		return b == "copyright"
	case strings.HasPrefix(rel, "usr/share/locale/"):
		return strings.HasPrefix(b, "en") || b == "locale.alias"
	case rel == "var/cache/apt/archives":
		return true
	case strings.HasPrefix(rel, "var/cache/apt/archives/"), strings.HasPrefix(rel, "var/lib/apt/lists/"):
		return b == "partial" || b == "lock"
	}
	return false
}

// pruneLean removes what leanDirs and keepLean say from tree. It never
// follows a symbolic link: a link in the guest tree may point anywhere on
// the host.
func pruneLean(tree string) error {
	realDir := func(rel string) bool {
		p := tree
		for _, c := range strings.Split(rel, "/") {
			p = filepath.Join(p, c)
			st, err := os.Lstat(p)
			if err != nil || !st.IsDir() {
				return false
			}
		}
		return true
	}
	prune := func(rel string) error {
		if !realDir(rel) {
			return nil
		}
		ents, err := os.ReadDir(filepath.Join(tree, rel))
		if err != nil {
			return err
		}
		for _, e := range ents {
			r := rel + "/" + e.Name()
			if keepLean(r) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(tree, r)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range leanDirs {
		if !d.deep {
			if err := prune(d.dir); err != nil {
				return err
			}
			continue
		}
		if !realDir(d.dir) {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(tree, d.dir))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.IsDir() { // DirEntry.IsDir is false for a link
				if err := prune(d.dir + "/" + e.Name()); err != nil {
					return err
				}
			}
		}
	}
	m, _ := filepath.Glob(filepath.Join(tree, pipMarkerGlob))
	for _, p := range m {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

// Debian's EXTERNALLY-MANAGED marker (PEP 668) makes "pip install" fail in
// the system Python; a sandbox is disposable and agents run plain
// "pip install" as they would in E2B's image, so Customize removes it.
const pipMarkerGlob = "usr/lib/python3*/EXTERNALLY-MANAGED"

var hosts = "127.0.0.1\tlocalhost\n127.0.1.1\t" + guest.DefaultHostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// Customize adds Cocoon's pieces to a Debian tree in place: the user
// "user" (uid 1000, passwordless sudo), envd, cocoon-init, hostname, hosts
// and resolv.conf, and login scripts that fork nothing (loginEdits). The
// tree works both as a microVM root (cocoon-init execs envd as PID 1) and
// as a gVisor root (envd is the OCI process, PID 1).
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
		{dpkgLeanPath, 0o644, dpkgLean},
		// /tmp lives on the sandbox's disk, as on a VM: runsc mounts an
		// in-memory tmpfs over an empty /tmp, where 700 MiB written would
		// exhaust the sandbox's memory; it leaves a non-empty one alone.
		{tmpKeep, 0o644, ""},
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
	if err := quickLogin(tree); err != nil {
		return fmt.Errorf("customize: %w", err)
	}
	// Documentation, package lists and caches are dead weight in every sandbox.
	if err := pruneLean(tree); err != nil {
		return fmt.Errorf("customize: prune: %w", err)
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
	hostID, err := guest.TreeBase(tree)
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	// -m 1: a sandbox's user wants the space; -E root_owner: / belongs to root.
	args := []string{"-q", "-F", "-L", guest.RootLabel, "-m", "1", "-E", "root_owner=0:0", "-d", tree, out}
	if hostID == 0 {
		return runLogged(ctx, nil, "mkfs.ext4", args...)
	}
	// A tree unpacked onto shifted ids (oci.ExtractAs): mkfs.ext4 copies
	// the owners it sees, so it runs as root of a user namespace mapping
	// them back to 0..guest.IDs-1, with the tree and the image as
	// descriptors (it has no search permission on the data dir).
	d, err := os.Open(tree)
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	defer d.Close()
	img, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	defer img.Close()
	// mkfs.ext4 opens the image again through its descriptor's path: the
	// image is the namespace root's while it writes it, root's again after.
	if err := img.Chown(int(hostID), int(hostID)); err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	args[len(args)-2], args[len(args)-1] = "/proc/self/fd/3", "/proc/self/fd/4"
	cmd := exec.CommandContext(ctx, "mkfs.ext4", args...)
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{d, img}
	cmd.SysProcAttr = guest.TreeUserNS(hostID)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, bytes.TrimSpace(b))
	}
	if err := img.Chown(0, 0); err != nil {
		return fmt.Errorf("mkfs: %w", err)
	}
	return nil
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
