// Package vmm is the QEMU microVM runtime: one `qemu-system-x86_64 -M
// microvm` process per sandbox, with virtio-mmio disk and network, the
// serial console in a log file and a QMP socket for control.
//
// A template snapshot is a guest booted once with its RAM in a shared file
// (memory-backend-file, share=on), saved with x-ignore-shared so that the
// state file holds only device state. A sandbox is created by mapping that
// file privately (share=off: copy-on-write, untouched pages shared in the
// page cache by all clones of a template) and loading the device state;
// its disk is a qcow2 overlay on the template VM's own disk layer, the
// disk exactly as the saved memory knows it.
//
// Everything about a sandbox lives in its directory (Spec.Dir): console.log,
// qemu.log (QEMU's stderr), qmp.sock, qemu.pid, vmm.json (the machine) and
// disk.qcow2. QEMU runs in its own session and outlives the orchestrator;
// Adopt reattaches from the directory.
//
// QEMU is started inside the slot's network namespace by forking from an OS
// thread that has joined it with setns (no `ip netns exec`). It runs under
// its seccomp filter (-sandbox on, spawn=deny, ...), so migrations go through
// file descriptors passed over QMP (fd: URIs), never exec:.
//
// Resource limits: each QEMU is put into a cgroup <parent>/<sandbox id>
// with a CPU quota of its vCPUs, a memory limit of its RAM plus an
// overhead, a pids limit and an I/O limit on the disk of its directory; on
// cgroup v1 and hybrid hosts in the cpu, memory, pids and blkio
// hierarchies, on v2 in the unified one. Where that fails
// (no permission, controller missing) the driver logs a warning and runs
// the sandbox without limits.
//
// Privileges: QEMU starts as root (it opens the TAP device, the memory
// file, the disk and the console), then drops to an unprivileged uid of
// its own with -runas before the guest runs: uid UIDBase + the slot's
// index, so no two sandboxes share one (a QEMU could otherwise signal or
// ptrace another). It keeps no capabilities and runs under its seccomp
// filter with no_new_privs.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/vmm/qmp"
)

// Name is the runtime's name; it names snapshot directories.
const Name = "qemu"

const envdPort = guest.EnvdPort

// Files of a snapshot directory (template: Template.Dir/qemu; pause: the
// directory given to Pause).
const (
	memoryName = "memory"      // template RAM (memory-backend-file)
	stateName  = "state"       // migration stream
	cloneName  = "clone.qcow2" // empty overlay on disk.qcow2, copied per clone
)

// Options configure a Runtime. The zero value works: it probes the
// accelerator, and limits sandboxes with cgroups under "cocoon".
type Options struct {
	// DataDir holds the cached KVM probe answer.
	DataDir string
	// Accel forces an accelerator; "" probes (see ProbeAccel).
	Accel Accel
	// QEMU and QEMUImg are the binaries (default: from PATH).
	QEMU, QEMUImg string
	// CgroupParent is the cgroup under which each sandbox gets its own;
	// "" means "cocoon", "-" disables cgroups.
	CgroupParent string
	// MemoryOverheadMB is added to a guest's RAM for its memory limit
	// (QEMU itself, TCG's translation cache). Default 256.
	MemoryOverheadMB int
	// NoSandbox disables QEMU's seccomp filter.
	NoSandbox bool
	// AsRoot keeps QEMU running as root (no -runas).
	AsRoot bool
	// UIDBase is the host uid (and gid) of the QEMU in slot 0; the QEMU of
	// slot i runs as UIDBase+i. 0 means DefaultUIDBase.
	UIDBase uint32
	// Pids is pids.max of each QEMU's cgroup (its threads: vCPUs, I/O
	// workers). 0 means DefaultPids.
	Pids int
	// IO limits each QEMU's block I/O on the disk of its directory; the
	// zero value means runtime.DefaultIOLimit.
	IO runtime.IOLimit
	// BootTimeout bounds a template boot until envd answers. Default 3 min.
	BootTimeout time.Duration
	// PoolNoRestore makes Prespawn stop at a QEMU waiting for its state
	// (-incoming defer); by default it also loads the template's state and
	// waits for envd, so that a claim only renames and limits it.
	PoolNoRestore bool
	// KernelArgs are appended to the guest kernel command line.
	KernelArgs []string
	Logger     *slog.Logger
}

// DefaultUIDBase is the default Options.UIDBase: host uids 1879113728
// (0x70010000) on, right after the gVisor sandboxes' id range
// (gvisor.DefaultHostID, 65536 ids), with no passwd entry.
const DefaultUIDBase = 0x70010000

// DefaultPids is the default pids.max of a QEMU's cgroup. A TCG QEMU with
// one vCPU idles with ≈ 6 threads; QEMU's block thread pool adds up to 64.
const DefaultPids = 256

// uid is the host uid the QEMU of slot runs as; 0 (root) with AsRoot.
func (r *Runtime) uid(slot *network.Slot) uint32 {
	if r.opts.AsRoot {
		return 0
	}
	if slot == nil {
		return r.opts.UIDBase
	}
	return r.opts.UIDBase + uint32(slot.Index)
}

// Runtime runs sandboxes as QEMU microVMs. It implements runtime.Runtime.
type Runtime struct {
	opts       Options
	qemu, qimg string
	log        *slog.Logger
}

var _ runtime.Runtime = (*Runtime)(nil)
var _ runtime.Instance = (*Instance)(nil)

// New returns a QEMU runtime.
func New(opts Options) (*Runtime, error) {
	if opts.QEMU == "" {
		opts.QEMU = "qemu-system-x86_64"
	}
	if opts.QEMUImg == "" {
		opts.QEMUImg = "qemu-img"
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = "cocoon"
	}
	if opts.UIDBase == 0 {
		opts.UIDBase = DefaultUIDBase
	}
	if opts.Pids == 0 {
		opts.Pids = DefaultPids
	}
	if opts.IO == (runtime.IOLimit{}) {
		opts.IO = runtime.DefaultIOLimit
	}
	if opts.MemoryOverheadMB == 0 {
		opts.MemoryOverheadMB = 256
	}
	if opts.BootTimeout == 0 {
		opts.BootTimeout = 3 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	qemu, err := exec.LookPath(opts.QEMU)
	if err != nil {
		return nil, fmt.Errorf("find qemu: %w", err)
	}
	qimg, err := exec.LookPath(opts.QEMUImg)
	if err != nil {
		return nil, fmt.Errorf("find qemu-img: %w", err)
	}
	return &Runtime{opts: opts, qemu: qemu, qimg: qimg, log: opts.Logger}, nil
}

// Name returns "qemu".
func (r *Runtime) Name() string { return Name }

// Accel returns the accelerator sandboxes of kernel run with: the forced
// one, or the (cached) probe's answer.
func (r *Runtime) Accel(ctx context.Context, kernel, initrd string) (Accel, error) {
	if r.opts.Accel != "" {
		return r.opts.Accel, nil
	}
	dir := r.opts.DataDir
	if dir == "" {
		dir = os.TempDir()
	}
	return probeAccel(ctx, r.qemu, dir, kernel, initrd, 15*time.Second)
}

// cmdline is the guest kernel command line: the template's contract
// (console, tsc_early_khz, root disk) plus the fixed guest network.
func (r *Runtime) cmdline() string {
	khz, err := guest.HostTSCKHz()
	if err != nil {
		r.log.Warn("vmm: no tsc_early_khz", "err", err)
	}
	n := guest.Net{Addr: netip.PrefixFrom(network.GuestIP, network.GuestPrefixLen), Gateway: network.GuestGateway}
	return guest.CmdLine(khz, append(n.Args(), r.opts.KernelArgs...)...)
}

func snapshotDir(t *runtime.Template) string { return filepath.Join(t.Dir, Name) }

// BuildSnapshot boots t with its RAM in Template.Dir/qemu/memory (shared),
// waits until envd answers /health through slot, stops the guest and saves
// its device state (state), keeping the disk layer the boot wrote
// (disk.qcow2) and an empty clone overlay on it (clone.qcow2). dir is the
// build VM's working directory (console log, sockets); it is removed
// afterwards. A guest that dies or never answers fails with its console
// tail in the error.
func (r *Runtime) BuildSnapshot(ctx context.Context, t *runtime.Template, slot *network.Slot, dir string) error {
	m, err := r.templateMachine(ctx, t)
	if err != nil {
		return err
	}
	final := snapshotDir(t)
	stage := final + ".tmp"
	if err := os.RemoveAll(stage); err != nil {
		return fmt.Errorf("clear snapshot staging: %w", err)
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return fmt.Errorf("create snapshot dir: %w", err)
	}
	defer os.RemoveAll(stage)
	if dir == "" {
		dir = filepath.Join(stage, "vm")
	}
	disk := filepath.Join(stage, "disk.qcow2")
	if err := r.qemuImgCreate(ctx, disk, t.RootfsImage, "raw"); err != nil {
		return err
	}
	inst, err := r.launch(ctx, launchSpec{
		ID: "build-" + t.ID, Dir: dir, Machine: m,
		Memory: memory{Path: filepath.Join(stage, memoryName), Share: true},
		Disk:   disk, Slot: slot, Sandbox: !r.opts.NoSandbox,
	})
	if err != nil {
		return fmt.Errorf("boot template %s: %w", t.ID, err)
	}
	defer inst.Kill(context.WithoutCancel(ctx))
	bctx, cancel := context.WithTimeout(ctx, r.opts.BootTimeout)
	defer cancel()
	if err := WaitHealthy(bctx, slot, inst.done); err != nil {
		inst.kill()
		return withTail(fmt.Errorf("boot template %s: %w", t.ID, err), dir)
	}
	if t.BeforeSnapshot != nil {
		if err := t.BeforeSnapshot(ctx, &http.Client{}, "http://"+net.JoinHostPort(slot.Addr.Addr().String(), "49983")); err != nil {
			inst.kill()
			return withTail(fmt.Errorf("prepare template %s: %w", t.ID, err), dir)
		}
	}
	if err := inst.saveState(ctx, filepath.Join(stage, stateName), true); err != nil {
		inst.kill()
		return withTail(fmt.Errorf("snapshot template %s: %w", t.ID, err), dir)
	}
	if err := inst.kill(); err != nil {
		return err
	}
	if err := writeMeta(filepath.Join(stage, metaName), m); err != nil {
		return err
	}
	if err := os.RemoveAll(final); err != nil {
		return fmt.Errorf("replace snapshot: %w", err)
	}
	if err := os.Rename(stage, final); err != nil {
		return fmt.Errorf("publish snapshot: %w", err)
	}
	// Created after the rename: it records its backing file's final path.
	if err := r.qemuImgCreate(ctx, filepath.Join(final, cloneName), filepath.Join(final, "disk.qcow2"), "qcow2"); err != nil {
		return err
	}
	return nil
}

func (r *Runtime) templateMachine(ctx context.Context, t *runtime.Template) (machine, error) {
	accel, err := r.Accel(ctx, t.Kernel, t.Initrd)
	if err != nil {
		return machine{}, err
	}
	m := machine{Accel: accel, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB, Kernel: t.Kernel, Initrd: t.Initrd, Cmdline: r.cmdline()}
	if m.VCPUs <= 0 {
		m.VCPUs = 1
	}
	if m.MemoryMB <= 0 {
		m.MemoryMB = 256
	}
	return m, nil
}

// ColdBoot boots t from scratch (no snapshot) as a sandbox, with a fresh
// overlay on the root image; for comparison with Restore and for templates
// without a snapshot. It returns once QEMU runs; envd answers later.
func (r *Runtime) ColdBoot(ctx context.Context, t *runtime.Template, spec runtime.Spec) (*Instance, error) {
	m, err := r.templateMachine(ctx, t)
	if err != nil {
		return nil, err
	}
	if spec.VCPUs > 0 {
		m.VCPUs = spec.VCPUs
	}
	if spec.MemoryMB > 0 {
		m.MemoryMB = spec.MemoryMB
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	disk := filepath.Join(spec.Dir, diskName)
	if err := r.qemuImgCreate(ctx, disk, t.RootfsImage, "raw"); err != nil {
		return nil, err
	}
	return r.launch(ctx, launchSpec{ID: spec.ID, Dir: spec.Dir, Machine: m, Disk: disk, Slot: spec.Slot, Sandbox: !r.opts.NoSandbox})
}

// Restore starts a sandbox from the template's snapshot (src.Paused == "")
// or from a paused sandbox's directory, and returns once the guest runs.
// spec.VCPUs and spec.MemoryMB must be 0 or equal the snapshot's: a saved
// machine cannot change shape. The paused directory is left intact (its
// disk layer is copied), so a failed resume can be retried.
func (r *Runtime) Restore(ctx context.Context, src runtime.Source, spec runtime.Spec) (runtime.Instance, error) {
	inst, err := r.restore(ctx, src, spec)
	if err != nil {
		return nil, err
	}
	return inst, nil
}

func (r *Runtime) restore(ctx context.Context, src runtime.Source, spec runtime.Spec) (*Instance, error) {
	if src.Template == nil {
		return nil, errors.New("restore: no template")
	}
	snap := snapshotDir(src.Template)
	from := snap
	if src.Paused != "" {
		from = filepath.Join(src.Paused)
	}
	m, err := readMeta(filepath.Join(from, metaName))
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	if (spec.VCPUs != 0 && spec.VCPUs != m.VCPUs) || (spec.MemoryMB != 0 && spec.MemoryMB != m.MemoryMB) {
		return nil, fmt.Errorf("restore %s: snapshot has %d vCPUs and %d MiB, spec asks %d and %d",
			spec.ID, m.VCPUs, m.MemoryMB, spec.VCPUs, spec.MemoryMB)
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	disk := filepath.Join(spec.Dir, diskName)
	l := launchSpec{ID: spec.ID, Dir: spec.Dir, Disk: disk, Slot: spec.Slot, Incoming: true, Sandbox: !r.opts.NoSandbox}
	ignoreShared := false
	if src.Paused != "" {
		// Anonymous RAM: the stream carries every page.
		if err := copyFile(filepath.Join(from, diskName), disk); err != nil {
			return nil, fmt.Errorf("restore %s: copy disk layer: %w", spec.ID, err)
		}
	} else {
		m.Template = filepath.Join(snap, memoryName)
		l.Memory = memory{Path: m.Template, Share: false}
		ignoreShared = true
		if err := copyFile(filepath.Join(snap, cloneName), disk); err != nil {
			return nil, fmt.Errorf("restore %s: create disk layer: %w", spec.ID, err)
		}
	}
	l.Machine = m
	t0 := time.Now()
	inst, err := r.launch(ctx, l)
	if err != nil {
		os.RemoveAll(spec.Dir)
		return nil, fmt.Errorf("restore %s: %w", spec.ID, err)
	}
	if err := inst.loadState(ctx, filepath.Join(from, stateName), ignoreShared); err != nil {
		err = withTail(fmt.Errorf("restore %s: %w", spec.ID, err), spec.Dir)
		inst.Kill(context.WithoutCancel(ctx))
		return nil, err
	}
	r.log.Debug("vmm: restored", "id", spec.ID, "running", time.Since(t0))
	return inst, nil
}

// Adopt reattaches to the QEMU of a sandbox started by an earlier process:
// it reads Spec.Dir's pid file, checks that the pid is a QEMU whose console
// is in Spec.Dir (so a reused pid is not mistaken for it), follows its exit
// with a pidfd and reconnects to its QMP socket.
func (r *Runtime) Adopt(ctx context.Context, spec runtime.Spec) (runtime.Instance, error) {
	inst, err := r.adopt(ctx, spec)
	if err != nil {
		return nil, err
	}
	return inst, nil
}

func (r *Runtime) adopt(ctx context.Context, spec runtime.Spec) (*Instance, error) {
	b, err := os.ReadFile(filepath.Join(spec.Dir, pidName))
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", spec.ID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("adopt %s: bad pid file: %w", spec.ID, err)
	}
	m, err := readMeta(filepath.Join(spec.Dir, metaName))
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %w", spec.ID, err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: process %d: %w", spec.ID, pid, err)
	}
	// Checked after opening the pidfd: the pidfd pins this very process.
	if err := checkCmdline(pid, spec.Dir); err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("adopt %s: %w", spec.ID, err)
	}
	inst := newInstance(r, spec.ID, spec.Dir, pid, m)
	inst.cgroups = cgroupDirs(r.opts.CgroupParent, spec.ID)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := qmp.Dial(qctx, filepath.Join(spec.Dir, qmpName))
	if err == nil {
		var st struct {
			Status string `json:"status"`
		}
		if err = q.Execute(qctx, "query-status", nil, &st); err != nil {
			q.Close()
		}
	}
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("adopt %s: %w", spec.ID, err)
	}
	inst.qmp = q
	// Not our child: a pidfd becomes readable when the process exits.
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		close(inst.done)
	}()
	return inst, nil
}

// checkCmdline verifies that pid runs QEMU with its console in dir.
func checkCmdline(pid int, dir string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("process %d: %w", pid, err)
	}
	args := strings.Split(string(b), "\x00")
	if !strings.Contains(filepath.Base(args[0]), "qemu-system") {
		return fmt.Errorf("process %d is %q, not qemu", pid, args[0])
	}
	want := "path=" + qemuEscape(consolePath(dir))
	for _, a := range args {
		if strings.Contains(a, want) {
			return nil
		}
	}
	// A prespawned QEMU names its files relative to its working
	// directory, which was renamed to the sandbox's when it was claimed.
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && filepath.Clean(cwd) == filepath.Clean(dir) {
		for _, a := range args {
			if strings.Contains(a, "path="+consoleName) {
				return nil
			}
		}
	}
	return fmt.Errorf("process %d is a qemu of another sandbox", pid)
}

func (r *Runtime) qemuImgCreate(ctx context.Context, path, backing, format string) error {
	out, err := exec.CommandContext(ctx, r.qimg, "create", "-q", "-f", "qcow2",
		"-b", backing, "-F", format, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// WaitHealthy polls envd's /health in the guest until it answers 2xx, the
// instance's process exits (done), or ctx ends.
func WaitHealthy(ctx context.Context, slot *network.Slot, done <-chan struct{}) error {
	c := GuestClient(slot)
	c.Timeout = time.Second
	return runtime.WaitHealth(ctx, c, EnvdURL(), 10*time.Millisecond, done)
}
