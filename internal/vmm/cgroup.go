package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

const cgroupRoot = "/sys/fs/cgroup"

// cgroupLimits puts pid into a per-sandbox cgroup named name under parent
// with a CPU quota of vcpus cores, a memory limit of memBytes and at most
// pids tasks. On a unified (v2) hierarchy it uses <root>/<parent>/<name>
// with cpu.max, memory.max and pids.max; on v1 or hybrid hosts it uses the
// cpu, memory and pids hierarchies (cpu.cfs_quota_us,
// memory.limit_in_bytes, pids.max). It returns the directories it created,
// for removeCgroups.
func cgroupLimits(parent, name string, pid, vcpus int, memBytes int64, pids int) ([]string, error) {
	period := 100000
	quota := vcpus * period
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		dir := filepath.Join(cgroupRoot, parent, name)
		// Enable the controllers for the parent's children; fails harmlessly
		// when they are already on or the root delegates nothing.
		os.MkdirAll(filepath.Dir(dir), 0o755)
		os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+cpu +memory +pids"), 0)
		os.WriteFile(filepath.Join(filepath.Dir(dir), "cgroup.subtree_control"), []byte("+cpu +memory +pids"), 0)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		err := errors.Join(
			writeFile(dir, "cpu.max", fmt.Sprintf("%d %d", quota, period)),
			writeFile(dir, "memory.max", strconv.FormatInt(memBytes, 10)),
			writeFile(dir, "pids.max", strconv.Itoa(pids)),
			writeFile(dir, "cgroup.procs", strconv.Itoa(pid)),
		)
		return []string{dir}, err
	}
	var dirs []string
	var errs []error
	for _, c := range []struct {
		ctrl  string
		files [][2]string
	}{
		{"cpu", [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}}},
		{"memory", [][2]string{{"memory.limit_in_bytes", strconv.FormatInt(memBytes, 10)}}},
		{"pids", [][2]string{{"pids.max", strconv.Itoa(pids)}}},
	} {
		if _, err := os.Stat(filepath.Join(cgroupRoot, c.ctrl)); err != nil {
			errs = append(errs, fmt.Errorf("no %s cgroup hierarchy", c.ctrl))
			continue
		}
		dir := filepath.Join(cgroupRoot, c.ctrl, parent, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("create cgroup: %w", err))
			continue
		}
		dirs = append(dirs, dir)
		for _, f := range c.files {
			errs = append(errs, writeFile(dir, f[0], f[1]))
		}
		errs = append(errs, writeFile(dir, "cgroup.procs", strconv.Itoa(pid)))
	}
	return dirs, errors.Join(errs...)
}

// cgroupDirs lists the directories cgroupLimits would create for name, so
// that an adopted instance can remove them.
func cgroupDirs(parent, name string) []string {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return []string{filepath.Join(cgroupRoot, parent, name)}
	}
	return []string{
		filepath.Join(cgroupRoot, "cpu", parent, name),
		filepath.Join(cgroupRoot, "memory", parent, name),
		filepath.Join(cgroupRoot, "pids", parent, name),
	}
}

// removeCgroups removes empty cgroup directories; missing ones are fine.
func removeCgroups(dirs []string) {
	for _, d := range dirs {
		os.Remove(d) // rmdir: a cgroup directory is removed, not emptied
	}
}

func writeFile(dir, name, val string) error {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(val), 0); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
