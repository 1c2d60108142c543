package guest

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCmdLine(t *testing.T) {
	tests := []struct {
		name  string
		khz   int
		extra []string
		want  string
	}{
		{"plain", 2096003, nil, "console=ttyS0 quiet panic=-1 tsc_early_khz=2096003 tsc=reliable root=/dev/vda rootfstype=ext4 rw"},
		{"no tsc", 0, nil, "console=ttyS0 quiet panic=-1 root=/dev/vda rootfstype=ext4 rw"},
		{"net", 1000, Net{Addr: netip.MustParsePrefix("169.254.0.21/30"), Gateway: netip.MustParseAddr("169.254.0.22")}.Args(),
			"console=ttyS0 quiet panic=-1 tsc_early_khz=1000 tsc=reliable root=/dev/vda rootfstype=ext4 rw cocoon.ip=169.254.0.21/30 cocoon.gw=169.254.0.22"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CmdLine(tt.khz, tt.extra...); got != tt.want {
				t.Errorf("CmdLine() = %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestParseCPUInfoKHz(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"processor\t: 0\ncpu MHz\t\t: 2096.003\n", 2096003, false},
		{"cpu MHz : 2400.0\ncpu MHz : 1.0\n", 2400000, false},
		{"processor : 0\n", 0, true},
		{"cpu MHz : fast\n", 0, true},
	}
	for _, tt := range tests {
		got, err := parseCPUInfoKHz([]byte(tt.in))
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseCPUInfoKHz(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := HostTSCKHz(); err != nil {
		t.Errorf("HostTSCKHz() on this host: %v", err)
	}
}

func TestScripts(t *testing.T) {
	initrd := InitramfsInit([]string{"virtio_ring", "virtio"})
	cocoon := CocoonInit()
	checks := []struct {
		name, script, want string
	}{
		{"initramfs modules in order", initrd, "for m in virtio_ring virtio; do"},
		{"initramfs switches to cocoon-init", initrd, "init=" + InitPath},
		{"initramfs root", initrd, "root=" + RootDevice},
		{"cocoon-init marker", cocoon, `echo "` + ReadyMarker + `"`},
		{"cocoon-init execs envd as PID 1", cocoon, "exec " + EnvdPath + "\n"},
		{"cocoon-init default ip", cocoon, "ip=169.254.0.21/30"},
		{"cocoon-init default gw", cocoon, "gw=169.254.0.22"},
	}
	for _, c := range checks {
		if !strings.Contains(c.script, c.want) {
			t.Errorf("%s: script lacks %q", c.name, c.want)
		}
	}
	if strings.Contains(initrd+cocoon, "@") {
		t.Errorf("unreplaced placeholder in scripts")
	}
	// Both must at least parse in the shells that run them.
	dir := t.TempDir()
	for _, s := range []struct{ shell, name, text string }{
		{"/bin/busybox", "init", initrd},
		{"/bin/sh", "cocoon-init", cocoon},
	} {
		p := filepath.Join(dir, s.name)
		if err := os.WriteFile(p, []byte(s.text), 0o755); err != nil {
			t.Fatal(err)
		}
		args := []string{"-n", p}
		if strings.HasSuffix(s.shell, "busybox") {
			args = append([]string{"sh"}, args...)
		}
		if _, err := os.Stat(s.shell); err != nil {
			t.Logf("skip syntax check of %s: %v", s.name, err)
			continue
		}
		if out, err := exec.Command(s.shell, args...).CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v: %s", s.shell, s.name, err, out)
		}
	}
}
