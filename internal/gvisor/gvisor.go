// Package gvisor runs sandboxes under gVisor's runsc: one OCI bundle per
// sandbox over the template's shared root tree with a private overlay
// backed by a file on the host's disk (see DefaultOverlay), in the slot's
// network namespace; templates are saved and sandboxes
// created and resumed with runsc checkpoint/restore.
//
// All runsc state lives under Config.StateDir (runsc --root), and all of a
// sandbox's files under its Spec.Dir, so that an orchestrator can reconcile
// after a crash with ListContainers and Cleanup.
//
// The long-lived processes of a sandbox, its sentry and its gofer, run as
// host uid DefaultHostID, root of a user namespace of their own, over a
// read-only id-mapped view of the template tree (idmap.go); only the
// short-lived runsc commands run as root. Each sandbox's cgroup limits its
// CPU, memory, pids and block I/O.
package gvisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// Name is the runtime's name; snapshots live in Template.Dir/gvisor/.
const Name = "gvisor"

// EnvdPort is where envd listens inside every sandbox.
const EnvdPort = 49983

// envdURL is the base URL of the envd of the sandbox at addr.
func envdURL(addr netip.Addr) string {
	return "http://" + netip.AddrPortFrom(addr, EnvdPort).String()
}

// DefaultOverlay keeps a sandbox's writes in a file on the host's disk: an
// overlay whose upper layer (a tmpfs in the sentry) is backed by an
// unlinked file runsc creates in the sandbox's directory, sized by the
// template's DiskMB (df inside shows it; a write past it fails with ENOSPC
// for the writer alone). It is Cocoon's name for runsc's
// --overlay2=root:dir=<Spec.Dir>,size=<DiskMB>m. runsc checkpoint saves the
// file's pages with the rest of the memory, so a paused sandbox's files
// come back on restore (the size too: it is part of the checkpoint), and
// the file is gone once the sandbox exits. "root:memory" (runsc's own
// value) kept writes in sandbox memory, charged to its memory limit: 700
// MiB written to a 512 MiB sandbox killed it.
const DefaultOverlay = "root:file"

// overlayFlag is runsc's --overlay2 for a sandbox whose files are in dir,
// of diskMB MiB (0: no size, e.g. a restore, whose size is in the image).
func (d *Driver) overlayFlag(dir string, diskMB int) string {
	o := d.cfg.Overlay
	if o == DefaultOverlay {
		o = "root:dir=" + dir
	}
	if diskMB > 0 && o != "none" && !strings.Contains(o, ",size=") {
		o += ",size=" + strconv.Itoa(diskMB) + "m"
	}
	return o
}

// Config configures a Driver.
type Config struct {
	// Runsc is the path of the runsc binary (see Install).
	Runsc string
	// StateDir is runsc's --root: its record of the containers of this node.
	StateDir string
	// Platform is runsc's --platform; "" detects it (see DetectPlatform).
	Platform string
	// Overlay is runsc's --overlay2; "" means DefaultOverlay.
	Overlay string
	// CgroupParent is the cgroup under which each sandbox gets
	// <CgroupParent>/<id> for its CPU and memory limits; "" means
	// "/cocoon-gvisor". "-" disables cgroups (runsc --ignore-cgroups).
	CgroupParent string
	// ReapplyAddr puts the slot's address back on its veth before a start
	// or restore: gVisor moves it into its own stack and deletes it from the
	// namespace. nil uses the driver's own netlink code.
	ReapplyAddr func(ctx context.Context, slot *network.Slot) error
	// DebugLog makes runsc write debug logs to <Spec.Dir>/debug/.
	DebugLog bool
	// AsRoot runs each sandbox's gofer and sentry as host root, as runsc
	// does by default. Otherwise (the default) they run in a user
	// namespace whose root is host uid HostID, over an id-mapped,
	// read-only view of the template tree (see idmap.go); that needs a
	// filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs; Linux ≥ 6.3
	// for tmpfs). Only the short-lived runsc commands run as root. As
	// root, trees unpacked onto shifted ids (guest.TreeHostID: template
	// builds, images) are still served through an id-mapped view.
	AsRoot bool
	// HostID is the first host uid and gid of the sandboxes' id range
	// (IDRange ids); 0 means DefaultHostID.
	HostID uint32
	// Pids is pids.max of each sandbox's cgroup: the sentry's threads and,
	// with systrap, one stub process per address space inside, so a fork
	// bomb in the sandbox stops here. 0 means DefaultPids, -1 none.
	Pids int64
	// IO limits each sandbox's block I/O on the disk of its directory
	// (its writable layer, and the template tree's reads by its gofer);
	// the zero value means runtime.DefaultIOLimit.
	IO runtime.IOLimit
}

// DefaultPids is each sandbox's default pids.max. An idle sandbox uses
// ≈ 50 host tasks on 2 cores (sentry and gofer threads, stubs), and each
// process inside ≈ 3 more (TestForkBombHitsPidsLimit: 27 processes in
// 78 tasks), so this allows ≈ 650 processes.
const DefaultPids = 2048

// Driver is the gVisor implementation of runtime.Runtime.
type Driver struct {
	cfg Config
	// envd is the client for the driver's own envd requests (template
	// preparation, the pool's warm-up). No keep-alives: a connection left
	// open would be in the checkpoint, or in the slot's next sandbox.
	envd *http.Client
	// ids is the id-mapped view of template trees (AsRoot: of those
	// unpacked onto shifted ids only); nil serves trees as they are.
	ids *idmap
}

var _ runtime.Runtime = (*Driver)(nil)

// New checks cfg, detects the platform if needed and returns a driver.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Runsc == "" || cfg.StateDir == "" {
		return nil, errors.New("gvisor: Runsc and StateDir are required")
	}
	if _, err := os.Stat(cfg.Runsc); err != nil {
		return nil, fmt.Errorf("gvisor: runsc: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("gvisor: create state dir: %w", err)
	}
	if cfg.Platform == "" {
		p, err := DetectPlatform(ctx, cfg.Runsc)
		if err != nil {
			return nil, fmt.Errorf("gvisor: %w", err)
		}
		cfg.Platform = p
	}
	if cfg.Overlay == "" {
		cfg.Overlay = DefaultOverlay
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "/cocoon-gvisor"
	}
	if cfg.ReapplyAddr == nil {
		cfg.ReapplyAddr = ReapplyAddr
	}
	if cfg.HostID == 0 {
		cfg.HostID = DefaultHostID
	}
	if cfg.Pids == 0 {
		cfg.Pids = DefaultPids
	}
	if cfg.IO == (runtime.IOLimit{}) {
		cfg.IO = runtime.DefaultIOLimit
	}
	d := &Driver{cfg: cfg, envd: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}}
	// As root too: a tree unpacked onto shifted ids needs a view that maps
	// them back (guest.TreeHostID).
	d.ids = newIDMap(d.hostID(), cfg.StateDir)
	d.sweepViews(ctx)
	return d, nil
}

// sweepViews unmounts the template views of containers runsc no longer
// knows: left by a node that died between mounting one and starting its
// container, or whose containers were removed behind its back.
func (d *Driver) sweepViews(ctx context.Context) {
	ents, err := os.ReadDir(d.ids.dir)
	if err != nil || len(ents) == 0 {
		return
	}
	ids, err := d.ListContainers(ctx)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !slices.Contains(ids, e.Name()) {
			d.ids.unmount(e.Name())
		}
	}
}

// hostID is the host uid of the sandboxes' root; 0 when they run as root.
func (d *Driver) hostID() uint32 {
	if d.cfg.AsRoot {
		return 0
	}
	return d.cfg.HostID
}

// bundle writes the OCI bundle of container id into dir: over an id-mapped
// view of rootfs unless the driver runs sandboxes as root.
func (d *Driver) bundle(id, dir, hostname, rootfs string, slot *network.Slot, vcpus, memoryMB int) error {
	if d.ids != nil {
		view, err := d.ids.mount(d.cfg.Runsc, id, rootfs)
		if err != nil {
			return err
		}
		rootfs = view
	}
	p := bundleParams{
		hostname: hostname, rootfs: rootfs, netns: slot.NetnsPath,
		cgroup: d.cgroupPath(id), vcpus: vcpus, memoryMB: memoryMB,
		hostID: d.hostID(),
	}
	if d.cfg.CgroupParent != "-" {
		p.pids = max(d.cfg.Pids, 0)
		if major, minor, err := runtime.BlockDevice(dir); err == nil {
			p.io = blockIO(int64(major), int64(minor), d.cfg.IO)
		}
	}
	return writeBundle(dir, p)
}

// Name implements runtime.Runtime.
func (d *Driver) Name() string { return Name }

// Platform is the runsc platform in use.
func (d *Driver) Platform() string { return d.cfg.Platform }

// globalArgs are the flags given to every runsc invocation. A restore must
// use the same platform and overlay medium as the checkpoint it loads;
// overlay is the --overlay2 of the sandbox a run or restore starts (see
// start), and commands that start none take d.overlayFlag(StateDir, 0).
func (d *Driver) globalArgs(debugDir, overlay string) []string {
	args := []string{
		"--root", d.cfg.StateDir,
		"--platform", d.cfg.Platform,
		"--network", "sandbox",
		"--overlay2", overlay,
		// Honour setuid/setgid bits (sudo, su): runsc ignores them by
		// default. The sandbox is the isolation boundary; inside it the
		// base image promises `user` passwordless sudo. The setting is
		// part of a checkpoint's kernel state, so templates snapshotted
		// before it was on keep ignoring the bits until rebuilt.
		"--allow-suid",
	}
	if d.cfg.CgroupParent == "-" {
		args = append(args, "--ignore-cgroups")
	}
	if debugDir != "" {
		args = append(args, "--debug", "--debug-log", debugDir+"/")
	}
	return args
}

// commandArgs are the global flags of a runsc command that starts no
// sandbox.
func (d *Driver) commandArgs() []string {
	return d.globalArgs("", d.overlayFlag(d.cfg.StateDir, 0))
}

// runsc runs a short runsc command and returns its combined output.
func (d *Driver) runsc(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, d.cfg.Runsc, append(d.commandArgs(), args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("runsc %s: %w: %s", args[0], err, lastLines(out, 5))
	}
	return out, nil
}

// validID is what runsc accepts as a container ID.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

func (d *Driver) cgroupPath(id string) string {
	if d.cfg.CgroupParent == "-" {
		return ""
	}
	return d.cfg.CgroupParent + "/" + id
}

// snapshotDir is where a template's checkpoint lives.
func snapshotDir(t *runtime.Template) string { return filepath.Join(t.Dir, Name) }

// checkpointDir is the runsc image directory inside a snapshot or pause dir.
func checkpointDir(dir string) string { return filepath.Join(dir, "checkpoint") }

// start launches a container from the bundle in dir, either fresh (image ==
// "") or from a checkpoint image, detached, with its stdout and stderr (and
// runsc's own errors) appended to dir/console.log.
//
// The sandbox's writable layer is a file in dir of diskMB MiB (see
// DefaultOverlay); a restore takes its size from the image.
func (d *Driver) start(ctx context.Context, id, dir, image string, slot *network.Slot, diskMB int) error {
	if err := d.cfg.ReapplyAddr(ctx, slot); err != nil {
		return fmt.Errorf("reapply slot address: %w", err)
	}
	logPath := filepath.Join(dir, consoleLog)
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open console log: %w", err)
	}
	defer log.Close()
	debugDir := ""
	if d.cfg.DebugLog {
		debugDir = filepath.Join(dir, "debug")
	}
	args := d.globalArgs(debugDir, d.overlayFlag(dir, diskMB))
	verb := len(args)
	pidFile := filepath.Join(dir, pidFileName)
	os.Remove(pidFile)
	if image == "" {
		args = append(args, "run", "--detach", "--pid-file", pidFile, "--bundle", dir, id)
	} else {
		args = append(args, "restore", "--detach", "--pid-file", pidFile, "--image-path", image, "--bundle", dir, id)
	}
	// The container inherits these files as its stdio, so they must be
	// files: a pipe would keep Wait blocked for the sandbox's lifetime.
	cmd := exec.CommandContext(ctx, d.cfg.Runsc, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		tail, _ := os.ReadFile(logPath)
		return fmt.Errorf("runsc %s: %w: %s", args[verb], err, lastLines(tail, 5))
	}
	return nil
}

const (
	consoleLog  = "console.log"
	pidFileName = "sandbox.pid"
)

// attachStarted builds an instance for a container just started, from the
// pid file runsc wrote: cheaper than another runsc invocation.
func (d *Driver) attachStarted(id, dir string) (*instance, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFileName))
	if err != nil {
		return nil, fmt.Errorf("read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("bad pid file %q", b)
	}
	return d.attachPID(id, dir, pid)
}

func (d *Driver) attachPID(id, dir string, pid int) (*instance, error) {
	pidfd, done, err := watchPID(pid)
	if err != nil {
		return nil, err
	}
	return &instance{d: d, id: id, dir: dir, pid: pid, pidfd: pidfd, done: done}, nil
}

// BuildSnapshot implements runtime.Runtime. dir is the build sandbox's
// working directory (bundle, console log); the checkpoint is written to
// Template.Dir/gvisor/checkpoint, replacing any earlier one.
func (d *Driver) BuildSnapshot(ctx context.Context, t *runtime.Template, slot *network.Slot, dir string) error {
	if t.RootfsDir == "" {
		return errors.New("gvisor: template has no RootfsDir")
	}
	id := "build-" + t.ID
	if !validID.MatchString(id) {
		return fmt.Errorf("gvisor: invalid template id %q", t.ID)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("gvisor: create build dir: %w", err)
	}
	// A leftover of an interrupted build would make `runsc run` fail.
	d.remove(ctx, id)
	err := d.bundle(id, dir, templateHostname, t.RootfsDir, slot, t.VCPUs, t.MemoryMB)
	if err != nil {
		d.remove(ctx, id)
		return fmt.Errorf("gvisor: %w", err)
	}
	if err := d.start(ctx, id, dir, "", slot, t.DiskMB); err != nil {
		return fmt.Errorf("gvisor: start template: %w", err)
	}
	defer d.remove(context.WithoutCancel(ctx), id)

	if err := WaitEnvd(ctx, slot.Addr.Addr()); err != nil {
		tail, _ := os.ReadFile(filepath.Join(dir, consoleLog))
		return fmt.Errorf("gvisor: template envd: %w: %s", err, lastLines(tail, 5))
	}

	if t.BeforeSnapshot != nil {
		if err := t.BeforeSnapshot(ctx, d.envd, envdURL(slot.Addr.Addr())); err != nil {
			return fmt.Errorf("gvisor: prepare template: %w", err)
		}
	}
	// A checkpoint that holds a TCP connection to the host (a build step's
	// stream, a keep-alive) restores into a sandbox whose envd never
	// answers: runsc cannot bring the connection back, and the netstack
	// waits on it. Reset them all first, as a pause does.
	if err := network.DropConnections(slot.Addr.Addr()); err != nil {
		return fmt.Errorf("gvisor: drop connections before the checkpoint: %w", err)
	}

	snap := snapshotDir(t)
	tmp := snap + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("gvisor: create snapshot dir: %w", err)
	}
	if _, err := d.runsc(ctx, "checkpoint", "--image-path", checkpointDir(tmp), id); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("gvisor: checkpoint template: %w", err)
	}
	if err := writeMeta(tmp, d); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("gvisor: %w", err)
	}
	if err := os.RemoveAll(snap); err != nil {
		return fmt.Errorf("gvisor: replace snapshot: %w", err)
	}
	if err := os.Rename(tmp, snap); err != nil {
		return fmt.Errorf("gvisor: install snapshot: %w", err)
	}
	return nil
}

// templateHostname is the hostname of every sandbox restored from a
// template: runsc restores the UTS namespace from the checkpoint and ignores
// the bundle's hostname, so envd's /init sets the sandbox's own.
const templateHostname = "sandbox"

// snapshotMeta records what a checkpoint needs at restore: runsc restores
// only with the platform and overlay it was saved with.
type snapshotMeta struct {
	Version  string `json:"runscVersion"`
	Platform string `json:"platform"`
	Overlay  string `json:"overlay"`
	// Process is bundleFingerprint at checkpoint time: runsc refuses a
	// restore whose process (capabilities, args, env) differs.
	Process string `json:"process"`
}

const metaFile = "gvisor.json"

func writeMeta(dir string, d *Driver) error {
	b, _ := json.Marshal(snapshotMeta{Version: Version, Platform: d.cfg.Platform, Overlay: d.cfg.Overlay, Process: bundleFingerprint(d.hostID())})
	if err := os.WriteFile(filepath.Join(dir, metaFile), b, 0o644); err != nil {
		return fmt.Errorf("write snapshot metadata: %w", err)
	}
	return nil
}

func (d *Driver) checkMeta(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return fmt.Errorf("read snapshot metadata: %w", err)
	}
	var m snapshotMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("decode snapshot metadata: %w", err)
	}
	if m.Platform != d.cfg.Platform || m.Overlay != d.cfg.Overlay {
		return fmt.Errorf("snapshot saved with platform %s overlay %s, driver uses %s %s",
			m.Platform, m.Overlay, d.cfg.Platform, d.cfg.Overlay)
	}
	// Snapshots saved before the fingerprint was recorded are left to
	// runsc's own check at restore.
	if m.Process != "" && m.Process != bundleFingerprint(d.hostID()) {
		return errors.New("snapshot saved with another sandbox process spec (capabilities, args or env); rebuild the template's snapshot")
	}
	return nil
}

// SnapshotCurrent implements runtime.SnapshotChecker: a template snapshot
// saved by another platform, overlay or process spec cannot be restored.
func (d *Driver) SnapshotCurrent(t *runtime.Template) error {
	if err := d.checkMeta(snapshotDir(t)); err != nil {
		return fmt.Errorf("gvisor: %w", err)
	}
	return nil
}

// Restore implements runtime.Runtime: it restores the template's snapshot,
// or a paused sandbox, into spec.Slot and returns once runsc has restored it.
func (d *Driver) Restore(ctx context.Context, src runtime.Source, spec runtime.Spec) (runtime.Instance, error) {
	inst, err := d.restore(ctx, src, spec)
	if err != nil {
		return nil, err
	}
	return inst, nil
}

func (d *Driver) restore(ctx context.Context, src runtime.Source, spec runtime.Spec) (*instance, error) {
	if src.Template == nil || src.Template.RootfsDir == "" {
		return nil, errors.New("gvisor: restore needs a template with RootfsDir")
	}
	if !validID.MatchString(spec.ID) {
		return nil, fmt.Errorf("gvisor: invalid sandbox id %q", spec.ID)
	}
	from := snapshotDir(src.Template)
	if src.Paused != "" {
		from = src.Paused
	}
	if err := d.checkMeta(from); err != nil {
		return nil, fmt.Errorf("gvisor: %w", err)
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("gvisor: create sandbox dir: %w", err)
	}
	err := d.bundle(spec.ID, spec.Dir, spec.ID, src.Template.RootfsDir, spec.Slot, spec.VCPUs, spec.MemoryMB)
	if err == nil {
		err = d.start(ctx, spec.ID, spec.Dir, checkpointDir(from), spec.Slot, 0)
	}
	var inst *instance
	if err == nil {
		inst, err = d.attachStarted(spec.ID, spec.Dir)
	}
	if err != nil {
		cleanCtx := context.WithoutCancel(ctx)
		d.remove(cleanCtx, spec.ID)
		os.RemoveAll(spec.Dir)
		return nil, fmt.Errorf("gvisor: restore %s: %w", spec.ID, err)
	}
	return inst, nil
}

// Adopt implements runtime.Runtime: it re-attaches to the container named
// spec.ID in the state dir, which must still be running.
func (d *Driver) Adopt(ctx context.Context, spec runtime.Spec) (runtime.Instance, error) {
	if !validID.MatchString(spec.ID) {
		return nil, fmt.Errorf("gvisor: invalid sandbox id %q", spec.ID)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, "config.json")); err != nil {
		return nil, fmt.Errorf("gvisor: adopt %s: %w", spec.ID, err)
	}
	// From the pid file and the process, without a runsc invocation: with
	// 50 sandboxes idling on 2 cores, 50 `runsc state` took 113 s.
	b, err := os.ReadFile(filepath.Join(spec.Dir, pidFileName))
	if err != nil {
		return nil, fmt.Errorf("gvisor: adopt %s: read pid file: %w", spec.ID, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("gvisor: adopt %s: bad pid file %q", spec.ID, b)
	}
	if err := checkSandboxProcess(pid, spec.ID, spec.Dir); err != nil {
		return nil, fmt.Errorf("gvisor: adopt %s: %w", spec.ID, err)
	}
	inst, err := d.attachPID(spec.ID, spec.Dir, pid)
	if err == nil {
		// Again, now that the pidfd pins the process.
		err = checkSandboxProcess(pid, spec.ID, spec.Dir)
	}
	if err != nil {
		return nil, fmt.Errorf("gvisor: adopt %s: %w", spec.ID, err)
	}
	return inst, nil
}

// checkSandboxProcess verifies that pid (pinned by a pidfd already) is
// runsc's sandbox process of container id with the bundle in dir: a pid
// file can outlive its process, pids are reused, and the sandbox process
// names its bundle and, last, its container.
func checkSandboxProcess(pid int, id, dir string) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return fmt.Errorf("sandbox process %d: %w", pid, err)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if args[len(args)-1] != id {
		return fmt.Errorf("process %d is not the sandbox of container %s", pid, id)
	}
	for _, a := range args {
		if a == "--bundle="+dir || a == dir {
			return nil
		}
	}
	return fmt.Errorf("process %d is not the sandbox of %s", pid, dir)
}

// ListContainers returns the IDs of all containers runsc knows in StateDir,
// running or not, and of those whose removal runsc left half-done (a lock
// or socket file), for reconciliation. It reads the state dir instead of
// running `runsc list`: with 50 sandboxes idling on 2 cores, starting runsc
// took seconds. runsc names a container's files
// <sandbox>_sandbox:<container>.state and .lock, and runsc-<sandbox>.sock;
// a Cocoon sandbox is one container named like its sandbox.
func (d *Driver) ListContainers(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("gvisor: list containers: %w", err)
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range ents {
		name, id := e.Name(), ""
		if base, ok := strings.CutSuffix(name, ".state"); ok {
			_, id, _ = strings.Cut(base, "_sandbox:")
		} else if base, ok := strings.CutSuffix(name, ".lock"); ok {
			_, id, _ = strings.Cut(base, "_sandbox:")
		} else if base, ok := strings.CutPrefix(name, "runsc-"); ok {
			id, _ = strings.CutSuffix(base, ".sock")
		}
		if id != "" && validID.MatchString(id) && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}

// stateFiles are the files runsc keeps in StateDir for container id.
func (d *Driver) stateFiles(id string) (state string, leftovers []string) {
	full := id + "_sandbox:" + id
	return filepath.Join(d.cfg.StateDir, full+".state"),
		[]string{filepath.Join(d.cfg.StateDir, full+".lock"), filepath.Join(d.cfg.StateDir, "runsc-"+id+".sock")}
}

// Cleanup force-deletes container id (killing its sandbox and removing its
// cgroup and state). Deleting an unknown container is not an error.
func (d *Driver) Cleanup(ctx context.Context, id string) error {
	if err := d.remove(ctx, id); err != nil {
		return fmt.Errorf("gvisor: cleanup %s: %w", id, err)
	}
	return nil
}

// remove force-deletes a container, and unmounts its view of the template
// tree; it succeeds if the container is gone afterwards.
func (d *Driver) remove(ctx context.Context, id string) error {
	_, err := d.runsc(ctx, "delete", "--force", id)
	if d.ids != nil {
		d.ids.unmount(id)
	}
	state, leftovers := d.stateFiles(id)
	if _, serr := os.Stat(state); err != nil && serr == nil {
		return err // still there
	}
	// runsc delete leaves the container's lock file and socket behind.
	for _, f := range leftovers {
		os.Remove(f)
	}
	return nil
}

// WaitEnvd polls envd's GET /health at addr until it answers or ctx
// ends. Without a deadline in ctx it gives up after 30 s.
func WaitEnvd(ctx context.Context, addr netip.Addr) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	client := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	return runtime.WaitHealth(ctx, client, envdURL(addr), 5*time.Millisecond, nil)
}
