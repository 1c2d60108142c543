package vmm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm/qmp"
)

// Files of a sandbox directory (Spec.Dir).
const (
	consoleName = "console.log" // guest serial console
	stderrName  = "qemu.log"    // QEMU's own messages
	qmpName     = "qmp.sock"
	pidName     = "qemu.pid"
	metaName    = "vmm.json"
	diskName    = "disk.qcow2" // the sandbox's copy-on-write disk layer
)

func consolePath(dir string) string { return filepath.Join(dir, consoleName) }
func stderrPath(dir string) string  { return filepath.Join(dir, stderrName) }

// machine is what must be identical between a VM that saved a state and
// the VM that loads it. It is recorded next to every snapshot and in every
// sandbox directory.
type machine struct {
	Accel    Accel  `json:"accel"`
	VCPUs    int    `json:"vcpus"`
	MemoryMB int    `json:"memory_mb"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	Cmdline  string `json:"cmdline"`
	// Template is the template snapshot's memory file when the instance
	// maps it (copy-on-write); "" when its RAM is anonymous.
	Template string `json:"template_memory,omitempty"`
}

func readMeta(path string) (machine, error) {
	var m machine
	b, err := os.ReadFile(path)
	if err != nil {
		return m, fmt.Errorf("read vm metadata: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode %s: %w", path, err)
	}
	return m, nil
}

func writeMeta(path string, m machine) error {
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write vm metadata: %w", err)
	}
	return nil
}

// memory says how guest RAM is backed.
type memory struct {
	Path  string // memory-backend-file mem-path; "" for anonymous RAM
	Share bool   // share=on (template build) or a private mapping
}

// launchSpec is one QEMU process to start.
type launchSpec struct {
	ID       string
	Dir      string
	Machine  machine
	Memory   memory
	Disk     string // qcow2 image for virtio-blk
	Slot     *network.Slot
	Incoming bool // start with -incoming defer
	Sandbox  bool // QEMU's seccomp filter
	// UID is the host uid and gid QEMU drops to (-runas) once it has
	// opened its files and devices, before the guest runs; 0 stays root.
	UID uint32 // set by launch from the slot
	// Relative names Dir's files relative to QEMU's working directory,
	// which is Dir: the directory can then be renamed under a running
	// QEMU (a prespawned one is claimed by renaming its directory to the
	// sandbox's), and the process is found by its cwd, not its args.
	Relative bool
	// NoLimit leaves the cgroup limits to the caller (a prespawned QEMU is
	// limited when claimed, in the cgroup named after the sandbox).
	NoLimit bool
}

// guestMAC is the same in every slot, like the guest's address, so that a
// snapshot restores anywhere.
var guestMAC = network.GuestMAC.String()

func (l launchSpec) args() []string {
	m := l.Machine
	a := []string{
		"-name", "cocoon-" + l.ID,
		"-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
		// No option ROMs: qboot loads the kernel itself, and a restore
		// then needs no -kernel.
		"-machine", "microvm,memory-backend=mem,x-option-roms=off",
		"-smp", strconv.Itoa(m.VCPUs),
		"-m", strconv.Itoa(m.MemoryMB) + "M",
	}
	switch m.Accel {
	case AccelKVM:
		a = append(a, "-accel", "kvm", "-cpu", "host")
	default:
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	size := strconv.Itoa(m.MemoryMB) + "M"
	if l.Memory.Path != "" {
		share := "off"
		if l.Memory.Share {
			share = "on"
		}
		a = append(a, "-object", "memory-backend-file,id=mem,size="+size+",mem-path="+qemuEscape(l.Memory.Path)+",share="+share)
	} else {
		a = append(a, "-object", "memory-backend-ram,id=mem,size="+size)
	}
	if !l.Incoming {
		// An incoming guest's RAM already holds its kernel; loading it
		// again would cost time and QEMU heap (fw_cfg copies) per clone.
		a = append(a, "-kernel", m.Kernel, "-append", m.Cmdline)
		if m.Initrd != "" {
			a = append(a, "-initrd", m.Initrd)
		}
	}
	console, disk := consolePath(l.Dir), l.Disk
	if l.Relative {
		console, disk = consoleName, filepath.Base(l.Disk)
	}
	a = append(a,
		"-chardev", "file,id=con,path="+qemuEscape(console),
		"-serial", "chardev:con",
		// fd 3 is the QMP socket, bound and listening before QEMU starts,
		// so the driver can connect at once instead of polling for it.
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	)
	if l.Disk != "" {
		a = append(a,
			"-drive", "id=root,if=none,format=qcow2,discard=unmap,file.auto-read-only=off,file="+qemuEscape(disk),
			"-device", "virtio-blk-device,drive=root")
	}
	if l.Slot != nil {
		tap := l.Slot.Tap
		if tap == "" {
			tap = "tap0"
		}
		a = append(a,
			"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no,vhost=off",
			"-device", "virtio-net-device,netdev=n0,mac="+guestMAC)
	}
	if l.UID != 0 {
		a = append(a, "-runas", fmt.Sprintf("%d:%d", l.UID, l.UID))
	}
	if l.Sandbox {
		// spawn=deny forbids exec: migration URIs; migrations use fd:
		// (a file passed over QMP) instead. QEMU 7.2 installs the filter
		// before -runas drops to the uid, so elevateprivileges=deny would
		// kill it at its setgid (SIGSYS); after the drop QEMU has no
		// capabilities and no_new_privs, so set*id calls can only switch
		// among its own ids. Without -runas they stay denied.
		elevate := "deny"
		if l.UID != 0 {
			elevate = "allow"
		}
		a = append(a, "-sandbox", "on,obsolete=deny,elevateprivileges="+elevate+",spawn=deny,resourcecontrol=deny")
	}
	if l.Incoming {
		a = append(a, "-incoming", "defer")
	}
	return a
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// launch starts QEMU for l and connects to its QMP socket. The process runs
// in its own session, so it survives the orchestrator; its pid is written to
// Dir/qemu.pid for Adopt.
func (r *Runtime) launch(ctx context.Context, l launchSpec) (*Instance, error) {
	l.UID = r.uid(l.Slot)
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	if err := writeMeta(filepath.Join(l.Dir, metaName), l.Machine); err != nil {
		return nil, err
	}
	sock := filepath.Join(l.Dir, qmpName)
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen qmp: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the socket outlives this listener, in QEMU
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("qmp listener fd: %w", err)
	}
	defer lf.Close()
	stderr, err := os.OpenFile(stderrPath(l.Dir), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open qemu log: %w", err)
	}
	defer stderr.Close()

	cmd := exec.Command(r.qemu, l.args()...)
	cmd.Stderr = stderr
	cmd.Stdout = stderr
	cmd.ExtraFiles = []*os.File{lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if l.Relative {
		cmd.Dir = l.Dir
	}
	t0 := time.Now()
	if err := startIn(l.Slot, cmd); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	inst := newInstance(r, l.ID, l.Dir, cmd.Process.Pid, l.Machine)
	go func() {
		cmd.Wait()
		close(inst.done)
	}()
	if err := os.WriteFile(filepath.Join(l.Dir, pidName), []byte(strconv.Itoa(inst.pid)), 0o644); err != nil {
		inst.kill()
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	if !l.NoLimit {
		if err := r.limit(inst); err != nil {
			r.log.Warn("vmm: no cgroup limits", "id", l.ID, "err", err)
		}
	}
	// Connect now: the listening socket is QEMU's, and the greeting comes
	// as soon as QEMU has parsed its options.
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err == nil {
		inst.qmp, err = qmpNew(qctx, c, inst.done)
	}
	if err != nil {
		inst.kill()
		return nil, withTail(fmt.Errorf("connect to qemu: %w", err), l.Dir)
	}
	r.log.Debug("vmm: qemu up", "id", l.ID, "qmp", time.Since(t0))
	return inst, nil
}

// qmpNew negotiates QMP on c, giving up when the process exits.
func qmpNew(ctx context.Context, c *net.UnixConn, done <-chan struct{}) (*qmp.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	q, err := qmp.New(ctx, c)
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		return nil, fmt.Errorf("qemu exited: %w", err)
	}
	return q, err
}

// limit applies the cgroup limits of r's options to inst.
func (r *Runtime) limit(inst *Instance) error {
	if r.opts.CgroupParent == "-" {
		return nil
	}
	l := limits{
		vcpus:    inst.machine.VCPUs,
		memBytes: int64(inst.machine.MemoryMB+r.opts.MemoryOverheadMB) << 20,
		pids:     r.opts.Pids,
		io:       r.opts.IO,
	}
	if major, minor, err := runtime.BlockDevice(inst.dir); err == nil {
		l.dev = fmt.Sprintf("%d:%d", major, minor)
	} else {
		r.log.Debug("vmm: no I/O limit", "id", inst.id, "err", err)
	}
	dirs, err := cgroupLimits(r.opts.CgroupParent, inst.id, inst.pid, l)
	inst.cgroups = dirs
	return err
}
