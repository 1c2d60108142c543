package gvisor

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// fixture is what TestMain prepares once for all tests.
type fixture struct {
	runsc  string
	rootfs string // the template tree, with the test envd as envd
	debian bool   // rootfs is a Debian tree (bash, python3, dmesg)
	tmp    string // removed after the tests
	slots  atomic.Int32
}

var fx *fixture // set once in TestMain, read-only afterwards

func TestMain(m *testing.M) {
	// testing.Short is only valid after flag parsing, which m.Run does.
	code := func() int {
		var err error
		fx, err = setup()
		if err != nil {
			fmt.Fprintln(os.Stderr, "gvisor tests: fixture:", err)
			fx = nil
		}
		defer func() {
			if fx != nil {
				os.RemoveAll(fx.tmp)
			}
			// runsc removes each sandbox's cgroup but not their parent.
			dirs, _ := filepath.Glob("/sys/fs/cgroup/*/gvt-test")
			for _, d := range dirs {
				os.Remove(d)
			}
		}()
		return m.Run()
	}()
	os.Exit(code)
}

// setup finds runsc and prepares a rootfs. It returns nil (tests skip) when
// runsc or root privileges are missing.
func setup() (*fixture, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	runsc := os.Getenv("COCOON_RUNSC")
	dataDir := os.Getenv("COCOON_TEST_DATA_DIR")
	if dataDir == "" {
		dataDir = "/var/lib/cocoon-test"
	}
	for _, p := range []string{runsc, filepath.Join(dataDir, "bin", "runsc"), "/tmp/gobin/runsc"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			runsc = p
			break
		}
	}
	if runsc == "" {
		return nil, nil
	}
	f := &fixture{runsc: runsc}

	// The test envd serves /health and a few test endpoints.
	tmp, err := os.MkdirTemp("", "gvt-fixture-")
	if err != nil {
		return nil, err
	}
	f.tmp = tmp
	envd := filepath.Join(tmp, "envd")
	build := exec.Command("go", "build", "-o", envd, "./testdata/testenvd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build test envd: %w: %s", err, out)
	}

	// A Debian bookworm minbase tree (debootstrap --include=bash,python3,
	// tini,procps,sudo) when one was made for these tests.
	if deb := filepath.Join(dataDir, "gvt-rootfs"); fileExists(filepath.Join(deb, "usr/bin/python3")) {
		if err := copyFile(envd, filepath.Join(deb, "usr/local/bin/envd")); err != nil {
			return nil, err
		}
		f.rootfs, f.debian = deb, true
		return f, nil
	}
	f.rootfs = filepath.Join(tmp, "rootfs")
	for _, d := range []string{"usr/bin", "usr/local/bin", "home/user", "tmp", "etc", "proc", "dev", "sys"} {
		if err := os.MkdirAll(filepath.Join(f.rootfs, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := copyFile(envd, filepath.Join(f.rootfs, "usr/local/bin/envd")); err != nil {
		return nil, err
	}
	return f, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	os.Remove(dst)
	return os.WriteFile(dst, b, 0o755)
}

func need(tb testing.TB) *fixture {
	tb.Helper()
	if testing.Short() {
		tb.Skip("skipped with -short: starts real gVisor sandboxes")
	}
	if fx == nil {
		tb.Skip("needs root and a runsc binary (COCOON_RUNSC, $COCOON_TEST_DATA_DIR/bin/runsc or /tmp/gobin/runsc)")
	}
	return fx
}

// newSlot makes a throwaway network namespace with a veth pair, shaped like
// the network manager's slots, and removes it when the test ends.
func newSlot(tb testing.TB) *network.Slot {
	tb.Helper()
	n := int(fx.slots.Add(1))
	name := fmt.Sprintf("gvt-%d-%d", os.Getpid()%10000, n)
	s := &network.Slot{
		Index:     n,
		Netns:     name,
		NetnsPath: "/var/run/netns/" + name,
		VethHost:  fmt.Sprintf("gvt%dh%d", os.Getpid()%10000, n),
		VethSlot:  fmt.Sprintf("gvt%ds%d", os.Getpid()%10000, n),
		HostAddr:  netip.MustParsePrefix(fmt.Sprintf("10.250.%d.1/30", n)),
		Addr:      netip.MustParsePrefix(fmt.Sprintf("10.250.%d.2/30", n)),
	}
	ip := func(args ...string) {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			tb.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", s.Netns)
	tb.Cleanup(func() {
		exec.Command("ip", "link", "del", s.VethHost).Run()
		exec.Command("ip", "netns", "del", s.Netns).Run()
	})
	ip("link", "add", s.VethHost, "type", "veth", "peer", "name", s.VethSlot)
	ip("link", "set", s.VethSlot, "netns", s.Netns)
	ip("addr", "add", s.HostAddr.String(), "dev", s.VethHost)
	ip("link", "set", s.VethHost, "up")
	ip("-n", s.Netns, "link", "set", "lo", "up")
	return s
}

func newDriver(tb testing.TB) *Driver {
	tb.Helper()
	d, err := New(context.Background(), Config{
		Runsc:        fx.runsc,
		StateDir:     tb.TempDir(),
		CgroupParent: "/gvt-test",
		DebugLog:     os.Getenv("COCOON_TEST_RUNSC_DEBUG") != "",
	})
	if err != nil {
		tb.Fatal(err)
	}
	if d.ids != nil {
		dir := d.ids.dir
		tb.Cleanup(func() { os.Remove(dir) })
	}
	return d
}

// newTemplate builds a template snapshot from the fixture rootfs.
func newTemplate(tb testing.TB, d *Driver) *runtime.Template {
	tb.Helper()
	dir := tb.TempDir()
	t := &runtime.Template{
		ID: fmt.Sprintf("t%d", time.Now().UnixNano()), Dir: dir,
		RootfsDir: fx.rootfs, VCPUs: 1, MemoryMB: 512,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.BuildSnapshot(ctx, t, newSlot(tb), filepath.Join(dir, "build")); err != nil {
		tb.Fatal(err)
	}
	return t
}

// restore creates a sandbox from src, waits for envd, and kills it at the end.
func restore(tb testing.TB, d *Driver, src runtime.Source) (runtime.Instance, runtime.Spec) {
	tb.Helper()
	slot := newSlot(tb)
	spec := runtime.Spec{
		ID: fmt.Sprintf("sbx%d-%d", os.Getpid()%10000, slot.Index), Dir: filepath.Join(tb.TempDir(), "sbx"),
		VCPUs: 1, MemoryMB: 256, Slot: slot,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := d.Restore(ctx, src, spec)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { inst.Kill(context.Background()) })
	if err := WaitEnvd(ctx, slot.Addr.Addr()); err != nil {
		log, _ := os.ReadFile(inst.ConsoleLog())
		tb.Fatalf("%v; console: %s", err, log)
	}
	return inst, spec
}

// call does one request to the test envd in the sandbox behind slot.
func call(tb testing.TB, slot *network.Slot, method, path string, q url.Values) (int, string) {
	tb.Helper()
	u := fmt.Sprintf("http://%s/%s?%s", netip.AddrPortFrom(slot.Addr.Addr(), EnvdPort), path, q.Encode())
	req, _ := http.NewRequest(method, u, nil)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func writeFile(tb testing.TB, slot *network.Slot, path, data string) {
	tb.Helper()
	if code, body := call(tb, slot, "POST", "file", url.Values{"path": {path}, "data": {data}}); code != 200 {
		tb.Fatalf("write %s: %d %s", path, code, body)
	}
}

func readFile(tb testing.TB, slot *network.Slot, path string) (string, bool) {
	tb.Helper()
	code, body := call(tb, slot, "GET", "file", url.Values{"path": {path}})
	return body, code == 200
}

func counter(tb testing.TB, slot *network.Slot) int {
	tb.Helper()
	_, body := call(tb, slot, "GET", "counter", nil)
	n, err := strconv.Atoi(body)
	if err != nil {
		tb.Fatalf("counter %q: %v", body, err)
	}
	return n
}

func TestDetectPlatform(t *testing.T) {
	f := need(t)
	bin := filepath.Join(t.TempDir(), "bin")
	os.MkdirAll(bin, 0o755)
	runsc := filepath.Join(bin, "runsc")
	if err := os.Symlink(f.runsc, runsc); err != nil {
		t.Fatal(err)
	}
	got, err := DetectPlatform(context.Background(), runsc)
	if err != nil {
		t.Fatal(err)
	}
	if got != "systrap" && got != "ptrace" {
		t.Fatalf("platform = %q, want systrap or ptrace", got)
	}
	cached, _ := os.ReadFile(runsc + ".platform")
	if strings.TrimSpace(string(cached)) != got {
		t.Fatalf("cached platform = %q, want %q", cached, got)
	}
}

// Install must not rebuild a runsc that is already there at Version.
func TestInstallExisting(t *testing.T) {
	f := need(t)
	data := t.TempDir()
	bin := filepath.Join(data, "bin")
	os.MkdirAll(bin, 0o755)
	if err := os.Symlink(f.runsc, filepath.Join(bin, "runsc")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(bin, "runsc.version"), []byte(Version+"\n"), 0o644)
	start := time.Now()
	got, err := Install(context.Background(), data)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(bin, "runsc"); got != want {
		t.Fatalf("Install = %q, want %q", got, want)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("Install took %v: it rebuilt runsc", d)
	}
	if !fileExists(filepath.Join(bin, "runsc.platform")) {
		t.Fatal("platform not cached")
	}
}

// Three clones of one snapshot all answer and do not share files.
func TestSnapshotClones(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	var slots []*network.Slot
	for i := range 3 {
		_, spec := restore(t, d, runtime.Source{Template: tpl})
		writeFile(t, spec.Slot, "/home/user/mine", fmt.Sprint("clone", i))
		slots = append(slots, spec.Slot)
	}
	for i, s := range slots {
		got, ok := readFile(t, s, "/home/user/mine")
		if want := fmt.Sprint("clone", i); !ok || got != want {
			t.Errorf("clone %d reads %q (%v), want %q", i, got, ok, want)
		}
	}
	if fileExists(filepath.Join(fx.rootfs, "home/user/mine")) {
		t.Error("a sandbox wrote into the shared template rootfs")
	}
}

// A paused sandbox resumes (in another slot) with its files, and with its
// processes where they were: the counter continues instead of restarting.
func TestPauseResume(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	inst, spec := restore(t, d, runtime.Source{Template: tpl})
	writeFile(t, spec.Slot, "/home/user/note.txt", "keep me")
	time.Sleep(time.Second)
	before := counter(t, spec.Slot)

	paused := filepath.Join(t.TempDir(), "paused")
	start := time.Now()
	if err := inst.Pause(context.Background(), paused); err != nil {
		t.Fatal(err)
	}
	t.Logf("pause took %v", time.Since(start))
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Pause")
	}
	if fileExists(spec.Dir) {
		t.Error("sandbox dir left after Pause")
	}
	if err := inst.Kill(context.Background()); err != nil {
		t.Errorf("Kill after Pause: %v", err)
	}

	_, spec2 := restore(t, d, runtime.Source{Template: tpl, Paused: paused})
	if got, ok := readFile(t, spec2.Slot, "/home/user/note.txt"); !ok || got != "keep me" {
		t.Errorf("note after resume = %q (%v), want %q", got, ok, "keep me")
	}
	if after := counter(t, spec2.Slot); after < before {
		t.Errorf("counter after resume = %d, want >= %d (process restarted?)", after, before)
	}
}

// Kill leaves no process, no bundle dir and no container; it is idempotent.
func TestKill(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	inst, spec := restore(t, d, runtime.Source{Template: tpl})
	pid := inst.PID()
	for range 2 {
		if err := inst.Kill(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-inst.Done():
	default:
		t.Error("Done not closed after Kill")
	}
	if fileExists(spec.Dir) {
		t.Error("sandbox dir left after Kill")
	}
	ids, err := d.ListContainers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id == spec.ID {
			t.Errorf("runsc list still has %s", id)
		}
	}
	// Anything runsc started for this driver carries its --root in argv.
	// Allow a moment for the gofer, which exits after the sandbox.
	deadline := time.Now().Add(3 * time.Second)
	for {
		left := processesWith(d.cfg.StateDir)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left after Kill (sandbox pid %d): %v", pid, left)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesWith lists live processes whose command line contains s.
func processesWith(s string) []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(b), s) {
			found = append(found, e.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}

// The sandbox runs on gVisor's kernel and sees neither host processes nor
// host files outside its root.
func TestIsolation(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	_, spec := restore(t, d, runtime.Source{Template: tpl})

	if _, uname := call(t, spec.Slot, "GET", "uname", nil); !strings.Contains(uname, "gvisor") {
		// runsc reports a fixed Linux release; what matters is that it is
		// not the host's.
		host, _ := exec.Command("uname", "-r").Output()
		if strings.Contains(uname, strings.TrimSpace(string(host))) {
			t.Errorf("uname in sandbox %q shows the host kernel %s", uname, host)
		}
	}
	_, pids := call(t, spec.Slot, "GET", "pids", nil)
	lines := strings.Split(strings.TrimSpace(pids), "\n")
	if len(lines) > 5 {
		t.Errorf("sandbox sees %d processes:\n%s", len(lines), pids)
	}
	for _, host := range []string{"runsc", os.Args[0]} {
		if strings.Contains(pids, host) {
			t.Errorf("sandbox sees host process %q:\n%s", host, pids)
		}
	}
	secret := filepath.Join(t.TempDir(), "host-secret")
	os.WriteFile(secret, []byte("s3cret"), 0o644)
	if got, ok := readFile(t, spec.Slot, secret); ok {
		t.Errorf("sandbox read host file %s: %q", secret, got)
	}

	if fx.debian {
		ctx := context.Background()
		out, err := d.runsc(ctx, "exec", spec.ID, "dmesg")
		if err != nil || !strings.Contains(string(out), "gVisor") {
			t.Errorf("dmesg in sandbox: %v: %s", err, out)
		}
		out, err = d.runsc(ctx, "exec", spec.ID, "uname", "-a")
		t.Logf("uname -a in sandbox: %s", out)
		if err != nil {
			t.Error(err)
		}
	}
}

// Another driver on the same state dir (an orchestrator restarted) adopts
// a running sandbox; reconciliation lists and removes containers.
func TestAdoptListCleanup(t *testing.T) {
	need(t)
	d := newDriver(t)
	tpl := newTemplate(t, d)
	inst, spec := restore(t, d, runtime.Source{Template: tpl})

	d2, err := New(context.Background(), d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := d2.Adopt(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if adopted.PID() != inst.PID() {
		t.Errorf("adopted pid %d, want %d", adopted.PID(), inst.PID())
	}
	gone := spec
	gone.ID += "-gone"
	if _, err := d2.Adopt(context.Background(), gone); err == nil {
		t.Error("Adopt of a sandbox that does not exist succeeded")
	}

	ids, err := d2.ListContainers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ids, ","); got != spec.ID {
		t.Errorf("ListContainers = %q, want %q", got, spec.ID)
	}
	if err := d2.Cleanup(context.Background(), spec.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-adopted.Done():
	case <-time.After(5 * time.Second):
		t.Error("adopted instance's Done not closed after Cleanup")
	}
	if ids, _ := d2.ListContainers(context.Background()); len(ids) != 0 {
		t.Errorf("ListContainers after Cleanup = %v", ids)
	}
	if err := d2.Cleanup(context.Background(), spec.ID); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

func TestSnapshotMetaCatchesStaleProcessSpec(t *testing.T) {
	d := &Driver{cfg: Config{Platform: "systrap", Overlay: DefaultOverlay}}
	dir := t.TempDir()
	if err := writeMeta(dir, d); err != nil {
		t.Fatal(err)
	}
	if err := d.checkMeta(dir); err != nil {
		t.Fatalf("fresh snapshot: %v", err)
	}
	// A checkpoint saved before the process spec changed must be reported
	// stale, not restored.
	old := `{"runscVersion":"x","platform":"systrap","overlay":"` + DefaultOverlay + `","process":"0123"}`
	if err := os.WriteFile(filepath.Join(dir, metaFile), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	err := d.checkMeta(dir)
	if err == nil || !strings.Contains(err.Error(), "process spec") {
		t.Fatalf("got %v, want a stale process spec error", err)
	}
	other := &Driver{cfg: Config{Platform: "ptrace", Overlay: DefaultOverlay}}
	if err := writeMeta(dir, d); err != nil {
		t.Fatal(err)
	}
	if err := other.checkMeta(dir); err == nil {
		t.Fatal("a snapshot of another platform passed")
	}
}
