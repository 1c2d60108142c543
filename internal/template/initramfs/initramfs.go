// Package initramfs builds the guest's initramfs: a gzipped newc cpio with
// Debian's static busybox, the virtio modules of the guest kernel and an
// /init that mounts the root disk and switches to the guest init.
package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/kernel"
)

// FileName is the initramfs file inside its cache directory.
const FileName = "initrd.img"

// DefaultBusybox is where Debian's busybox-static package puts busybox.
const DefaultBusybox = "/bin/busybox"

// format versions the archive layout; bump it when Write changes.
const format = "1"

// applets are the busybox applets /init uses, linked into /bin.
var applets = []string{"sh", "mount", "umount", "insmod", "switch_root", "mkdir", "usleep", "cat", "echo"}

// Options say what goes into the initramfs.
type Options struct {
	Kernel *kernel.Kernel
	// Busybox is a statically linked busybox; DefaultBusybox if empty.
	Busybox string
	// Modules to load, in order; guest.Modules if nil. Those built into
	// the kernel are left out.
	Modules []string
}

// Build returns the path of the initramfs for opts, building it into
// <cacheRoot>/initramfs/<key>/ when needed.
func Build(ctx context.Context, cacheRoot string, opts Options) (string, error) {
	if opts.Kernel == nil {
		return "", fmt.Errorf("initramfs: no kernel")
	}
	if opts.Busybox == "" {
		opts.Busybox = DefaultBusybox
	}
	if opts.Modules == nil {
		opts.Modules = guest.Modules
	}
	if err := checkStatic(opts.Busybox); err != nil {
		return "", err
	}
	bbHash, err := cache.HashFile(opts.Busybox)
	if err != nil {
		return "", err
	}
	mods, err := FindModules(opts.Kernel.ModulesDir, opts.Modules)
	if err != nil {
		return "", err
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	init := guest.InitramfsInit(names)
	key := cache.Key("initramfs", format, opts.Kernel.Package, opts.Kernel.Version, bbHash, strings.Join(names, ","), init)
	dir, _, err := cache.Ensure(ctx, cacheRoot, "initramfs", key, func(ctx context.Context, dir string) error {
		bb, err := os.ReadFile(opts.Busybox)
		if err != nil {
			return fmt.Errorf("read busybox: %w", err)
		}
		f, err := os.Create(filepath.Join(dir, FileName))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		defer f.Close()
		bw := bufio.NewWriter(f)
		if err := Write(ctx, bw, bb, mods, init); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		return f.Close()
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, FileName), nil
}

// Module is a kernel module file found in a modules tree.
type Module struct {
	Name string // as given, e.g. virtio_blk
	Path string // the .ko, possibly compressed (.ko.xz, .ko.zst, .ko.gz)
}

// FindModules locates each named module under modulesDir/kernel, in order.
// Modules listed in modules.builtin are skipped; a module found nowhere is
// an error.
func FindModules(modulesDir string, names []string) ([]Module, error) {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modulesDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(filepath.Base(l))] = true
		}
	}
	found := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modulesDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			found[modName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find modules: %w", err)
	}
	var mods []Module
	for _, n := range names {
		if p, ok := found[modName(n)]; ok {
			mods = append(mods, Module{Name: n, Path: p})
			continue
		}
		if builtin[modName(n)] {
			continue
		}
		return nil, fmt.Errorf("find modules: %s not in %s", n, modulesDir)
	}
	return mods, nil
}

// modName normalizes a module file or module name: virtio-blk.ko.xz -> virtio_blk.
func modName(s string) string {
	if i := strings.Index(s, ".ko"); i >= 0 {
		s = s[:i]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// Write writes the gzipped initramfs to w.
func Write(ctx context.Context, w io.Writer, busybox []byte, mods []Module, init string) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	c := newCPIOWriter(zw)
	for _, d := range []string{"bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys"} {
		c.Dir(d, 0o755)
	}
	// The kernel opens /dev/console for /init before anything is mounted.
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CharDev("dev/null", 0o666, 1, 3)
	c.File("bin/busybox", 0o755, busybox)
	for _, a := range applets {
		c.Symlink("bin/"+a, "busybox")
	}
	for _, m := range mods {
		ko, err := readModule(ctx, m.Path)
		if err != nil {
			return err
		}
		c.File("lib/modules/"+m.Name+".ko", 0o644, ko)
	}
	c.File("init", 0o755, []byte(init))
	if err := c.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// readModule returns a module's ELF bytes, decompressed: busybox insmod
// hands the file to init_module as is.
func readModule(ctx context.Context, path string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(path, ".ko"):
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read module: %w", err)
		}
		return b, nil
	case strings.HasSuffix(path, ".ko.gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read module: %w", err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", path, err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", path, err)
		}
		return b, nil
	case strings.HasSuffix(path, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(path, ".ko.zst"):
		tool = "zstd"
	default:
		return nil, fmt.Errorf("read module %s: unknown compression", path)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tool, "-dc", path)
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("decompress module %s: %w: %s", path, err, stderr.String())
	}
	return b, nil
}

// checkStatic fails unless path is a statically linked ELF: the initramfs
// has no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}
