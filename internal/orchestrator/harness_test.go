package orchestrator_test

// The harness of the orchestrator's integration tests and benchmarks: it
// builds the real base template (cached in $COCOON_TEST_DATA_DIR), snapshots
// it for every runtime this host has, and starts orchestrators on a private
// data dir with their own network prefix and pool, so that nothing here
// touches another suite's sandboxes.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// Names and address pools owned by these tests.
const (
	netPrefix      = "otest"
	netPool        = "10.220.0.0/16"
	crashNetPrefix = "otestc"
	crashNetPool   = "10.221.0.0/16"
)

func testDataDir() string {
	if d := os.Getenv("COCOON_TEST_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/cocoon-test"
}

// env is what every test shares: the template, the runtimes, the slots.
type env struct {
	dataDir  string // shared cache (template)
	nodeDir  string // this suite's orchestrator data dir
	tmpDir   string // envd, cocoon binaries
	tmpl     *runtime.Template
	runtimes map[string]runtime.Runtime
	names    []string // runtimes with a snapshot, in test order
	qemu     *vmm.Runtime
	runsc    string
	slots    *network.Manager
	log      *slog.Logger
}

var (
	envOnce sync.Once
	envVal  *env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if envVal != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := envVal.slots.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "close slots:", err)
		}
		cancel()
		os.RemoveAll(envVal.tmpDir)
	}
	os.Exit(code)
}

// need returns the shared environment, or skips when the host cannot run it.
func need(tb testing.TB) *env {
	tb.Helper()
	if testing.Short() {
		tb.Skip("-short: starts real sandboxes")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, QEMU, runsc)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Skip("qemu-system-x86_64 is not installed")
	}
	envOnce.Do(func() { envVal, envErr = setup(tb) })
	if envErr != nil {
		tb.Fatalf("test environment: %v", envErr)
	}
	return envVal
}

func setup(tb testing.TB) (*env, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	e := &env{dataDir: testDataDir(), runtimes: map[string]runtime.Runtime{}}
	e.nodeDir = filepath.Join(e.dataDir, "otest", "node")
	e.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		e.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	// Two runs of this suite at once (another engineer's `go test ./...`)
	// would reconcile away each other's sandboxes: they share the network
	// prefix, which is host-wide whatever their data dirs, so the lock is
	// keyed by the prefix, not by the data dir. The second waits for the first.
	if err := lockSuite(ctx, filepath.Join("/run/lock", "cocoon-"+netPrefix)); err != nil {
		return nil, err
	}
	var err error
	if e.tmpDir, err = os.MkdirTemp("", "otest-"); err != nil {
		return nil, err
	}
	envd := filepath.Join(e.tmpDir, "envd")
	if err := goBuild(ctx, envd, "./cmd/envd", "CGO_ENABLED=0"); err != nil {
		return nil, err
	}
	t0 := time.Now()
	e.tmpl, err = base.Build(ctx, base.Options{DataDir: e.dataDir, EnvdPath: envd})
	if err != nil {
		return nil, fmt.Errorf("build base template: %w", err)
	}
	tb.Logf("base template %s ready in %v", e.tmpl.ID, time.Since(t0).Round(time.Millisecond))

	e.slots, err = network.NewManager(network.Config{Prefix: netPrefix, Pool: netip.MustParsePrefix(netPool)})
	if err != nil {
		return nil, err
	}
	// Leftovers of an interrupted run of this suite.
	if err := e.slots.Reconcile(ctx, func(int) bool { return false }); err != nil {
		return nil, err
	}

	e.qemu, err = vmm.New(vmm.Options{DataDir: e.dataDir, Accel: vmm.AccelTCG, CgroupParent: "otest", Logger: e.log})
	if err != nil {
		return nil, err
	}
	e.runtimes[vmm.Name] = e.qemu
	e.names = []string{vmm.Name}

	if want := os.Getenv("COCOON_TEST_RUNTIMES"); want == "" || strings.Contains(want, gvisor.Name) {
		e.runsc, err = findRunsc(ctx, e.dataDir)
		if err != nil {
			tb.Logf("gvisor runtime unavailable: %v", err)
		} else {
			d, err := gvisor.New(ctx, gvisor.Config{
				Runsc:       e.runsc,
				StateDir:    filepath.Join(e.nodeDir, "gvisor", "state"),
				ReapplyAddr: network.ReapplyAddr,
			})
			if err != nil {
				tb.Logf("gvisor runtime unavailable: %v", err)
			} else {
				e.runtimes[gvisor.Name] = d
				e.names = append(e.names, gvisor.Name)
			}
		}
	}
	if want := os.Getenv("COCOON_TEST_RUNTIMES"); want != "" && !strings.Contains(want, vmm.Name) {
		delete(e.runtimes, vmm.Name)
		e.names = e.names[1:]
	}
	err = orchestrator.SnapshotTemplate(ctx, e.slots, e.runtimes, e.tmpl, e.names, func(msg string) { tb.Log(msg) })
	if err != nil {
		return nil, err
	}
	return e, nil
}

// lockSuite takes an exclusive flock on dir/.lock, held until the process
// exits, waiting for another run of the suite to finish.
func lockSuite(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil // f stays open: the lock lives as long as the process
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("another run of this suite holds %s: %w", f.Name(), ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// findRunsc returns $COCOON_RUNSC, or <dataDir>/bin/runsc built by
// gvisor.Install (minutes the first time).
func findRunsc(ctx context.Context, dataDir string) (string, error) {
	if p := os.Getenv("COCOON_RUNSC"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("COCOON_RUNSC: %w", err)
		}
		return p, nil
	}
	return gvisor.Install(ctx, dataDir)
}

// goBuild builds pkg of this module into out.
func goBuild(ctx context.Context, out, pkg string, env ...string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// each runs fn as a subtest for every runtime with a snapshot.
func (e *env) each(t *testing.T, fn func(t *testing.T, rt string)) {
	for _, rt := range e.names {
		t.Run(rt, func(t *testing.T) { fn(t, rt) })
	}
}

// newOrchestrator starts an orchestrator on the suite's node dir; its
// sandboxes are killed when the test ends.
func (e *env) newOrchestrator(tb testing.TB) *orchestrator.Orchestrator {
	tb.Helper()
	ctx := context.Background()
	o, err := orchestrator.New(ctx, orchestrator.Config{
		NodeID: "otest", DataDir: e.nodeDir, Runtimes: e.runtimes, Default: e.names[0],
		Slots: e.slots, Logger: e.log, WarmMax: warmMax(),
		// Correctness, not speed: a TCG guest on a box shared with other
		// suites may need more than the default 30 s to answer.
		EnvdTimeout: 90 * time.Second,
	})
	if err != nil {
		tb.Fatalf("orchestrator.New: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		defer o.Close() // the warm pool's prespawned processes
		for _, sb := range o.List(ctx) {
			if err := o.Kill(ctx, sb.ID, true); err != nil {
				tb.Errorf("cleanup: kill %s: %v", sb.ID, err)
			}
		}
	})
	return o
}

// warmMax is the orchestrator's warm pool bound: COCOON_TEST_WARM=off
// disables the pool (to compare with plain restores), else the default.
func warmMax() int {
	if os.Getenv("COCOON_TEST_WARM") == "off" {
		return -1
	}
	return 0
}

// newID returns a fresh sandbox id.
func newID(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

const testToken = "otest-access-token"

func (e *env) params(id, rt string) orchestrator.CreateParams {
	return orchestrator.CreateParams{
		ID: id, TemplateDir: e.tmpl.Dir, TemplateID: "base", BuildID: e.tmpl.ID,
		Runtime: rt, AccessToken: testToken, Hostname: id,
	}
}

// create makes n sandboxes of runtime rt.
func (e *env) create(tb testing.TB, o *orchestrator.Orchestrator, rt string, n int) []orchestrator.Sandbox {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := make([]orchestrator.Sandbox, 0, n)
	for i := 0; i < n; i++ {
		sb, err := o.Create(ctx, e.params(newID("ot"), rt))
		if err != nil {
			tb.Fatalf("create %s sandbox %d: %v", rt, i, err)
		}
		out = append(out, sb)
	}
	return out
}

// result of a command run through envd.
type result struct {
	Stdout, Stderr string
	ExitCode       int32
}

var envdHTTP = &http.Client{Transport: &http.Transport{
	DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
}}

// run runs `bash -c cmd` in the sandbox at addr through envd's Process
// service (the generated Connect client) and waits for it to end.
func run(ctx context.Context, addr, token, cmd string) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := processconnect.NewProcessClient(envdHTTP, "http://"+net.JoinHostPort(addr, strconv.Itoa(orchestrator.EnvdPort)))
	req := connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{Cmd: "/bin/bash", Args: []string{"-c", cmd}}})
	req.Header().Set("X-Access-Token", token)
	stream, err := c.Start(ctx, req)
	if err != nil {
		return result{}, fmt.Errorf("start %q: %w", cmd, err)
	}
	defer stream.Close()
	var out, errOut bytes.Buffer
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			out.Write(d.GetStdout())
			errOut.Write(d.GetStderr())
		}
		if end := ev.GetEnd(); end != nil {
			return result{Stdout: out.String(), Stderr: errOut.String(), ExitCode: end.GetExitCode()}, nil
		}
	}
	if err := stream.Err(); err != nil {
		return result{}, fmt.Errorf("run %q: %w", cmd, err)
	}
	return result{}, fmt.Errorf("run %q: stream ended without an end event", cmd)
}

// mustRun runs cmd and fails the test unless it exits 0.
func mustRun(tb testing.TB, addr, cmd string) string {
	tb.Helper()
	r, err := run(context.Background(), addr, testToken, cmd)
	if err != nil {
		tb.Fatal(err)
	}
	if r.ExitCode != 0 {
		tb.Fatalf("%q exited %d: stdout %q stderr %q", cmd, r.ExitCode, r.Stdout, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout)
}

// procsMentioning lists the live pids whose command line (or working
// directory) contains s followed by a character that cannot continue a
// sandbox id (so that <dir>/ab does not match <dir>/abc).
func procsMentioning(s string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		// A QEMU from the warm pool names its files relative to its cwd.
		cwd, _ := os.Readlink(filepath.Join("/proc", d.Name(), "cwd"))
		if !mentions(b, []byte(s)) && !mentions([]byte(cwd+"/"), []byte(s)) || !alive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func mentions(b, s []byte) bool {
	for {
		i := bytes.Index(b, s)
		if i < 0 {
			return false
		}
		b = b[i+len(s):]
		if len(b) == 0 || !(b[0] >= 'a' && b[0] <= 'z' || b[0] >= '0' && b[0] <= '9') {
			return true
		}
	}
}

// alive reports whether pid exists and is not a zombie (which holds nothing).
func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	j := bytes.LastIndexByte(st, ')')
	return j < 0 || j+2 >= len(st) || st[j+2] != 'Z'
}

// withDescendants adds every live descendant of pids (gVisor's systrap
// stubs, for instance).
func withDescendants(pids []int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		j := bytes.LastIndexByte(st, ')')
		if f := strings.Fields(string(st[j+1:])); j >= 0 && len(f) > 2 && f[0] != "Z" {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				children[ppid] = append(children[ppid], pid)
			}
		}
	}
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(p int) {
		if seen[p] {
			return
		}
		seen[p] = true
		out = append(out, p)
		for _, c := range children[p] {
			walk(c)
		}
	}
	for _, p := range pids {
		walk(p)
	}
	return out
}

// runtimeProcs lists the runtime processes (QEMU; runsc sandbox and gofer)
// whose command line names a sandbox dir.
func runtimeProcs(sandboxDir string) []int {
	return procsMentioning(filepath.Clean(sandboxDir))
}

// waitGone waits until no process mentions sandboxDir.
func waitGone(sandboxDir string, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		p := runtimeProcs(sandboxDir)
		if len(p) == 0 || time.Now().After(deadline) {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pssKiB sums Pss over the processes' smaps_rollup.
func pssKiB(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				v, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					return 0, err
				}
				total += v
			}
		}
	}
	return total, nil
}

// netnsWithPrefix lists the network namespaces named <prefix>-slot-*.
func netnsWithPrefix(prefix string) []string {
	ents, err := os.ReadDir(network.NetnsDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, d := range ents {
		if strings.HasPrefix(d.Name(), prefix+"-slot-") {
			out = append(out, d.Name())
		}
	}
	return out
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}

// loadavg is /proc/loadavg's first three fields.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
