package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The CLI's `sandbox` verbs end to end, against the server E2B_API_KEY,
// E2B_API_URL and E2B_SANDBOX_URL name, when COCOON_SDK_E2E=1
// (scripts/e2e-server.sh runs it on gvisor:sqlite with COCOON_BIN).

// cli runs `cocoon sandbox args…` and returns its stdout, stderr and exit
// code.
func cli(t *testing.T, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(os.Getenv("COCOON_BIN"), append([]string{"sandbox"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("cocoon sandbox %v: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// cliJSON runs a verb with --json and decodes its output into v.
func cliJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, errOut, code := cli(t, nil, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("cocoon sandbox %v: exit %d: %s", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("cocoon sandbox %v --json: %v: %q", args, err, out)
	}
}

func sandboxE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("COCOON_SDK_E2E") != "1" || os.Getenv("COCOON_BIN") == "" {
		t.Skip("set COCOON_SDK_E2E=1, COCOON_BIN and E2B_API_KEY/E2B_API_URL/E2B_SANDBOX_URL to run against a server")
	}
}

func TestSandboxCLI(t *testing.T) {
	sandboxE2E(t)
	var created struct{ SandboxID string }
	cliJSON(t, &created, "create", "--timeout", "5m", "-m", "suite=cli", "-e", "FROM_CREATE=yes")
	id := created.SandboxID
	if id == "" {
		t.Fatal("no sandboxID")
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cli(t, nil, "kill", id)
		}
	})

	// exec: output, the exit code passed on, the create's envs, stdin.
	out, errOut, code := cli(t, nil, "exec", id, "--", "echo $FROM_CREATE; echo err >&2; exit 7")
	if out != "yes\n" || errOut != "err\n" || code != 7 {
		t.Fatalf("exec: %q %q exit %d", out, errOut, code)
	}
	if out, _, code = cli(t, nil, "exec", id, "true"); code != 0 || out != "" {
		t.Fatalf("exec true: %q exit %d", out, code)
	}
	if out, _, code = cli(t, []byte("piped\n"), "exec", "-i", id, "--", "tr a-z A-Z"); out != "PIPED\n" || code != 0 {
		t.Fatalf("exec -i: %q exit %d", out, code)
	}

	// exec streams: the first line arrives while the command still runs.
	cmd := exec.Command(os.Getenv("COCOON_BIN"), "sandbox", "exec", id, "--", "echo first; sleep 2; echo second")
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(pipe)
	first, _ := r.ReadString('\n')
	tFirst := time.Now()
	second, _ := r.ReadString('\n')
	tSecond := time.Now()
	if err := cmd.Wait(); first != "first\n" || second != "second\n" || err != nil {
		t.Fatalf("streamed %q %q (%v)", first, second, err)
	}
	if gap := tSecond.Sub(tFirst); gap < 1500*time.Millisecond {
		t.Fatalf("the first line came %v before the second: not streamed", gap)
	}

	// cp both ways, a directory and a file, byte for byte.
	src := t.TempDir()
	big := make([]byte, 5<<20+3)
	rand.Read(big)
	files := map[string][]byte{"big.bin": big, "a.txt": []byte("a\n"), "sub/deeper/b.txt": []byte("b"), "empty": {}}
	for name, data := range files {
		p := filepath.Join(src, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, errOut, code := cli(t, nil, "cp", src, id+":/tmp/up"); code != 0 {
		t.Fatalf("cp in: %s", errOut)
	}
	if _, errOut, code := cli(t, nil, "cp", filepath.Join(src, "a.txt"), id+":/tmp/one.txt"); code != 0 {
		t.Fatalf("cp file in: %s", errOut)
	}
	if out, _, _ := cli(t, nil, "exec", id, "--", "sha256sum /tmp/up/big.bin /tmp/one.txt"); !strings.Contains(out, "/tmp/up/big.bin") {
		t.Fatalf("sha256sum: %q", out)
	}
	dst := filepath.Join(t.TempDir(), "down")
	if _, errOut, code := cli(t, nil, "cp", id+":/tmp/up", dst); code != 0 {
		t.Fatalf("cp out: %s", errOut)
	}
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes back of %d (%v)", name, len(got), len(data), err)
		}
	}
	one := filepath.Join(t.TempDir(), "one.txt")
	if _, errOut, code := cli(t, nil, "cp", id+":/tmp/one.txt", one); code != 0 {
		t.Fatalf("cp file out: %s", errOut)
	}
	if got, _ := os.ReadFile(one); string(got) != "a\n" {
		t.Fatalf("file out: %q", got)
	}

	// ls --json.
	var entries []struct {
		Path string
		Type string
		Size int64
	}
	cliJSON(t, &entries, "ls", id, "/tmp/up", "--depth", "3")
	sizes := map[string]int64{}
	for _, e := range entries {
		sizes[strings.TrimPrefix(e.Path, "/tmp/up/")] = e.Size
	}
	if sizes["big.bin"] != int64(len(big)) || sizes["sub/deeper/b.txt"] != 1 {
		t.Fatalf("ls: %+v", entries)
	}

	// info, pause, resume, metrics, logs, list, kill.
	var info struct {
		SandboxID, State string
		Metadata         map[string]string
	}
	cliJSON(t, &info, "info", id)
	if info.State != "running" || info.Metadata["suite"] != "cli" {
		t.Fatalf("info: %+v", info)
	}
	var st struct{ SandboxID, State string }
	cliJSON(t, &st, "pause", id)
	cliJSON(t, &info, "info", id)
	if st.State != "paused" || info.State != "paused" {
		t.Fatalf("pause: %+v, info %+v", st, info)
	}
	cliJSON(t, &st, "resume", id)
	if out, _, code := cli(t, nil, "exec", id, "cat", "/tmp/one.txt"); code != 0 || out != "a\n" {
		t.Fatalf("after resume: %q exit %d", out, code)
	}
	var metrics, logs []map[string]any
	cliJSON(t, &metrics, "metrics", id)
	cliJSON(t, &logs, "logs", id)
	var list []struct{ SandboxID string }
	cliJSON(t, &list, "list", "-m", "suite=cli")
	if len(list) != 1 || list[0].SandboxID != id {
		t.Fatalf("list: %+v", list)
	}
	var kills []struct{ SandboxID, State string }
	cliJSON(t, &kills, "kill", id)
	killed = true
	if len(kills) != 1 || kills[0].State != "killed" {
		t.Fatalf("kill: %+v", kills)
	}

	// A secure sandbox: exec attaches, is refused, connects for the token.
	cliJSON(t, &created, "create", "--timeout", "2m", "--secure")
	if out, errOut, code := cli(t, nil, "exec", created.SandboxID, "--", "echo secure"); out != "secure\n" || code != 0 {
		t.Fatalf("exec in a secure sandbox: %q exit %d: %s", out, code, errOut)
	}
	cli(t, nil, "kill", created.SandboxID)

	// Bad input: an unknown sandbox, a bad key, no server.
	for _, args := range [][]string{{"info", id}, {"exec", id, "true"}, {"kill", id}} {
		if _, errOut, code := cli(t, nil, args...); code != 1 || !strings.Contains(errOut, "not found") {
			t.Fatalf("%v of a killed sandbox: exit %d: %s", args, code, errOut)
		}
	}
	if _, errOut, code := cli(t, nil, "list", "--api-key", "e2b_bad"); code != 1 || !strings.Contains(errOut, "unauthorized") {
		t.Fatalf("bad key: exit %d: %s", code, errOut)
	}
	if _, errOut, code := cli(t, nil, "list", "--api-url", "http://127.0.0.1:1"); code != 1 ||
		!strings.Contains(errOut, "http://127.0.0.1:1 (set E2B_API_URL or --api-url)") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("no server: exit %d: %s", code, errOut)
	}
}

// TestSandboxShell drives `cocoon sandbox shell` in tmux: the prompt, a
// command's output, a resize seen by stty, exit back to the host shell.
func TestSandboxShell(t *testing.T) {
	sandboxE2E(t)
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("no tmux")
	}
	var created struct{ SandboxID string }
	cliJSON(t, &created, "create", "--timeout", "5m")
	id := created.SandboxID
	t.Cleanup(func() { cli(t, nil, "kill", id) })

	session := fmt.Sprintf("cocoon-shell-test-%d", os.Getpid())
	tmux := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("tmux", append([]string{"-L", session}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	env := []string{}
	for _, k := range []string{"E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL"} {
		env = append(env, "-e", k+"="+os.Getenv(k))
	}
	tmux(append(append([]string{"new-session", "-d", "-s", session, "-x", "100", "-y", "30"}, env...),
		"sh", "-c", os.Getenv("COCOON_BIN")+" sandbox shell "+id+"; echo HOST-SHELL-BACK exit=$?; sleep 600")...)
	t.Cleanup(func() { exec.Command("tmux", "-L", session, "kill-server").Run() })
	screen := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			s := tmux("capture-pane", "-p", "-t", session)
			if strings.Contains(s, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %q on the screen:\n%s", want, s)
			}
			time.Sleep(100 * time.Millisecond) // polling the screen: tmux has no event for it
		}
	}
	screen(":~$") // the prompt (capture-pane drops trailing blanks)
	tmux("send-keys", "-t", session, "echo $((6*7))", "Enter")
	screen("42")
	tmux("send-keys", "-t", session, "stty size", "Enter")
	screen("30 100")
	tmux("resize-window", "-t", session, "-x", "120", "-y", "40")
	tmux("send-keys", "-t", session, "stty size", "Enter")
	screen("40 120")
	tmux("send-keys", "-t", session, "exit 3", "Enter")
	screen("HOST-SHELL-BACK exit=3")
}
