package vmm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/template/kernel"
)

// The tests boot real QEMU (TCG) guests made of Debian's cloud kernel, an
// initramfs whose /init is testdata/guestinit (an envd stand-in serving
// /health, files on the root disk and a memory pattern) and a small ext4
// root disk. Artifacts are cached in $COCOON_TEST_DATA_DIR.

func dataDir() string {
	if d := os.Getenv("COCOON_TEST_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/cocoon-test"
}

func needQEMU(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("boots QEMU guests")
	}
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, cgroups)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Skip("no qemu-system-x86_64")
	}
}

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// testTemplate returns a template (kernel, initrd, rootfs image) in a
// fresh temporary dir; emptyRootfs gives it a zero-length (unbootable) root
// image instead of a small ext4 one.
func testTemplate(tb testing.TB, emptyRootfs bool) *runtime.Template {
	tb.Helper()
	ctx := context.Background()
	k, err := kernel.Fetch(ctx, filepath.Join(dataDir(), "cache"))
	if err != nil {
		tb.Fatalf("fetch kernel: %v", err)
	}
	initrd := testInitrd(tb, k)
	dir := tb.TempDir()
	img := filepath.Join(dir, "rootfs.ext4")
	if emptyRootfs {
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			tb.Fatal(err)
		}
	} else {
		tree := filepath.Join(dir, "tree")
		os.MkdirAll(tree, 0o755)
		os.WriteFile(filepath.Join(tree, "hello"), []byte("from the template\n"), 0o644)
		run(tb, "mkfs.ext4", "-q", "-F", "-d", tree, img, "64M")
	}
	return &runtime.Template{
		ID: "vmmtest", Dir: filepath.Join(dir, "template"),
		Kernel: k.Image, Initrd: initrd, RootfsImage: img,
		VCPUs: 1, MemoryMB: 256, DiskMB: 64,
	}
}

// testInitrd builds (once per guestinit binary and kernel) the initramfs: guestinit as /init
// plus the virtio modules.
func testInitrd(tb testing.TB, k *kernel.Kernel) string {
	tb.Helper()
	tmp := tb.TempDir()
	bin := filepath.Join(tmp, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/guestinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("build guestinit: %v: %s", err, out)
	}
	h := sha256.New()
	b, _ := os.ReadFile(bin)
	h.Write(b)
	h.Write([]byte(k.Release))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	out := filepath.Join(dataDir(), "vmm", "initrd-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	root := filepath.Join(tmp, "root")
	os.MkdirAll(filepath.Join(root, "lib", "modules"), 0o755)
	os.Rename(bin, filepath.Join(root, "init"))
	for _, m := range guest.Modules {
		matches, _ := filepath.Glob(filepath.Join(k.ModulesDir, "kernel", "*", "*", m+".ko"))
		matches2, _ := filepath.Glob(filepath.Join(k.ModulesDir, "kernel", "*", m+".ko"))
		matches = append(matches, matches2...)
		if len(matches) == 0 {
			tb.Fatalf("module %s not found", m)
		}
		b, _ := os.ReadFile(matches[0])
		os.WriteFile(filepath.Join(root, "lib", "modules", m+".ko"), b, 0o644)
	}
	os.MkdirAll(filepath.Dir(out), 0o755)
	c := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+out+".tmp && mv "+out+".tmp "+out)
	c.Dir = root
	if o, err := c.CombinedOutput(); err != nil {
		tb.Fatalf("cpio: %v: %s", err, o)
	}
	return out
}

// testSlot creates a throwaway slot: a namespace with tap0 holding the
// gateway address. Only what the driver needs; internal/network makes the
// real ones.
func testSlot(tb testing.TB, n int) *network.Slot {
	tb.Helper()
	name := fmt.Sprintf("cvmmt-%d-%d", os.Getpid(), n)
	run(tb, "ip", "netns", "add", name)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	gw := netip.PrefixFrom(network.GuestGateway, network.GuestPrefixLen).String()
	run(tb, "ip", "-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap")
	run(tb, "ip", "-n", name, "addr", "add", gw, "dev", "tap0")
	run(tb, "ip", "-n", name, "link", "set", "tap0", "up")
	run(tb, "ip", "-n", name, "link", "set", "lo", "up")
	return &network.Slot{Index: n, Netns: name, NetnsPath: "/var/run/netns/" + name, Tap: "tap0",
		Addr: netip.PrefixFrom(network.GuestIP, 32)}
}

func newRuntime(tb testing.TB) *Runtime {
	tb.Helper()
	opts := Options{DataDir: filepath.Join(dataDir(), "vmm"), CgroupParent: "cocoon-vmmtest"}
	if testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r, err := New(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// guestDo makes a request to the guest's envd stand-in.
func guestDo(tb testing.TB, slot *network.Slot, method, path string, body []byte) (int, string) {
	tb.Helper()
	req, _ := http.NewRequest(method, EnvdURL()+path, bytes.NewReader(body))
	resp, err := GuestClient(slot).Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func pssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func gone(pid int) bool {
	return syscall.Kill(pid, 0) == syscall.ESRCH
}

func TestProbeAccelCaches(t *testing.T) {
	needQEMU(t)
	tmpl := testTemplate(t, false)
	dir := t.TempDir()
	start := time.Now()
	a, err := ProbeAccel(context.Background(), dir, tmpl.Kernel, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("accel %s (probe took %v)", a, time.Since(start))
	if a != AccelKVM && a != AccelTCG {
		t.Fatalf("ProbeAccel = %q", a)
	}
	start = time.Now()
	b, err := ProbeAccel(context.Background(), dir, tmpl.Kernel, "")
	if err != nil || b != a {
		t.Fatalf("second ProbeAccel = %q, %v; want %q", b, err, a)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("cached probe took %v", d)
	}
}

func TestDriver(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	r := newRuntime(t)
	tmpl := testTemplate(t, false)
	slots := []*network.Slot{testSlot(t, 0), testSlot(t, 1), testSlot(t, 2), testSlot(t, 3)}

	start := time.Now()
	if err := r.BuildSnapshot(ctx, tmpl, slots[3], t.TempDir()+"/build"); err != nil {
		t.Fatalf("BuildSnapshot: %v", err)
	}
	t.Logf("BuildSnapshot: %v", time.Since(start))
	st, err := os.Stat(filepath.Join(tmpl.Dir, "qemu", "state"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 1<<20 {
		t.Errorf("template state is %d bytes; want device state only (< 1 MiB)", st.Size())
	}

	sandboxes := t.TempDir()
	var insts []*Instance
	var specs []runtime.Spec
	for i := range 3 {
		spec := runtime.Spec{ID: fmt.Sprintf("clone%d", i), Dir: filepath.Join(sandboxes, fmt.Sprint(i)), Slot: slots[i]}
		start := time.Now()
		inst, err := r.Restore(ctx, runtime.Source{Template: tmpl}, spec)
		if err != nil {
			t.Fatalf("Restore %d: %v", i, err)
		}
		running := time.Since(start)
		t.Cleanup(func() { inst.Kill(ctx) })
		if err := WaitHealthy(ctx, spec.Slot, inst.Done()); err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		t.Logf("clone %d: running after %v, envd healthy after %v", i, running, time.Since(start))
		insts = append(insts, inst.(*Instance))
		specs = append(specs, spec)
	}

	t.Run("clones are independent", func(t *testing.T) {
		for i := range insts {
			if code, body := guestDo(t, slots[i], "GET", "/file?path=hello", nil); code != 200 || body != "from the template\n" {
				t.Errorf("clone %d: template file = %d %q", i, code, body)
			}
		}
		if code, _ := guestDo(t, slots[0], "PUT", "/file?path=mine", []byte("clone0")); code != 200 {
			t.Fatalf("write in clone 0: %d", code)
		}
		for i, want := range []int{200, 404, 404} {
			if got, _ := guestDo(t, slots[i], "GET", "/file?path=mine", nil); got != want {
				t.Errorf("clone %d: GET /mine = %d, want %d", i, got, want)
			}
		}
		time.Sleep(time.Second) // let the clones settle to idle
		for i, inst := range insts {
			t.Logf("clone %d: PSS %d MiB", i, pssKiB(inst.PID())/1024)
		}
	})

	// Issue 18: each QEMU runs as its slot's own unprivileged uid, with
	// no capabilities, in a cgroup with a pids limit. Before, euid 0.
	t.Run("unprivileged", func(t *testing.T) {
		for i, inst := range insts {
			checkUnprivileged(t, r, inst, slots[i])
			pidsMax := cgroupDirs("cocoon-vmmtest", specs[i].ID)[0]
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				pidsMax = filepath.Join(cgroupRoot, "pids", "cocoon-vmmtest", specs[i].ID)
			}
			b, err := os.ReadFile(filepath.Join(pidsMax, "pids.max"))
			if got, want := strings.TrimSpace(string(b)), strconv.Itoa(DefaultPids); err != nil || got != want {
				t.Errorf("clone %d: pids.max = %q (%v), want %s", i, got, err, want)
			}
			major, minor, err := runtime.BlockDevice(specs[i].Dir)
			blkio := filepath.Join(cgroupRoot, "blkio", "cocoon-vmmtest", specs[i].ID, "blkio.throttle.write_bps_device")
			if b, ferr := os.ReadFile(blkio); err == nil && ferr == nil {
				if want := fmt.Sprintf("%d:%d %d", major, minor, runtime.DefaultIOLimit.WriteBps); !strings.Contains(string(b), want) {
					t.Errorf("clone %d: %s = %q, want %q", i, blkio, b, want)
				}
			}
		}
	})

	t.Run("kill", func(t *testing.T) {
		inst := insts[2]
		cgs := cgroupDirs("cocoon-vmmtest", specs[2].ID)
		for _, d := range cgs {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil || !slices.Contains(strings.Fields(string(b)), strconv.Itoa(inst.PID())) {
				t.Errorf("qemu %d not in cgroup %s: %q, %v", inst.PID(), d, b, err)
			}
		}
		if err := inst.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		if !gone(inst.PID()) {
			t.Errorf("qemu %d still exists", inst.PID())
		}
		if _, err := os.Stat(specs[2].Dir); !os.IsNotExist(err) {
			t.Errorf("sandbox dir: %v, want not exist", err)
		}
		for _, d := range cgs {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("cgroup %s: %v, want removed", d, err)
			}
		}
		select {
		case <-inst.Done():
		default:
			t.Error("Done not closed")
		}
		if err := inst.Kill(ctx); err != nil {
			t.Errorf("second Kill: %v", err)
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		if code, body := guestDo(t, slots[0], "POST", "/dirty?mb=100", nil); code != 200 {
			t.Fatalf("dirty: %d %s", code, body)
		}
		pauseDir := filepath.Join(t.TempDir(), "paused")
		start := time.Now()
		if err := insts[0].Pause(ctx, pauseDir); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		pause := time.Since(start)
		if !gone(insts[0].PID()) {
			t.Error("paused qemu still exists")
		}
		if _, err := os.Stat(specs[0].Dir); !os.IsNotExist(err) {
			t.Errorf("sandbox dir after pause: %v", err)
		}
		st, _ := os.Stat(filepath.Join(pauseDir, "state"))
		spec := runtime.Spec{ID: "resumed", Dir: filepath.Join(sandboxes, "resumed"), Slot: slots[2]}
		start = time.Now()
		inst, err := r.Restore(ctx, runtime.Source{Template: tmpl, Paused: pauseDir}, spec)
		if err != nil {
			t.Fatalf("resume: %v", err)
		}
		defer inst.Kill(ctx)
		running := time.Since(start)
		if err := WaitHealthy(ctx, spec.Slot, inst.Done()); err != nil {
			t.Fatal(err)
		}
		t.Logf("pause (100 MiB dirtied): %v, state %d MiB; resume: running %v, envd %v",
			pause, st.Size()>>20, running, time.Since(start))
		if pause > 10*time.Second || running > 10*time.Second {
			t.Errorf("pause %v / resume %v: far above the 2 s target", pause, running)
		}
		checkUnprivileged(t, r, inst.(*Instance), spec.Slot)
		if code, body := guestDo(t, spec.Slot, "GET", "/dirty", nil); code != 200 || body != "ok 100" {
			t.Errorf("memory after resume: %d %q", code, body)
		}
		if code, body := guestDo(t, spec.Slot, "GET", "/file?path=mine", nil); code != 200 || body != "clone0" {
			t.Errorf("disk after resume: %d %q", code, body)
		}
	})

	t.Run("adopt", func(t *testing.T) {
		old := insts[1]
		old.qmp.Close() // the orchestrator "crashed"
		inst, err := r.Adopt(ctx, specs[1])
		if err != nil {
			t.Fatalf("Adopt: %v", err)
		}
		if inst.PID() != old.PID() {
			t.Errorf("adopted pid %d, want %d", inst.PID(), old.PID())
		}
		if code, _ := guestDo(t, slots[1], "GET", "/health", nil); code != 204 {
			t.Errorf("health after adopt: %d", code)
		}
		if err := inst.Kill(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-inst.Done():
		case <-time.After(5 * time.Second):
			t.Error("adopted Done not closed after Kill")
		}
		if !gone(old.PID()) {
			t.Error("adopted qemu still exists")
		}
		if _, err := r.Adopt(ctx, specs[1]); err == nil {
			t.Error("Adopt of a killed sandbox succeeded")
		}
	})

	t.Run("adopt refuses a foreign pid", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, pidName), []byte(strconv.Itoa(os.Getpid())), 0o644)
		writeMeta(filepath.Join(dir, metaName), machine{})
		if _, err := r.Adopt(ctx, runtime.Spec{ID: "x", Dir: dir}); err == nil || !strings.Contains(err.Error(), "not qemu") {
			t.Errorf("Adopt of the test process: %v", err)
		}
	})
}

// checkUnprivileged checks that inst's QEMU runs as slot's uid (not
// root) with no capabilities.
func checkUnprivileged(t *testing.T, r *Runtime, inst *Instance, slot *network.Slot) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", inst.PID()))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string][]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.Fields(v)
		}
	}
	want := strconv.Itoa(int(r.uid(slot)))
	if uid := fields["Uid"]; len(uid) < 2 || uid[1] == "0" || uid[1] != want {
		t.Errorf("qemu %d: Uid %v, want euid %s (not 0)", inst.PID(), uid, want)
	}
	if gid := fields["Gid"]; len(gid) < 2 || gid[1] != want {
		t.Errorf("qemu %d: Gid %v, want %s", inst.PID(), gid, want)
	}
	if eff := fields["CapEff"]; len(eff) != 1 || strings.Trim(eff[0], "0") != "" {
		t.Errorf("qemu %d: CapEff %v, want none", inst.PID(), eff)
	}
}

func TestBrokenImage(t *testing.T) {
	needQEMU(t)
	r := newRuntime(t)
	tmpl := testTemplate(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := r.BuildSnapshot(ctx, tmpl, nil, "")
	if err == nil {
		t.Fatal("BuildSnapshot of an empty rootfs succeeded")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"console tail", "guestinit: fatal"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(tmpl.Dir, "qemu")); !os.IsNotExist(err) {
		t.Errorf("snapshot dir after failure: %v", err)
	}
}

// benchSnapshot builds a template snapshot for benchmarks.
func benchSnapshot(b *testing.B, r *Runtime, slot *network.Slot) *runtime.Template {
	tmpl := testTemplate(b, false)
	if err := r.BuildSnapshot(context.Background(), tmpl, slot, ""); err != nil {
		b.Fatal(err)
	}
	return tmpl
}

func reportPercentiles(b *testing.B, name string, ds []time.Duration) {
	slices.Sort(ds)
	p := func(q float64) float64 {
		return float64(ds[int(q*float64(len(ds)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.5), name+"-p50-ms")
	b.ReportMetric(p(0.99), name+"-p99-ms")
}

// BenchmarkRestore: create from the template snapshot until envd answers.
func BenchmarkRestore(b *testing.B) {
	needQEMU(b)
	ctx := context.Background()
	r := newRuntime(b)
	slot := testSlot(b, 10)
	tmpl := benchSnapshot(b, r, slot)
	dir := b.TempDir()
	var running, healthy []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		spec := runtime.Spec{ID: fmt.Sprintf("bench%d", i), Dir: filepath.Join(dir, fmt.Sprint(i)), Slot: slot}
		start := time.Now()
		inst, err := r.Restore(ctx, runtime.Source{Template: tmpl}, spec)
		if err != nil {
			b.Fatal(err)
		}
		running = append(running, time.Since(start))
		if err := WaitHealthy(ctx, slot, inst.Done()); err != nil {
			b.Fatal(err)
		}
		healthy = append(healthy, time.Since(start))
		b.StopTimer()
		if i == 0 {
			b.ReportMetric(float64(pssKiB(inst.PID()))/1024, "pss-MiB")
		}
		inst.Kill(ctx)
		b.StartTimer()
	}
	reportPercentiles(b, "running", running)
	reportPercentiles(b, "envd", healthy)
}

// BenchmarkColdBoot: boot the same guest from scratch until envd answers.
func BenchmarkColdBoot(b *testing.B) {
	needQEMU(b)
	ctx := context.Background()
	r := newRuntime(b)
	slot := testSlot(b, 11)
	tmpl := testTemplate(b, false)
	dir := b.TempDir()
	var healthy []time.Duration
	for i := 0; b.Loop(); i++ {
		spec := runtime.Spec{ID: fmt.Sprintf("cold%d", i), Dir: filepath.Join(dir, fmt.Sprint(i)), Slot: slot}
		start := time.Now()
		inst, err := r.ColdBoot(ctx, tmpl, spec)
		if err != nil {
			b.Fatal(err)
		}
		if err := WaitHealthy(ctx, slot, inst.Done()); err != nil {
			b.Fatal(withTail(err, spec.Dir))
		}
		healthy = append(healthy, time.Since(start))
		b.StopTimer()
		if i == 0 {
			b.ReportMetric(float64(pssKiB(inst.PID()))/1024, "pss-MiB")
		}
		inst.Kill(ctx)
		b.StartTimer()
	}
	reportPercentiles(b, "envd", healthy)
}

func TestConsoleTail(t *testing.T) {
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "boot line %d\n", i)
	}
	b.WriteString("init: fatal: no disk\nKernel panic - not syncing: Attempted to kill init!\n")
	for i := range 50 {
		fmt.Fprintf(&b, "  stack %d\n", i)
	}
	path := filepath.Join(t.TempDir(), "console.log")
	os.WriteFile(path, []byte(b.String()), 0o644)
	for _, tc := range []struct {
		name string
		got  string
		want []string
	}{
		{"TailLog", TailLog(path, 2), []string{"  stack 48", "  stack 49"}},
		{"consoleTail", consoleTail(path), []string{"init: fatal: no disk", "Kernel panic"}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(tc.got, w) {
				t.Errorf("%s = %q, lacks %q", tc.name, tc.got, w)
			}
		}
	}
	if got := TailLog(filepath.Join(t.TempDir(), "missing"), 5); got != "" {
		t.Errorf("TailLog(missing) = %q, want empty", got)
	}
}
