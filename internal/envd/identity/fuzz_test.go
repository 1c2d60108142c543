package identity

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzAbs feeds arbitrary paths from envd requests to User.Abs: the result
// is always absolute and clean, and a relative path stays under the home
// directory unless it climbs with "..".
func FuzzAbs(f *testing.F) {
	for _, p := range []string{"", "~/x", "x/../y", "/etc/shadow", "../../root", "~", "~root/x", "a\x00b", "//x//y/"} {
		f.Add(p)
	}
	u := &User{Name: "user", Home: "/home/user"}
	f.Fuzz(func(t *testing.T, p string) {
		got := u.Abs(p)
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Fatalf("Abs(%q) = %q, want an absolute clean path", p, got)
		}
		if !filepath.IsAbs(p) && !strings.Contains(p, "..") && !strings.HasPrefix(got, u.Home) {
			t.Fatalf("Abs(%q) = %q leaves the home directory", p, got)
		}
	})
}
