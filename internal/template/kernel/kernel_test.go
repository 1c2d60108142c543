package kernel

import (
	"context"
	"os"
	"testing"
)

func TestParseDepends(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{"plain", "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n", "linux-image-6.1.0-56-cloud-amd64", false},
		{"alternatives", "linux-image-cloud-amd64\n |Depends: <virtual>\n  Depends: linux-image-6.1.0-9-cloud-amd64\n", "linux-image-6.1.0-9-cloud-amd64", false},
		{"none", "linux-image-cloud-amd64\n  Recommends: foo\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDepends([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseDepends() = %q, %v; want %q, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseField(t *testing.T) {
	in := "Package: linux-image-6.1.0-56-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nDescription-md5: x\n"
	if got, want := parseField([]byte(in), "Version"), "6.1.192-2"; got != want {
		t.Errorf("parseField(Version) = %q, want %q", got, want)
	}
	if got := parseField([]byte(in), "Missing"); got != "" {
		t.Errorf("parseField(Missing) = %q, want empty", got)
	}
}

// TestFetch downloads the real kernel package into the shared test cache.
func TestFetch(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the kernel download")
	}
	root := os.Getenv("COCOON_TEST_DATA_DIR")
	if root == "" {
		root = "/var/lib/cocoon-test"
	}
	k, err := Fetch(context.Background(), root+"/cache")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{k.Image, k.ModulesDir} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	t.Logf("kernel %s %s: %s", k.Package, k.Version, k.Image)
}
