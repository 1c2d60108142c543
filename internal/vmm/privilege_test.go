package vmm

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-run/cocoon/internal/nodecaps"
)

// underBoundingSet is set in the environment of the test that
// TestUnderNodeBoundingSet runs again.
const underBoundingSet = "COCOON_TEST_UNDER_BOUNDING_SET"

// The capability bounding set of deploy/cocoon.service is enough for QEMU
// sandboxes: a pooled QEMU (as its slot's uid) restores and is claimed
// under it.
func TestUnderNodeBoundingSet(t *testing.T) {
	needQEMU(t)
	if os.Getenv(underBoundingSet) != "" {
		t.Skip("already under the node's bounding set")
	}
	caps, err := nodecaps.FromUnit(filepath.Join("..", "..", nodecaps.Unit))
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := nodecaps.Command(caps, os.Args[0], "-test.run", "^TestPrespawnClaim$", "-test.count=1", "-test.v")
	if errors.Is(err, exec.ErrNotFound) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), underBoundingSet+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestPrespawnClaim") {
		t.Fatalf("TestPrespawnClaim under the bounding set %v: %v\n%s", caps, err, out)
	}
}
