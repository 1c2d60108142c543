// Package readme runs the README's examples as written against a server
// (issue 16: "the README's examples are run by the tests exactly as
// written").
package readme

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// blockRE is a shell block the README marks for this test.
var blockRE = regexp.MustCompile("(?s)<!-- README test: (\\w+)[^>]*-->\n```sh\n(.*?)```")

// TestReadmeExamples runs each marked block with bash from the checkout's
// root, when COCOON_SDK_E2E=1 and E2B_API_KEY, E2B_API_URL and
// E2B_SANDBOX_URL name a server. Two substitutions only: the README's
// /var/lib/cocoon/sdk.env is a file with those variables, and bin/cocoon is
// $COCOON_BIN.
func TestReadmeExamples(t *testing.T) {
	if os.Getenv("COCOON_SDK_E2E") != "1" || os.Getenv("COCOON_BIN") == "" {
		t.Skip("set COCOON_SDK_E2E=1, COCOON_BIN and E2B_API_KEY/E2B_API_URL/E2B_SANDBOX_URL to run against a server")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	env := filepath.Join(t.TempDir(), "sdk.env")
	var vars strings.Builder
	for _, k := range []string{"E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL"} {
		vars.WriteString("export " + k + "=" + os.Getenv(k) + "\n")
	}
	if err := os.WriteFile(env, []byte(vars.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// What each block must print.
	want := map[string][]string{
		"js":  {"Linux"},
		"cli": {"hello from", "42\n", "exit code 3", "hello.py"},
		"go":  {"Linux"},
	}
	blocks := blockRE.FindAllSubmatch(readme, -1)
	if len(blocks) < len(want) {
		t.Fatalf("%d marked blocks in README.md, want %d", len(blocks), len(want))
	}
	for _, b := range blocks {
		name, script := string(b[1]), string(b[2])
		t.Run(name, func(t *testing.T) {
			script = strings.ReplaceAll(script, "/var/lib/cocoon/sdk.env", env)
			script = strings.ReplaceAll(script, "bin/cocoon", os.Getenv("COCOON_BIN"))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
			cmd.Dir = root
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v:\n%s", err, out.String())
			}
			for _, w := range want[name] {
				if !strings.Contains(out.String(), w) {
					t.Fatalf("no %q in the output:\n%s", w, out.String())
				}
			}
		})
	}
}
