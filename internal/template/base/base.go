// Package base builds Cocoon's default template "base": Debian's cloud
// kernel, an initramfs, and a debootstrapped Debian root filesystem with
// envd, laid out as a runtime.Template under
// <dataDir>/templates/base/<buildID>/. The runtime drivers then boot it
// once to take its snapshot.
package base

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/initramfs"
	"github.com/cocoon-run/cocoon/internal/template/kernel"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
)

// Name is the template's name.
const Name = "base"

// Defaults of the resource shape and the Debian release.
const (
	DefaultVCPUs    = 2
	DefaultMemoryMB = 512
	DefaultDiskMB   = 2048
	DefaultSuite    = "bookworm"
)

// Names of the artifacts inside a template directory.
const (
	KernelFile   = "vmlinuz"
	InitrdFile   = "initrd.img"
	ImageFile    = "rootfs.ext4"
	RootfsDir    = "rootfs"
	ManifestFile = "template.json"
)

// Progress receives the name of each build step and the overall progress
// in percent (0–100).
type Progress func(step string, percent int)

// Options configure Build.
type Options struct {
	// DataDir is Cocoon's data directory; artifacts are cached in
	// DataDir/cache and the template laid out in DataDir/templates/base.
	DataDir string
	// EnvdPath is the static envd binary baked into the image.
	EnvdPath string
	// VCPUs, MemoryMB and DiskMB are the resource shape; zero means default.
	VCPUs    int
	MemoryMB int
	DiskMB   int
	// Mirror is the Debian mirror; empty means the host's apt configuration.
	Mirror string
	// Suite is the Debian release; empty means DefaultSuite.
	Suite string
	// Busybox is a static busybox for the initramfs; empty means
	// initramfs.DefaultBusybox.
	Busybox string
	// Progress, if set, is told about each step.
	Progress Progress
	// Log, if set, receives the tools' output lines (debootstrap's log).
	Log io.Writer
}

func (o *Options) defaults() error {
	if o.DataDir == "" {
		return errors.New("base: no data dir")
	}
	if o.EnvdPath == "" {
		return errors.New("base: no envd binary")
	}
	if o.VCPUs == 0 {
		o.VCPUs = DefaultVCPUs
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = DefaultMemoryMB
	}
	if o.DiskMB == 0 {
		o.DiskMB = DefaultDiskMB
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Progress == nil {
		o.Progress = func(string, int) {}
	}
	if o.VCPUs < 0 || o.MemoryMB < 0 || o.DiskMB < 0 {
		return fmt.Errorf("base: bad shape %d vCPU, %d MiB, %d MiB disk", o.VCPUs, o.MemoryMB, o.DiskMB)
	}
	var err error
	if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	return nil
}

// Build builds (or finds in the cache) every artifact of the base template
// and returns the template laid out under
// DataDir/templates/base/<buildID>/. The same inputs give the same build
// ID, so a second Build returns the existing directory (and any snapshot
// a runtime has saved in it) within seconds.
//
// The files in the template are hard links into the cache: treat them as
// read-only (boot from a copy-on-write overlay of RootfsImage).
func Build(ctx context.Context, opts Options) (*runtime.Template, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	cacheRoot := filepath.Join(opts.DataDir, "cache")
	p := opts.Progress

	p("kernel: resolve and fetch "+kernel.MetaPackage, 0)
	k, err := kernel.Fetch(ctx, cacheRoot)
	if err != nil {
		return nil, err
	}
	p("kernel: "+k.Package+" "+k.Version, 10)

	p("initramfs: build", 10)
	initrd, err := initramfs.Build(ctx, cacheRoot, initramfs.Options{Kernel: k, Busybox: opts.Busybox})
	if err != nil {
		return nil, err
	}

	mirror := opts.Mirror
	if mirror == "" {
		if mirror, err = rootfs.HostMirror(opts.Suite); err != nil {
			return nil, fmt.Errorf("base: find the debian mirror: %w", err)
		}
	}
	deb := rootfs.Debian{Suite: opts.Suite, Mirror: mirror, Variant: "minbase", Include: rootfs.DefaultInclude, Install: rootfs.DefaultInstall}
	p("rootfs: debootstrap "+opts.Suite, 15)
	lines := 0
	debTree, err := rootfs.Debootstrap(ctx, cacheRoot, deb, func(format string, args ...any) {
		fmt.Fprintf(opts.Log, format+"\n", args...)
		// A bookworm minbase with our packages and apt's install log about 3000 lines.
		if lines++; lines%30 == 0 {
			p("rootfs: debootstrap "+opts.Suite, 15+min(49, lines*50/3000))
		}
	})
	if err != nil {
		return nil, err
	}
	p("rootfs: add user, envd and cocoon-init", 65)
	tree, treeKey, err := rootfs.Build(ctx, cacheRoot, debTree, filepath.Base(filepath.Dir(debTree)), rootfs.Guest{EnvdPath: opts.EnvdPath})
	if err != nil {
		return nil, err
	}
	p("rootfs: mkfs.ext4 "+strconv.Itoa(opts.DiskMB)+" MiB", 75)
	image, err := rootfs.Image(ctx, cacheRoot, tree, treeKey, opts.DiskMB)
	if err != nil {
		return nil, err
	}

	imageKey := filepath.Base(filepath.Dir(image))
	// The guest kernel's command line (its form: the host's TSC frequency
	// aside) is part of what a snapshot saved: a change makes a new build,
	// and sandboxes of the old one keep their files.
	id := Name + "-" + cache.Key(Name, "1", k.Package, k.Version, filepath.Base(filepath.Dir(initrd)), imageKey,
		strconv.Itoa(opts.VCPUs), strconv.Itoa(opts.MemoryMB), strconv.Itoa(opts.DiskMB), guest.CmdLine(1))[:16]
	p("template: lay out "+id, 90)
	dir, _, err := cache.Ensure(ctx, filepath.Join(opts.DataDir, "templates"), Name, id, func(ctx context.Context, dir string) error {
		for _, l := range []struct{ src, dst string }{{k.Image, KernelFile}, {initrd, InitrdFile}, {image, ImageFile}} {
			if err := link(l.src, filepath.Join(dir, l.dst)); err != nil {
				return err
			}
		}
		if out, err := exec.CommandContext(ctx, "cp", "-al", tree, filepath.Join(dir, RootfsDir)).CombinedOutput(); err != nil {
			return fmt.Errorf("link rootfs tree: %w: %s", err, out)
		}
		t := layout(id, dir, opts)
		b, err := json.MarshalIndent(t, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, ManifestFile), append(b, '\n'), 0o644)
	})
	if err != nil {
		return nil, err
	}
	p("template: "+id+" ready", 100)
	return layout(id, dir, opts), nil
}

func layout(id, dir string, opts Options) *runtime.Template {
	return &runtime.Template{
		ID:          id,
		Dir:         dir,
		Kernel:      filepath.Join(dir, KernelFile),
		Initrd:      filepath.Join(dir, InitrdFile),
		RootfsImage: filepath.Join(dir, ImageFile),
		RootfsDir:   filepath.Join(dir, RootfsDir),
		VCPUs:       opts.VCPUs,
		MemoryMB:    opts.MemoryMB,
		DiskMB:      opts.DiskMB,
	}
}

// Load reads the template laid out in dir by Build.
func Load(dir string) (*runtime.Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("load template: %w", err)
	}
	var t runtime.Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("load template %s: %w", dir, err)
	}
	// The directory may have moved since it was built.
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load template: %w", err)
	}
	shape := Options{VCPUs: t.VCPUs, MemoryMB: t.MemoryMB, DiskMB: t.DiskMB}
	return layout(t.ID, abs, shape), nil
}

// CmdLine returns the kernel command line to boot a base template on this
// host, with extra arguments appended (e.g. guest.Net{...}.Args()).
func CmdLine(extra ...string) (string, error) {
	return guest.HostCmdLine(extra...)
}

// link hard-links src to dst, copying when they are on different filesystems.
func link(src, dst string) error {
	err := os.Link(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		if err != nil {
			return fmt.Errorf("link %s: %w", src, err)
		}
		return nil
	}
	out, err := exec.Command("cp", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, out)
	}
	return nil
}
