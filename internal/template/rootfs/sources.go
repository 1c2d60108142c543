package rootfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Source is one apt source entry: a one-line "deb URI SUITE COMP..." or a
// deb822 stanza of a .sources file.
type Source struct {
	Types      []string // deb, deb-src
	URIs       []string
	Suites     []string
	Components []string
}

// ParseSourcesList parses the one-line format of /etc/apt/sources.list.
func ParseSourcesList(r io.Reader) ([]Source, error) {
	var out []Source
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		// Options in brackets: "deb [arch=amd64 signed-by=...] URI ...".
		if i := strings.Index(line, "["); i >= 0 {
			j := strings.Index(line[i:], "]")
			if j < 0 {
				return nil, fmt.Errorf("sources.list line %d: unclosed [", n)
			}
			line = line[:i] + line[i+j+1:]
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return nil, fmt.Errorf("sources.list line %d: want TYPE URI SUITE [COMPONENT...]", n)
		}
		out = append(out, Source{Types: f[:1], URIs: f[1:2], Suites: f[2:3], Components: f[3:]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read sources.list: %w", err)
	}
	return out, nil
}

// ParseDeb822 parses a deb822 .sources file. Stanzas with "Enabled: no"
// are left out.
func ParseDeb822(r io.Reader) ([]Source, error) {
	var out []Source
	fields := map[string]string{}
	last := ""
	flush := func() {
		if len(fields) == 0 {
			return
		}
		if !strings.EqualFold(fields["enabled"], "no") {
			out = append(out, Source{
				Types:      strings.Fields(fields["types"]),
				URIs:       strings.Fields(fields["uris"]),
				Suites:     strings.Fields(fields["suites"]),
				Components: strings.Fields(fields["components"]),
			})
		}
		fields = map[string]string{}
		last = ""
	}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			// A continuation line (e.g. an inline Signed-By key).
			if last == "" {
				return nil, fmt.Errorf("deb822 line %d: continuation without field", n)
			}
			fields[last] += " " + strings.TrimSpace(line)
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("deb822 line %d: want Field: value", n)
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read deb822 sources: %w", err)
	}
	flush()
	return out, nil
}

// HostSources reads the apt sources configured under aptDir (normally
// /etc/apt): sources.list, sources.list.d/*.list and *.sources.
func HostSources(aptDir string) ([]Source, error) {
	var out []Source
	parse := func(path string, fn func(io.Reader) ([]Source, error)) error {
		f, err := os.Open(path)
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return fmt.Errorf("apt sources: %w", err)
		}
		defer f.Close()
		s, err := fn(f)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, s...)
		return nil
	}
	if err := parse(filepath.Join(aptDir, "sources.list"), ParseSourcesList); err != nil {
		return nil, err
	}
	lists, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.list"))
	for _, p := range lists {
		if err := parse(p, ParseSourcesList); err != nil {
			return nil, err
		}
	}
	debs, _ := filepath.Glob(filepath.Join(aptDir, "sources.list.d", "*.sources"))
	for _, p := range debs {
		if err := parse(p, ParseDeb822); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FindMirror returns the URI of the first binary ("deb") source that serves
// exactly suite with the main component over http(s) or file.
func FindMirror(sources []Source, suite string) (string, error) {
	for _, s := range sources {
		if !slices.Contains(s.Types, "deb") || !slices.Contains(s.Suites, suite) || !slices.Contains(s.Components, "main") {
			continue
		}
		for _, u := range s.URIs {
			if strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "file:/") {
				return strings.TrimSuffix(u, "/"), nil
			}
		}
	}
	return "", fmt.Errorf("no apt source serves %s main over http(s) or file", suite)
}

// HostMirror is FindMirror over this host's apt configuration in /etc/apt.
func HostMirror(suite string) (string, error) {
	s, err := HostSources("/etc/apt")
	if err != nil {
		return "", err
	}
	return FindMirror(s, suite)
}
