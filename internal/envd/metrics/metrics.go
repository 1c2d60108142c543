// Package metrics samples the machine envd runs on (CPU, memory, root disk)
// for GET /metrics, in the JSON shape of E2B's envd.
package metrics

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Metrics is one sample. Sizes are bytes.
type Metrics struct {
	Timestamp   int64   `json:"ts"`
	CPUCount    int     `json:"cpu_count"`
	CPUUsedPct  float64 `json:"cpu_used_pct"`
	MemTotal    uint64  `json:"mem_total"`
	MemUsed     uint64  `json:"mem_used"`
	MemCache    uint64  `json:"mem_cache"`
	MemTotalMiB uint64  `json:"mem_total_mib"`
	MemUsedMiB  uint64  `json:"mem_used_mib"`
	DiskUsed    uint64  `json:"disk_used"`
	DiskTotal   uint64  `json:"disk_total"`
}

// cpuTimes is the aggregate "cpu" line of /proc/stat, in ticks.
type cpuTimes struct{ busy, total uint64 }

// Sampler computes CPU usage as the delta between two calls.
type Sampler struct {
	proc string // procfs mount, "/proc" outside tests
	disk string // path whose filesystem is reported

	mu      sync.Mutex
	last    cpuTimes
	lastPct float64
}

// New returns a sampler reading procfs at proc ("" = /proc) and reporting
// the filesystem holding disk ("" = /).
func New(proc, disk string) *Sampler {
	if proc == "" {
		proc = "/proc"
	}
	if disk == "" {
		disk = "/"
	}
	s := &Sampler{proc: proc, disk: disk}
	if t, _, err := s.readStat(); err == nil {
		s.last = t
	}
	return s
}

// Sample returns the current metrics; CPU usage covers the time since the
// previous call (or since New).
func (s *Sampler) Sample() (Metrics, error) {
	m := Metrics{Timestamp: time.Now().Unix()}
	t, ncpu, err := s.readStat()
	if err != nil {
		return Metrics{}, err
	}
	m.CPUCount = ncpu
	s.mu.Lock()
	if dt := t.total - s.last.total; t.total > s.last.total && dt > 0 {
		pct := float64(t.busy-min(t.busy, s.last.busy)) / float64(dt) * 100
		s.lastPct = math.Round(min(pct, 100)*100) / 100
		s.last = t
	}
	m.CPUUsedPct = s.lastPct
	s.mu.Unlock()

	mem, err := readMeminfo(filepath.Join(s.proc, "meminfo"))
	if err != nil {
		return Metrics{}, err
	}
	m.MemTotal = mem["MemTotal"]
	avail, ok := mem["MemAvailable"]
	if !ok {
		avail = mem["MemFree"] + mem["Buffers"] + mem["Cached"]
	}
	m.MemUsed = m.MemTotal - min(avail, m.MemTotal)
	m.MemCache = mem["Cached"] + mem["Buffers"]
	m.MemTotalMiB = m.MemTotal >> 20
	m.MemUsedMiB = m.MemUsed >> 20

	var st syscall.Statfs_t
	if err := syscall.Statfs(s.disk, &st); err != nil {
		return Metrics{}, fmt.Errorf("statfs %s: %w", s.disk, err)
	}
	bs := uint64(st.Bsize)
	m.DiskTotal = st.Blocks * bs
	m.DiskUsed = (st.Blocks - st.Bfree) * bs
	return m, nil
}

// readStat parses the aggregate cpu line and counts the per-CPU lines.
func (s *Sampler) readStat() (cpuTimes, int, error) {
	b, err := os.ReadFile(filepath.Join(s.proc, "stat"))
	if err != nil {
		return cpuTimes{}, 0, fmt.Errorf("read cpu stat: %w", err)
	}
	return parseStat(b)
}

func parseStat(b []byte) (cpuTimes, int, error) {
	var t cpuTimes
	found, ncpu := false, 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			ncpu++
			continue
		}
		// user nice system idle iowait irq softirq steal [guest guest_nice]:
		// guest time is already counted in user and nice.
		for i, v := range f[1:min(len(f), 9)] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return cpuTimes{}, 0, fmt.Errorf("parse cpu stat: %w", err)
			}
			t.total += n
			if i != 3 && i != 4 { // idle, iowait
				t.busy += n
			}
		}
		found = true
	}
	if !found {
		return cpuTimes{}, 0, fmt.Errorf("parse cpu stat: no cpu line")
	}
	return t, max(ncpu, 1), nil
}

// readMeminfo returns /proc/meminfo's fields in bytes.
func readMeminfo(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read meminfo: %w", err)
	}
	return parseMeminfo(b), nil
}

func parseMeminfo(b []byte) map[string]uint64 {
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n *= 1024
		}
		m[key] = n
	}
	return m
}
