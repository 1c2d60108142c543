package rootfs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseSourcesList(t *testing.T) {
	in := `# comment
deb http://mirror.example/debian bookworm main contrib # trailing
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://other.example/debian/ bookworm-updates main

`
	got, err := ParseSourcesList(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Source{
		{Types: []string{"deb"}, URIs: []string{"http://mirror.example/debian"}, Suites: []string{"bookworm"}, Components: []string{"main", "contrib"}},
		{Types: []string{"deb-src"}, URIs: []string{"http://mirror.example/debian"}, Suites: []string{"bookworm"}, Components: []string{"main"}},
		{Types: []string{"deb"}, URIs: []string{"https://other.example/debian/"}, Suites: []string{"bookworm-updates"}, Components: []string{"main"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseSourcesList() =\n%+v\nwant\n%+v", got, want)
	}
	for _, bad := range []string{"deb http://x\n", "deb [arch=amd64 http://x bookworm main\n"} {
		if _, err := ParseSourcesList(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseSourcesList(%q) succeeded, want error", bad)
		}
	}
}

func TestParseDeb822(t *testing.T) {
	in := `Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 abc
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
`
	got, err := ParseDeb822(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Source{
		{Types: []string{"deb"}, URIs: []string{"http://mirror.example/debian"}, Suites: []string{"bookworm", "bookworm-updates"}, Components: []string{"main"}},
		{Types: []string{"deb", "deb-src"}, URIs: []string{"http://security.example/debian-security"}, Suites: []string{"bookworm-security"}, Components: []string{"main"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseDeb822() =\n%+v\nwant\n%+v", got, want)
	}
	if _, err := ParseDeb822(strings.NewReader(" orphan continuation\n")); err == nil {
		t.Error("ParseDeb822(orphan continuation) succeeded, want error")
	}
}

func TestFindMirror(t *testing.T) {
	src := []Source{
		{Types: []string{"deb-src"}, URIs: []string{"http://src.example/debian"}, Suites: []string{"bookworm"}, Components: []string{"main"}},
		{Types: []string{"deb"}, URIs: []string{"http://sec.example/debian-security"}, Suites: []string{"bookworm-security"}, Components: []string{"main"}},
		{Types: []string{"deb"}, URIs: []string{"cdrom:[Debian]/"}, Suites: []string{"bookworm"}, Components: []string{"main"}},
		{Types: []string{"deb"}, URIs: []string{"http://mirror.example/debian/"}, Suites: []string{"bookworm", "bookworm-updates"}, Components: []string{"main"}},
	}
	tests := []struct {
		suite, want string
		wantErr     bool
	}{
		{"bookworm", "http://mirror.example/debian", false},
		{"bookworm-security", "http://sec.example/debian-security", false},
		{"trixie", "", true},
	}
	for _, tt := range tests {
		got, err := FindMirror(src, tt.suite)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("FindMirror(%s) = %q, %v; want %q, err %v", tt.suite, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestHostSources(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sources.list.d", "a.list"), []byte("deb http://list.example/debian trixie main\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sources.list.d", "b.sources"), []byte("Types: deb\nURIs: http://deb822.example/debian\nSuites: bookworm\nComponents: main\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sources.list.d", "c.list.disabled"), []byte("deb http://off.example/debian bookworm main\n"), 0o644))
	src, err := HostSources(dir)
	must(err)
	got, err := FindMirror(src, "bookworm")
	if want := "http://deb822.example/debian"; got != want || err != nil {
		t.Errorf("mirror = %q, %v; want %q", got, err, want)
	}
	if got, _ := FindMirror(src, "trixie"); got != "http://list.example/debian" {
		t.Errorf("trixie mirror = %q, want the .list entry", got)
	}
}
