package vmm

import (
	"path/filepath"
	"testing"

	"github.com/cocoon-run/cocoon/internal/nodecaps"
)

// The capability bounding set of deploy/cocoon.service is enough for QEMU
// sandboxes: a pooled QEMU (as its slot's uid) restores and is claimed
// under it.
func TestUnderNodeBoundingSet(t *testing.T) {
	needQEMU(t)
	nodecaps.RerunTests(t, filepath.Join("..", ".."), "TestPrespawnClaim")
}
