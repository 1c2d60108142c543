package gvisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Version is the pinned gvisor.dev/gvisor module version runsc is built from.
// runsc built with `go install` reports VERSION_MISSING, so the version is
// recorded next to the binary instead.
const Version = "v0.0.0-20260527191743-a81fd9dd382e"

const runscPackage = "gvisor.dev/gvisor/runsc"

// Platforms in order of preference. kvm is left out: it panics on hosts
// whose /dev/kvm belongs to a paravirtual hypervisor.
var platforms = []string{"systrap", "ptrace"}

// Install makes sure <dataDir>/bin/runsc exists at Version, building it with
// `go install` (CGO_ENABLED=0: a cgo runsc fails at run time) when it is
// missing or was built from another version, then detects and caches the
// platform to use. It returns the path of runsc.
func Install(ctx context.Context, dataDir string) (string, error) {
	bin := filepath.Join(dataDir, "bin")
	runsc := filepath.Join(bin, "runsc")
	versionFile := runsc + ".version"

	recorded, _ := os.ReadFile(versionFile)
	_, statErr := os.Stat(runsc)
	if statErr != nil || strings.TrimSpace(string(recorded)) != Version {
		if err := os.MkdirAll(bin, 0o755); err != nil {
			return "", fmt.Errorf("create %s: %w", bin, err)
		}
		goTool, err := findGo()
		if err != nil {
			return "", err
		}
		cmd := exec.CommandContext(ctx, goTool, "install", runscPackage+"@"+Version)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+bin, "GOWORK=off")
		// Outside any module, so the caller's go.mod cannot interfere.
		cmd.Dir = os.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go install runsc@%s: %w: %s", Version, err, lastLines(out, 20))
		}
		// A new binary invalidates the cached platform probe.
		os.Remove(runsc + ".platform")
		if err := os.WriteFile(versionFile, []byte(Version+"\n"), 0o644); err != nil {
			return "", fmt.Errorf("record runsc version: %w", err)
		}
	}
	if _, err := DetectPlatform(ctx, runsc); err != nil {
		return "", err
	}
	return runsc, nil
}

func findGo() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return "/usr/local/go/bin/go", nil
	}
	return "", errors.New("go toolchain not found (needed to build runsc)")
}

// DetectPlatform returns the runsc platform that works on this host: the
// first of systrap and ptrace that runs `runsc do true`. The answer is cached
// in <runsc>.platform and read from there on later calls.
func DetectPlatform(ctx context.Context, runsc string) (string, error) {
	cache := runsc + ".platform"
	if b, err := os.ReadFile(cache); err == nil {
		if p := strings.TrimSpace(string(b)); p != "" {
			return p, nil
		}
	}
	var errs []error
	for _, p := range platforms {
		if err := probePlatform(ctx, runsc, p); err != nil {
			errs = append(errs, fmt.Errorf("platform %s: %w", p, err))
			continue
		}
		// The cache is an optimisation; failing to write it is not fatal.
		_ = os.WriteFile(cache, []byte(p+"\n"), 0o644)
		return p, nil
	}
	return "", fmt.Errorf("no runsc platform works: %w", errors.Join(errs...))
}

func probePlatform(ctx context.Context, runsc, platform string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	root, err := os.MkdirTemp("", "gvisor-probe-")
	if err != nil {
		return fmt.Errorf("create probe root: %w", err)
	}
	defer os.RemoveAll(root)
	cmd := exec.CommandContext(ctx, runsc, "--root", root, "--platform", platform, "--network", "none", "do", "true")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("runsc do true: %w: %s", err, lastLines(out, 5))
	}
	return nil
}

// lastLines returns at most n trailing lines of b, trimmed.
func lastLines(b []byte, n int) string {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
