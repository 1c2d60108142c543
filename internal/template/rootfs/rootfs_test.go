package rootfs

import (
	"context"
	"os"
	"testing"
)

func testDataDir(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a build that needs the network")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: debootstrap and mkfs need root")
	}
	if d := os.Getenv("COCOON_TEST_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/cocoon-test"
}

// TestDebootstrap builds the real bookworm tree into the shared test cache.
func TestDebootstrap(t *testing.T) {
	root := testDataDir(t)
	mirror, err := HostMirror("bookworm")
	if err != nil {
		t.Fatal(err)
	}
	d := Debian{Suite: "bookworm", Mirror: mirror, Variant: "minbase", Include: DefaultInclude}
	tree, err := Debootstrap(context.Background(), root+"/cache", d, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/bin/python3", "usr/bin/tini", "usr/bin/sudo", "bin/ip"} {
		if _, err := os.Stat(tree + "/" + p); err != nil {
			t.Error(err)
		}
	}
}
