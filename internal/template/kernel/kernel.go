// Package kernel fetches the guest kernel: Debian's cloud kernel package,
// resolved from its metapackage with apt-cache, downloaded with apt-get
// download and unpacked with dpkg-deb into the artifact cache. Nothing is
// installed on the host.
package kernel

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-run/cocoon/internal/template/cache"
)

// MetaPackage is the Debian metapackage that names the current cloud kernel.
const MetaPackage = "linux-image-cloud-amd64"

// Kernel is an unpacked kernel package.
type Kernel struct {
	// Package and Version name the Debian package, e.g.
	// linux-image-6.1.0-56-cloud-amd64 and 6.1.192-2.
	Package string
	Version string
	// Release is the kernel's uname -r, e.g. 6.1.0-56-cloud-amd64.
	Release string
	// Image is the bzImage (boot/vmlinuz-<Release>).
	Image string
	// ModulesDir is lib/modules/<Release> of the unpacked package.
	ModulesDir string
}

// Fetch resolves MetaPackage to its concrete package and returns it
// unpacked under <cacheRoot>/kernel/<package>_<version>/, downloading it
// only when that is not there yet.
func Fetch(ctx context.Context, cacheRoot string) (*Kernel, error) {
	pkg, ver, err := resolveCached(ctx, cacheRoot, MetaPackage)
	if err != nil {
		return nil, err
	}
	key := pkg + "_" + strings.ReplaceAll(ver, ":", "%3a")
	dir, _, err := cache.Ensure(ctx, cacheRoot, "kernel", key, func(ctx context.Context, dir string) error {
		return download(ctx, pkg, ver, dir)
	})
	if err != nil {
		return nil, err
	}
	k := &Kernel{Package: pkg, Version: ver, Release: strings.TrimPrefix(pkg, "linux-image-")}
	k.Image = filepath.Join(dir, "boot", "vmlinuz-"+k.Release)
	k.ModulesDir = filepath.Join(dir, "lib", "modules", k.Release)
	for _, p := range []string{k.Image, k.ModulesDir} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kernel package %s: %w", pkg, err)
		}
	}
	return k, nil
}

// Resolve returns the concrete kernel package that meta depends on and
// that package's candidate version.
func Resolve(ctx context.Context, meta string) (pkg, version string, err error) {
	out, err := run(ctx, "", "apt-cache", "depends", meta)
	if err != nil {
		return "", "", err
	}
	if pkg, err = parseDepends(out); err != nil {
		return "", "", fmt.Errorf("resolve %s: %w", meta, err)
	}
	out, err = run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", "", err
	}
	if version = parseField(out, "Version"); version == "" {
		return "", "", fmt.Errorf("resolve %s: no version for %s", meta, pkg)
	}
	return pkg, version, nil
}

// aptLists is where apt keeps the package lists that Resolve reads.
const aptLists = "/var/lib/apt/lists"

// resolveCached is Resolve, remembered until apt's package lists change:
// apt-cache takes seconds per call on hosts that disable its binary cache.
func resolveCached(ctx context.Context, cacheRoot, meta string) (pkg, version string, err error) {
	entries, err := os.ReadDir(aptLists)
	if err != nil {
		return Resolve(ctx, meta)
	}
	parts := []string{"resolve", "1", meta}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		parts = append(parts, e.Name(), strconv.FormatInt(info.Size(), 10), strconv.FormatInt(info.ModTime().UnixNano(), 10))
	}
	memo := filepath.Join(cacheRoot, "kernel", ".resolved-"+cache.Key(parts...))
	if b, err := os.ReadFile(memo); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			return f[0], f[1], nil
		}
	}
	if pkg, version, err = Resolve(ctx, meta); err != nil {
		return "", "", err
	}
	// Best effort: a lost memo only costs another apt-cache run.
	if err := os.MkdirAll(filepath.Dir(memo), 0o755); err == nil {
		tmp := memo + ".tmp"
		if os.WriteFile(tmp, []byte(pkg+" "+version+"\n"), 0o644) == nil {
			os.Rename(tmp, memo)
		}
	}
	return pkg, version, nil
}

// parseDepends finds the linux-image-* dependency in apt-cache depends output.
func parseDepends(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || strings.TrimLeft(k, "|") != "Depends" {
			continue
		}
		v = strings.TrimSpace(v)
		if strings.HasPrefix(v, "linux-image-") && !strings.HasPrefix(v, "<") {
			return v, nil
		}
	}
	return "", fmt.Errorf("no linux-image dependency in apt-cache output")
}

// parseField returns the first value of a deb822 field in apt-cache show output.
func parseField(out []byte, name string) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func download(ctx context.Context, pkg, ver, dir string) error {
	tmp, err := os.MkdirTemp("", "cocoon-kernel-")
	if err != nil {
		return fmt.Errorf("download kernel: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, "apt-get", "download", "-q", pkg+"="+ver); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("download kernel: want one .deb, got %d", len(debs))
	}
	if _, err := run(ctx, "", "dpkg-deb", "-x", debs[0], dir); err != nil {
		return err
	}
	return nil
}

func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
