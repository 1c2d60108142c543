// Package oom is envd's out-of-memory killer. gVisor's sentry has none
// (google/gvisor#1967): when a sandbox's processes reach its memory limit
// the host's cgroup OOM killer kills the sentry, and with it the whole
// sandbox. A VM kills the one process that ran out instead; Killer does
// the same from inside: it watches the sandbox's memory in /proc/meminfo
// and, before the host limit is reached, SIGKILLs the process with the
// largest resident set (never PID 1, envd itself, or a process whose
// oom_score_adj is -1000).
package oom

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Killer watches memory and kills the largest process when it runs out.
type Killer struct {
	// Proc is the proc filesystem; "" means /proc.
	Proc string
	// Self is envd's pid, never killed; 0 means os.Getpid().
	Self int
	// Log receives one line per kill; nil discards.
	Log *slog.Logger
	// Kill sends SIGKILL to pid; nil uses syscall.Kill.
	Kill func(pid int) error
	// Sample returns the memory total and available, in bytes; nil reads
	// Proc/meminfo. Under gVisor use Sysinfo: its /proc/meminfo rescans
	// the sentry's memory file on every read (an idle 512 MiB sandbox
	// polled 10 times a second used 87 ms of CPU a second, against 12 ms
	// without the killer).
	Sample func() (total, avail uint64, err error)
}

// Sysinfo samples memory with sysinfo(2). Under gVisor it is one fstat of
// the sentry's memory file: the pages the host charges to the sandbox,
// freed ones not yet returned included. On Linux freeram leaves the page
// cache out, so use meminfo's MemAvailable there.
func Sysinfo() (total, avail uint64, err error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, 0, fmt.Errorf("sysinfo: %w", err)
	}
	u := uint64(si.Unit)
	return uint64(si.Totalram) * u, uint64(si.Freeram) * u, nil
}

// UnderGVisor reports whether this kernel is gVisor's sentry, whose
// /proc/version reads "Linux version 4.19.0-gvisor ...".
func UnderGVisor() bool {
	b, err := os.ReadFile("/proc/version")
	return err == nil && bytes.Contains(bytes.ToLower(b), []byte("gvisor"))
}

func (k *Killer) sample() (total, avail uint64, err error) {
	if k.Sample != nil {
		return k.Sample()
	}
	return ReadMeminfo(k.proc())
}

// Reserve is how much memory Killer keeps free, in bytes, of total: the
// host's limit on a gVisor sandbox covers the sentry (≈ 10 MiB at 256 MiB)
// and the memory allocated between two samples as well as the processes.
// Measured: a 256 MiB sandbox was killed by the host at ≈ 240 MiB used.
func Reserve(total uint64) uint64 { return 32<<20 + total/16 }

// Interval is how long Killer waits between samples at a usage of used out
// of total: rarely when far from the limit, often close to it, so that an
// allocation of ≈ 1 GiB/s cannot cross the reserve between two samples.
func Interval(used, total uint64) time.Duration {
	switch {
	case total == 0 || used < total/2:
		return 100 * time.Millisecond
	case used < total*3/4:
		return 25 * time.Millisecond
	default:
		return 5 * time.Millisecond
	}
}

// Run samples memory until ctx ends, killing a process whenever less than
// Reserve is available. It returns ctx's error, or an error if meminfo
// cannot be read at all.
func (k *Killer) Run(ctx context.Context) error {
	if _, _, err := k.sample(); err != nil {
		return err
	}
	t := time.NewTimer(0)
	defer t.Stop()
	// stuck is the use at which a kill gave no memory back (memory no
	// process holds, such as a tmpfs's): the next kill waits until use
	// has grown by a quarter of the reserve beyond it, instead of killing
	// every process in turn for nothing.
	var stuck uint64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		total, avail, err := k.sample()
		used := total - min(avail, total)
		low := err == nil && total > 0 && avail < Reserve(total)
		if !low {
			stuck = 0
		}
		if low && (stuck == 0 || used > stuck+Reserve(total)/4) {
			if pid, ok := k.KillLargest(total, used); ok {
				k.waitReleased(ctx, pid, total)
				total, avail, _ = k.sample()
				used = total - min(avail, total)
				if avail < Reserve(total) {
					stuck = used
				}
			}
		}
		t.Reset(Interval(used, total))
	}
}

func (k *Killer) proc() string {
	if k.Proc == "" {
		return "/proc"
	}
	return k.Proc
}

// ReleaseWait bounds how long Killer waits, after a kill, for the
// victim's memory to come back before it may kill again. gVisor frees an
// exited process's memory after its /proc entry is gone: 50 ms after a
// 450 MiB process had vanished MemAvailable had not moved, and a killer
// that did not wait killed the next process (the victim's shell) too.
const ReleaseWait = 5 * time.Second

// waitReleased waits until pid is gone and the sandbox has Reserve
// available again, or ReleaseWait has passed, so that one allocation is
// not paid for with two kills.
func (k *Killer) waitReleased(ctx context.Context, pid int, total uint64) {
	deadline := time.Now().Add(ReleaseWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		_, err := os.Stat(filepath.Join(k.proc(), strconv.Itoa(pid)))
		gone := err != nil
		if !gone {
			if st, err := readStat(k.proc(), pid); err == nil && st == 'Z' {
				gone = true
			}
		}
		if gone {
			if t, avail, err := k.sample(); err != nil || avail >= Reserve(t) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Victim is a process Killer may kill.
type Victim struct {
	PID  int
	Comm string
	RSS  uint64 // bytes
}

// Largest returns the process with the largest resident set, skipping
// PID 1, self and processes with oom_score_adj -1000.
func Largest(proc string, self int) (Victim, bool) {
	ents, err := os.ReadDir(proc)
	if err != nil {
		return Victim{}, false
	}
	var best Victim
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 || pid == self {
			continue
		}
		dir := filepath.Join(proc, e.Name())
		if adj, err := os.ReadFile(filepath.Join(dir, "oom_score_adj")); err == nil && strings.TrimSpace(string(adj)) == "-1000" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "statm"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		pages, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		if rss := pages * uint64(os.Getpagesize()); rss > best.RSS {
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			best = Victim{PID: pid, Comm: strings.TrimSpace(string(comm)), RSS: rss}
		}
	}
	return best, best.PID != 0
}

// KillLargest kills the largest process (see Largest) and logs it with the
// sandbox's memory use, used of total bytes.
func (k *Killer) KillLargest(total, used uint64) (int, bool) {
	self := k.Self
	if self == 0 {
		self = os.Getpid()
	}
	v, ok := Largest(k.proc(), self)
	if !ok {
		return 0, false
	}
	kill := k.Kill
	if kill == nil {
		kill = func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
	}
	err := kill(v.PID)
	if k.Log != nil {
		k.Log.Warn("out of memory: killed the largest process", "pid", v.PID, "comm", v.Comm,
			"rss_mib", v.RSS>>20, "used_mib", used>>20, "total_mib", total>>20, "err", err)
	}
	return v.PID, err == nil
}

// ReadMeminfo returns MemTotal and MemAvailable from proc/meminfo, in bytes.
func ReadMeminfo(proc string) (total, avail uint64, err error) {
	b, err := os.ReadFile(filepath.Join(proc, "meminfo"))
	if err != nil {
		return 0, 0, fmt.Errorf("read meminfo: %w", err)
	}
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() && !(haveTotal && haveAvail) {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			total, haveTotal = n<<10, true
		case "MemAvailable":
			avail, haveAvail = n<<10, true
		}
	}
	if !haveTotal || !haveAvail {
		return 0, 0, fmt.Errorf("meminfo lacks MemTotal or MemAvailable")
	}
	return total, avail, nil
}

// readStat returns the state letter of proc/pid/stat.
func readStat(proc string, pid int) (byte, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("bad stat")
	}
	return b[i+2], nil
}
