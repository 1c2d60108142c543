package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

const cgroupRoot = "/sys/fs/cgroup"

// limits are a sandbox's cgroup limits.
type limits struct {
	vcpus    int
	memBytes int64
	pids     int
	// dev is the "major:minor" of the disk io applies to; "" for none.
	dev string
	io  runtime.IOLimit
}

// cgroupLimits puts pid into a per-sandbox cgroup named name under parent
// with a CPU quota of l.vcpus cores, a memory limit of l.memBytes, at most
// l.pids tasks and l.io on disk l.dev. On a unified (v2) hierarchy it uses
// <root>/<parent>/<name> with cpu.max, memory.max, pids.max and io.max; on
// v1 or hybrid hosts the cpu, memory, pids and blkio hierarchies
// (cpu.cfs_quota_us, memory.limit_in_bytes, pids.max,
// blkio.throttle.*_device). It returns the directories it created, for
// removeCgroups.
func cgroupLimits(parent, name string, pid int, l limits) ([]string, error) {
	period := 100000
	quota := l.vcpus * period
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		dir := filepath.Join(cgroupRoot, parent, name)
		// Enable the controllers for the parent's children; fails harmlessly
		// when they are already on or the root delegates nothing.
		os.MkdirAll(filepath.Dir(dir), 0o755)
		ctrls := []byte("+cpu +memory +pids +io")
		os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), ctrls, 0)
		os.WriteFile(filepath.Join(filepath.Dir(dir), "cgroup.subtree_control"), ctrls, 0)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		errs := []error{
			writeFile(dir, "cpu.max", fmt.Sprintf("%d %d", quota, period)),
			writeFile(dir, "memory.max", strconv.FormatInt(l.memBytes, 10)),
			writeFile(dir, "pids.max", strconv.Itoa(l.pids)),
		}
		if l.dev != "" {
			var max []string
			for _, v := range []struct {
				key string
				n   uint64
			}{{"rbps", l.io.ReadBps}, {"wbps", l.io.WriteBps}, {"riops", l.io.ReadIOPS}, {"wiops", l.io.WriteIOPS}} {
				if v.n > 0 {
					max = append(max, fmt.Sprintf("%s=%d", v.key, v.n))
				}
			}
			if len(max) > 0 {
				errs = append(errs, writeFile(dir, "io.max", l.dev+" "+strings.Join(max, " ")))
			}
		}
		errs = append(errs, writeFile(dir, "cgroup.procs", strconv.Itoa(pid)))
		return []string{dir}, errors.Join(errs...)
	}
	var blkio [][2]string
	if l.dev != "" {
		for _, v := range []struct {
			file string
			n    uint64
		}{
			{"blkio.throttle.read_bps_device", l.io.ReadBps}, {"blkio.throttle.write_bps_device", l.io.WriteBps},
			{"blkio.throttle.read_iops_device", l.io.ReadIOPS}, {"blkio.throttle.write_iops_device", l.io.WriteIOPS},
		} {
			if v.n > 0 {
				blkio = append(blkio, [2]string{v.file, fmt.Sprintf("%s %d", l.dev, v.n)})
			}
		}
	}
	var dirs []string
	var errs []error
	for _, c := range []struct {
		ctrl  string
		files [][2]string
	}{
		{"cpu", [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}}},
		{"memory", [][2]string{{"memory.limit_in_bytes", strconv.FormatInt(l.memBytes, 10)}}},
		{"pids", [][2]string{{"pids.max", strconv.Itoa(l.pids)}}},
		{"blkio", blkio},
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
		filepath.Join(cgroupRoot, "blkio", parent, name),
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
