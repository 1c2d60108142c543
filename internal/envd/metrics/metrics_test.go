package metrics

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStat(t *testing.T) {
	stat := "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\ncpu1 50 0 50 350 50 0 0 0 0 0\nintr 1 2\n"
	got, n, err := parseStat([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if want := (cpuTimes{busy: 200, total: 1000}); got != want || n != 2 {
		t.Errorf("parseStat = %+v, %d; want %+v, 2", got, n, want)
	}
	if _, _, err := parseStat([]byte("intr 1\n")); err == nil {
		t.Error("no cpu line: want an error")
	}
}

func TestParseMeminfo(t *testing.T) {
	m := parseMeminfo([]byte("MemTotal:       1000 kB\nMemAvailable:    250 kB\nCached: 100 kB\nHugePages_Total: 0\n"))
	tests := []struct {
		key  string
		want uint64
	}{{"MemTotal", 1024000}, {"MemAvailable", 256000}, {"Cached", 102400}, {"HugePages_Total", 0}}
	for _, tt := range tests {
		if got := m[tt.key]; got != tt.want {
			t.Errorf("%s = %d, want %d", tt.key, got, tt.want)
		}
	}
}

func TestSampleDelta(t *testing.T) {
	proc := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(proc, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("stat", "cpu  100 0 100 800 0 0 0 0\ncpu0 1 1 1 1\n")
	write("meminfo", "MemTotal: 4096 kB\nMemAvailable: 1024 kB\nBuffers: 1 kB\nCached: 2 kB\n")
	s := New(proc, t.TempDir())
	// 300 of the next 400 ticks busy: 75%.
	write("stat", "cpu  250 0 250 900 0 0 0 0\ncpu0 1 1 1 1\n")
	m, err := s.Sample()
	if err != nil {
		t.Fatal(err)
	}
	if m.CPUUsedPct != 75 || m.CPUCount != 1 {
		t.Errorf("cpu = %v%% of %d, want 75%% of 1", m.CPUUsedPct, m.CPUCount)
	}
	if m.MemTotal != 4096<<10 || m.MemUsed != 3072<<10 || m.MemCache != 3<<10 || m.MemTotalMiB != 4 {
		t.Errorf("mem = %+v", m)
	}
	if m.DiskTotal == 0 || m.DiskUsed > m.DiskTotal || m.Timestamp == 0 {
		t.Errorf("disk/ts = %+v", m)
	}
	// No ticks since: the previous figure stands instead of a division by zero.
	if m2, _ := s.Sample(); m2.CPUUsedPct != 75 {
		t.Errorf("repeat sample cpu = %v, want 75", m2.CPUUsedPct)
	}
}
