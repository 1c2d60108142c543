package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memAvailableMiB is the host's MemAvailable.
func memAvailableMiB() float64 {
	return meminfo("MemAvailable:")
}

func meminfo(key string) float64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return kb / 1024
		}
	}
	return 0
}

// loadAvg is /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// sandboxPSSMiB sums the PSS of every process that belongs to a sandbox of
// the server with data directory dataDir: its command line names a path in
// dataDir (QEMU's console and disk, runsc's --root) or its working
// directory is inside it (prespawned QEMUs use relative paths). The server
// itself (skip) and the warm pool's processes (<dataDir>/pool) are left out.
func sandboxPSSMiB(dataDir string, skip int) float64 {
	dataDir = filepath.Clean(dataDir) + "/"
	entries, _ := os.ReadDir("/proc")
	total := 0.0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == skip || pid == os.Getpid() {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if !bytes.Contains(cmd, []byte(dataDir)) && !strings.HasPrefix(cwd+"/", dataDir) {
			continue
		}
		if strings.HasPrefix(cwd+"/", dataDir+"pool/") {
			continue // the warm pool's processes belong to no sandbox yet
		}
		total += pssKB(pid) / 1024
	}
	return total
}

// pssKB reads a process's PSS from smaps_rollup.
func pssKB(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return kb
		}
	}
	return 0
}
