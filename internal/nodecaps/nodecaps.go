// Package nodecaps reads the capability bounding set a Cocoon node runs
// with, which deploy/cocoon.service declares (CapabilityBoundingSet=), and
// runs a command under it with setpriv(1), so that the runtimes' tests can
// prove the set is enough for sandboxes.
package nodecaps

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Unit is deploy/cocoon.service relative to the repository root.
const Unit = "deploy/cocoon.service"

// FromUnit returns the capabilities of the CapabilityBoundingSet= line of
// the systemd unit at path, as setpriv names them ("net_admin").
func FromUnit(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "CapabilityBoundingSet=")
		if !ok {
			continue
		}
		var caps []string
		for _, c := range strings.Fields(v) {
			caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
		return caps, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	return nil, errors.New("unit has no CapabilityBoundingSet= line")
}

// Command returns cmd run by setpriv with a bounding set of exactly caps.
func Command(caps []string, name string, args ...string) (*exec.Cmd, error) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, fmt.Errorf("setpriv (util-linux): %w", err)
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return exec.Command(setpriv, append([]string{"--bounding-set", set, "--", name}, args...)...), nil
}

// rerunEnv marks a test binary that RerunTests started under the set.
const rerunEnv = "COCOON_TEST_UNDER_BOUNDING_SET"

// RerunTests runs the named tests of the calling test binary again under
// the bounding set of the unit at repo-relative Unit (root is the path to
// the repository root from the package's directory) and fails t unless
// each of them passes. Inside that run it skips t instead.
func RerunTests(t testing.TB, root string, tests ...string) {
	t.Helper()
	if os.Getenv(rerunEnv) != "" {
		t.Skip("already under the node's bounding set")
	}
	caps, err := FromUnit(filepath.Join(root, Unit))
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := Command(caps, os.Args[0], "-test.run", "^("+strings.Join(tests, "|")+")$", "-test.count=1", "-test.v")
	if errors.Is(err, exec.ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), rerunEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tests under the bounding set %v: %v\n%s", caps, err, out)
	}
	for _, name := range tests {
		if !strings.Contains(string(out), "--- PASS: "+name+" ") {
			t.Fatalf("%s did not pass under the bounding set %v:\n%s", name, caps, out)
		}
	}
}
