package nodecaps

import (
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The unit keeps what the node needs and drops CAP_DAC_READ_SEARCH, and a
// process started under it has exactly that bounding set.
func TestUnitBoundingSet(t *testing.T) {
	caps, err := FromUnit(filepath.Join("..", "..", Unit))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"net_admin", "sys_admin", "setuid", "setgid", "sys_ptrace"} {
		if !slices.Contains(caps, want) {
			t.Errorf("unit's bounding set %v lacks %s", caps, want)
		}
	}
	for _, not := range []string{"dac_read_search", "sys_module", "sys_rawio", "bpf"} {
		if slices.Contains(caps, not) {
			t.Errorf("unit's bounding set keeps %s", not)
		}
	}
	cmd, err := Command(caps, "cat", "/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("setpriv: %v: %s (needs root)", err, out)
	}
	var bnd uint64
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			bnd, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	const (
		capDacReadSearch = 2
		capNetAdmin      = 12
		capSysModule     = 16
	)
	for _, c := range []struct {
		bit  uint
		want bool
	}{{capDacReadSearch, false}, {capSysModule, false}, {capNetAdmin, true}} {
		if got := bnd&(1<<c.bit) != 0; got != c.want {
			t.Errorf("CapBnd %x: capability %d present = %v, want %v", bnd, c.bit, got, c.want)
		}
	}
}
