package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/oci"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// BuildParams describe a custom template build on this node (see the
// BuildTemplate RPC).
type BuildParams struct {
	CacheKey  string
	LayerKey  string
	ParentDir string
	// Exactly one source: a build sandbox to export, an image to import, or
	// the parent's root filesystem as is. With none, only cached artifacts
	// are used (ErrNotFound when the layer is missing).
	SandboxID    string
	Image        *oci.Ref
	ParentRootfs bool

	StartCmd, ReadyCmd string
	Env                map[string]string
	Workdir, User      string
	ReadyTimeout       time.Duration
	VCPUs, MemoryMB    int
	DiskMB             int
}

// BuildResult is a built template on this node.
type BuildResult struct {
	// Dir is the template's ref ("custom/<key>", see ResolveTemplate): the
	// same on every node, which fetches the template when it lacks it.
	Dir      string
	Runtimes []string
	Cached   bool
}

// ErrNoLayer means a probe found no cached layer for the build.
var ErrNoLayer = fmt.Errorf("no cached layer: %w", ErrNotFound)

func (o *Orchestrator) templateRoot() string { return filepath.Join(o.cfg.DataDir, "templates") }

// BuildTemplate makes a custom template from p: its root filesystem layer
// (cached by LayerKey) and the finished template with its snapshots (cached
// by CacheKey). progress receives log lines.
func (o *Orchestrator) BuildTemplate(ctx context.Context, p BuildParams, progress func(string)) (BuildResult, error) {
	if progress == nil {
		progress = func(string) {}
	}
	if !validKey(p.CacheKey) || !validKey(p.LayerKey) {
		return BuildResult{}, fmt.Errorf("invalid cache keys %q / %q", p.CacheKey, p.LayerKey)
	}
	parentDir, err := o.ResolveTemplate(ctx, p.ParentDir)
	if err != nil {
		return BuildResult{}, fmt.Errorf("parent template: %w", err)
	}
	parent, err := base.Load(parentDir)
	if err != nil {
		return BuildResult{}, fmt.Errorf("parent template: %w", err)
	}
	names := o.snapshotRuntimes(parent)
	if len(names) == 0 {
		return BuildResult{}, fmt.Errorf("the parent template has no snapshot for a runtime of this node")
	}
	finalDir := filepath.Join(o.templateRoot(), customKind, p.CacheKey)
	if t, err := base.Load(finalDir); err == nil && allSnapshots(t, names) {
		if p.SandboxID != "" {
			_ = o.Kill(ctx, p.SandboxID, true)
		}
		progress("template cached: reusing " + p.CacheKey)
		return BuildResult{Dir: CustomRef(p.CacheKey), Runtimes: names, Cached: true}, nil
	}
	layerDir := filepath.Join(o.templateRoot(), "layers", p.LayerKey)
	if _, err := os.Stat(layerDir); err == nil {
		progress("layer cached: " + p.LayerKey)
		if p.SandboxID != "" {
			_ = o.Kill(ctx, p.SandboxID, true)
		}
	} else {
		if p.SandboxID == "" && p.Image == nil && !p.ParentRootfs {
			return BuildResult{}, ErrNoLayer
		}
		layerDir, _, err = cache.Ensure(ctx, o.templateRoot(), "layers", p.LayerKey, func(ctx context.Context, dir string) error {
			return o.makeLayer(ctx, p, parent, dir, progress)
		})
		if p.SandboxID != "" {
			if kerr := o.Kill(context.WithoutCancel(ctx), p.SandboxID, true); kerr != nil {
				o.log.Warn("kill build sandbox", "id", p.SandboxID, "err", kerr)
			}
		}
		if err != nil {
			return BuildResult{}, err
		}
	}
	dir, _, err := cache.Ensure(ctx, o.templateRoot(), customKind, p.CacheKey, func(ctx context.Context, dir string) error {
		for _, l := range []struct{ src, dst string }{
			{parent.Kernel, base.KernelFile}, {parent.Initrd, base.InitrdFile},
			{filepath.Join(layerDir, base.ImageFile), base.ImageFile},
		} {
			if err := linkFile(l.src, filepath.Join(dir, l.dst)); err != nil {
				return err
			}
		}
		if out, err := exec.CommandContext(ctx, "cp", "-al", filepath.Join(layerDir, base.RootfsDir), filepath.Join(dir, base.RootfsDir)).CombinedOutput(); err != nil {
			return fmt.Errorf("link rootfs tree: %w: %s", err, out)
		}
		disk := p.DiskMB
		if b, err := os.ReadFile(filepath.Join(layerDir, "disk_mb")); err == nil {
			disk, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		t := runtime.Template{ID: "custom-" + p.CacheKey[:16], VCPUs: orDefault(p.VCPUs, parent.VCPUs),
			MemoryMB: orDefault(p.MemoryMB, parent.MemoryMB), DiskMB: orDefault(disk, parent.DiskMB)}
		b, err := json.MarshalIndent(t, "", "  ")
		if err != nil {
			return err
		}
		if err := writeSnapshotParams(dir, p); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, base.ManifestFile), append(b, '\n'), 0o644)
	})
	if err != nil {
		return BuildResult{}, err
	}
	t, err := base.Load(dir)
	if err != nil {
		return BuildResult{}, err
	}
	t.BeforeSnapshot = beforeSnapshot(p, progress)
	if err := SnapshotTemplate(ctx, o.cfg.Slots, o.cfg.Runtimes, t, names, progress); err != nil {
		return BuildResult{}, err
	}
	return BuildResult{Dir: CustomRef(p.CacheKey), Runtimes: names}, nil
}

// snapshotRuntimes are the runtimes of this node the parent has snapshots for.
func (o *Orchestrator) snapshotRuntimes(parent *runtime.Template) []string {
	var names []string
	for name := range o.cfg.Runtimes {
		if HasSnapshot(parent, name) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func allSnapshots(t *runtime.Template, names []string) bool {
	for _, n := range names {
		if !HasSnapshot(t, n) {
			return false
		}
	}
	return true
}

// beforeSnapshot sets the template's environment, default user and working
// directory in envd, starts the start command and waits for the ready
// command.
func beforeSnapshot(p BuildParams, progress func(string)) func(context.Context, *http.Client, string) error {
	return func(ctx context.Context, hc *http.Client, url string) error {
		e := &steps.Envd{URL: url, HTTP: hc}
		if len(p.Env) > 0 || p.User != "" || p.Workdir != "" {
			if err := e.Init(ctx, p.Env, p.User, p.Workdir); err != nil {
				return err
			}
		}
		st := steps.State{Env: p.Env, Workdir: p.Workdir, User: p.User}
		if p.StartCmd != "" {
			progress("start command: " + p.StartCmd)
			if _, err := e.Start(ctx, steps.Shell(p.StartCmd, st, "")); err != nil {
				return fmt.Errorf("start command: %w", err)
			}
		}
		if p.ReadyCmd != "" {
			progress("ready command: " + p.ReadyCmd)
			timeout := p.ReadyTimeout
			if timeout <= 0 {
				timeout = 2 * time.Minute
			}
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := e.WaitReady(rctx, steps.Shell(p.ReadyCmd, st, ""), 500*time.Millisecond); err != nil {
				return err
			}
			progress("ready command succeeded")
		}
		return nil
	}
}

// makeLayer fills dir with a root filesystem tree (rootfs/) and its ext4
// image from p's source.
func (o *Orchestrator) makeLayer(ctx context.Context, p BuildParams, parent *runtime.Template, dir string, progress func(string)) error {
	// The layer holds a guest's root filesystem with its setuid files:
	// no other host user may reach into it (see docs/security.md).
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	tree := filepath.Join(dir, base.RootfsDir)
	switch {
	case p.ParentRootfs:
		progress("rootfs: the parent's, unchanged")
		if err := linkFile(parent.RootfsImage, filepath.Join(dir, base.ImageFile)); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, "cp", "-al", parent.RootfsDir, tree).CombinedOutput(); err != nil {
			return fmt.Errorf("link rootfs tree: %w: %s", err, out)
		}
		return os.WriteFile(filepath.Join(dir, "disk_mb"), []byte(strconv.Itoa(parent.DiskMB)), 0o644)
	case p.Image != nil:
		progress("rootfs: import image " + p.Image.Image)
		ref := *p.Image
		ref.MaxBytes = int64(orDefault(p.DiskMB, parent.DiskMB)) << 20
		cfg, digest, err := oci.Import(ctx, ref, tree, rootfs.Guest{
			EnvdPath: filepath.Join(parent.RootfsDir, guest.EnvdPath), TiniPath: filepath.Join(parent.RootfsDir, "usr/bin/tini-static"),
		},
			func(f string, a ...any) { progress(fmt.Sprintf(f, a...)) })
		if err != nil {
			return err
		}
		progress("image " + digest + " imported")
		env := map[string]string{}
		for _, kv := range cfg.Env {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		if err := writeProfile(tree, env); err != nil {
			return err
		}
	case p.SandboxID != "":
		maxBytes := int64(orDefault(p.DiskMB, parent.DiskMB)) << 20
		if err := o.exportSandbox(ctx, p.SandboxID, tree, maxBytes, progress); err != nil {
			return err
		}
		if err := writeProfile(tree, p.Env); err != nil {
			return err
		}
	default:
		return ErrNoLayer
	}
	size, err := treeSize(tree)
	if err != nil {
		return err
	}
	disk := max(orDefault(p.DiskMB, parent.DiskMB), int(size>>20)*3/2+256)
	progress(fmt.Sprintf("rootfs: mkfs.ext4 %d MiB (%d MiB of files)", disk, size>>20))
	if err := rootfs.MakeExt4(ctx, tree, filepath.Join(dir, base.ImageFile), disk); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "disk_mb"), []byte(strconv.Itoa(disk)), 0o644)
}

// exportSandbox streams the root filesystem of a running build sandbox out
// through its envd (tar, as root) and unpacks it into tree. The stream is
// the tenant's: oci.Extract treats it as untrusted (no device nodes, no
// writes through links, owners up to 65535) and refuses more than maxBytes,
// the template's disk size.
func (o *Orchestrator) exportSandbox(ctx context.Context, id, tree string, maxBytes int64, progress func(string)) error {
	sb, err := o.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State != StateRunning {
		return fmt.Errorf("build sandbox %s is %s: %w", id, sb.State, ErrState)
	}
	progress("rootfs: export the build sandbox's filesystem")
	e := &steps.Envd{URL: "http://" + net.JoinHostPort(sb.Address, strconv.Itoa(EnvdPort)), Token: sb.AccessToken}
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		skipped := 0
		// Unpacked by an unprivileged child onto the trees' id range (issue
		// 18: as root, a setuid-root copy of bash ran as root for nobody).
		err := oci.ExtractAs(ctx, pr, tree, guest.TreeHostID, oci.ExtractOptions{MaxBytes: maxBytes, Skipped: func(name, why string) {
			if skipped++; skipped <= 10 {
				progress(fmt.Sprintf("rootfs: left out %s (%s)", name, why))
			}
		}})
		pr.CloseWithError(err)
		done <- err
	}()
	var stderr strings.Builder
	script := "tar --one-file-system --numeric-owner -cpf - -C / " +
		"--exclude=./proc/* --exclude=./sys/* --exclude=./dev/* --exclude=./run/* --exclude=./tmp/* " +
		"--exclude=./var/tmp/* --exclude=./var/cache/apt/archives/*.deb ."
	err = e.Run(ctx, steps.Cmd{Path: "/bin/sh", Args: []string{"-c", script}, User: "root", Dir: "/"}, pw, &limitWriter{w: &stderr, n: 4096})
	var exit *steps.ExitError
	if errors.As(err, &exit) && exit.Code == 1 {
		err = nil // tar: some files changed while being read
	}
	pw.CloseWithError(err)
	xerr := <-done
	if xerr != nil {
		return fmt.Errorf("export build sandbox: unpack: %w", xerr)
	}
	if err != nil {
		return fmt.Errorf("export build sandbox: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return guestDirs(tree)
}

// guestDirs makes proc, sys, dev, run and tmp (whose contents the export
// leaves out) real directories of tree, owned by the guest's root, and tmp
// 1777. It works through an os.Root: the tree is the tenant's, and
// following its tmp, a link to /etc, made the host's /etc world-writable.
func guestDirs(tree string) error {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	owner, err := guest.TreeBase(tree)
	if err != nil {
		return err
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp"} {
		if fi, err := root.Lstat(d); err == nil && fi.IsDir() {
			continue
		} else if err == nil {
			if err := root.Remove(d); err != nil {
				return fmt.Errorf("rootfs: replace %s: %w", d, err)
			}
		}
		if err := root.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := root.Lchown(d, int(owner), int(owner)); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return root.Chmod("tmp", 0o777|os.ModeSticky)
}

// profilePath is where a template's environment lives in its tree.
const profilePath = "etc/profile.d/cocoon-template.sh"

// writeProfile records the template's environment for login shells: env
// over what the tree's profile already holds (the parent layer's ENV, or
// an image's configured environment). The tree is the tenant's: it reads
// and writes through an os.Root (no link leads out), and what it creates
// belongs to the guest's root.
func writeProfile(tree string, env map[string]string) error {
	if len(env) == 0 {
		return nil
	}
	root, err := os.OpenRoot(tree)
	if err != nil {
		return err
	}
	defer root.Close()
	owner, err := guest.TreeBase(tree)
	if err != nil {
		return err
	}
	env = maps.Clone(env)
	for k, v := range readProfileIn(root) {
		if _, ok := env[k]; !ok {
			env[k] = v
		}
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Environment of the Cocoon template (ENV steps).\n")
	for _, k := range keys {
		if !validEnvName(k) {
			continue
		}
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
	}
	for _, d := range []string{"etc", filepath.Dir(profilePath)} {
		if err := root.Mkdir(d, 0o755); err == nil {
			if err := root.Lchown(d, int(owner), int(owner)); err != nil {
				return err
			}
		} else if !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	_ = root.Remove(profilePath)
	if err := root.WriteFile(profilePath, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return root.Lchown(profilePath, int(owner), int(owner))
}

// readProfile reads back what writeProfile wrote: export K='v' lines, with
// ' written as '\”. A missing file is an empty environment.
func readProfile(tree string) map[string]string {
	root, err := os.OpenRoot(tree)
	if err != nil {
		return nil
	}
	defer root.Close()
	return readProfileIn(root)
}

func readProfileIn(root *os.Root) map[string]string {
	b, err := root.ReadFile(profilePath)
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		kv, ok := strings.CutPrefix(line, "export ")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !validEnvName(k) || len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
			continue
		}
		env[k] = strings.ReplaceAll(v[1:len(v)-1], `'\''`, "'")
	}
	return env
}

func validEnvName(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if c != '_' && (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func treeSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		n += 4096
		return nil
	})
	return n, err
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func validKey(k string) bool {
	if len(k) < 16 || len(k) > 64 {
		return false
	}
	for _, c := range k {
		if (c < 'a' || c > 'f') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// linkFile hard-links src to dst, copying across filesystems.
func linkFile(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	if out, err := exec.Command("cp", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, out)
	}
	return nil
}

type limitWriter struct {
	w io.Writer
	n int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}
