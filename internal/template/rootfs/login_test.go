package rootfs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuickLogin: Debian's /etc/profile (base-files 12, testdata) sets the
// same PATH once edited, under bash without running id(1) (PATH has no
// id while it runs) and under dash with it; a second pass changes
// nothing; a link is not followed.
func TestQuickLogin(t *testing.T) {
	orig, err := os.ReadFile("testdata/debian-profile")
	if err != nil {
		t.Fatal(err)
	}
	tree := t.TempDir()
	profile := filepath.Join(tree, "etc/profile")
	if err := writeFile(profile, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	rootProfile := filepath.Join(tree, "root/.profile")
	if err := writeFile(rootProfile, []byte("if [ \"$BASH\" ]; then :; fi\n\nmesg n 2> /dev/null || true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := quickLogin(tree); err != nil {
		t.Fatal(err)
	}
	edited, _ := os.ReadFile(profile)
	if bytes.Contains(edited, []byte(`"$(id -u)"`)) {
		t.Errorf("etc/profile still runs id for bash:\n%s", edited)
	}
	if got, _ := os.ReadFile(rootProfile); !strings.Contains(string(got), "\n[ ! -t 0 ] || mesg n") {
		t.Errorf("root/.profile = %q, want mesg only on a terminal", got)
	}

	wantPath := map[bool]string{
		true:  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		false: "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games",
	}[os.Geteuid() == 0]
	// The host's profile.d stays out of it.
	noProfileD := t.TempDir()
	for _, c := range []struct{ shell, path string }{
		{"/bin/bash", "/nonexistent"}, // bash must not need id
		{"/bin/sh", os.Getenv("PATH")},
	} {
		if _, err := os.Stat(c.shell); err != nil {
			t.Logf("%s: %v", c.shell, err)
			continue
		}
		for name, text := range map[string][]byte{"original": orig, "edited": edited} {
			if name == "original" && c.path == "/nonexistent" {
				continue
			}
			var stderr bytes.Buffer
			cmd := exec.Command(c.shell, "-c", `. "$0"; printf %s "$PATH"`, writeTemp(t, bytes.ReplaceAll(text, []byte("/etc/profile.d"), []byte(noProfileD))))
			cmd.Env = []string{"PATH=" + c.path}
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || string(out) != wantPath || stderr.Len() != 0 {
				t.Errorf("%s sourcing the %s profile: PATH %q (%v), stderr %q; want %q", c.shell, name, out, err, stderr.String(), wantPath)
			}
		}
	}

	if err := quickLogin(tree); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(profile); !bytes.Equal(again, edited) {
		t.Errorf("a second pass changed etc/profile")
	}
	if again, _ := os.ReadFile(rootProfile); strings.Count(string(again), "mesg n") != 1 {
		t.Errorf("a second pass changed root/.profile: %q", again)
	}

	// A link is left alone, and so is its target.
	outside := filepath.Join(t.TempDir(), "profile")
	if err := os.WriteFile(outside, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	linked := t.TempDir()
	if err := os.MkdirAll(filepath.Join(linked, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(linked, "etc/profile")); err != nil {
		t.Fatal(err)
	}
	if err := quickLogin(linked); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(outside); !bytes.Equal(got, orig) {
		t.Errorf("quickLogin wrote through a link")
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "profile")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
