// Package runtime defines the contract between the orchestrator and the
// drivers that run sandboxes: the QEMU microVM driver (internal/vmm) and the
// gVisor driver (internal/gvisor).
//
// Lifecycle of a sandbox, as the orchestrator drives it:
//
//  1. A template is built once: its root filesystem exists (Template.Rootfs*),
//     then Runtime.BuildSnapshot boots it in a slot, waits for envd and saves
//     the runtime's snapshot under Template.Dir/<runtime name>/.
//  2. Create = Runtime.Restore from that template snapshot into a fresh slot
//     and a fresh per-sandbox directory. The orchestrator then calls envd
//     /init to give the clone its identity.
//  3. Pause = Instance.Pause(dir): the whole sandbox (memory, devices, disk
//     layer) is saved into dir and the instance stops and frees its slot.
//  4. Resume = Runtime.Restore with Source pointing at that saved dir.
//  5. Kill = Instance.Kill: the process dies and the per-sandbox directory
//     is removed. The slot is returned by the orchestrator.
//
// Drivers keep no state outside the directories they are given, so that the
// orchestrator can reconcile after a crash by listing those directories and
// the processes whose pids they record.
package runtime

import (
	"context"
	"errors"
	"net/http"

	"github.com/cocoon-run/cocoon/internal/network"
)

// ErrNotSupported is returned by drivers for operations their host cannot do.
var ErrNotSupported = errors.New("not supported by this runtime")

// Template is a built root filesystem and its resource shape.
type Template struct {
	// ID identifies the template build; it names Dir.
	ID string
	// Dir holds the template's artifacts. Each runtime keeps its snapshot in
	// Dir/<Runtime.Name()>/ and nothing outside it.
	Dir string
	// Kernel and Initrd boot a microVM guest (unused by gVisor).
	Kernel string
	Initrd string
	// RootfsImage is the ext4 image of the root filesystem (microVMs).
	RootfsImage string
	// RootfsDir is the same tree unpacked as a directory (gVisor).
	RootfsDir string
	VCPUs     int
	MemoryMB  int
	DiskMB    int

	// BeforeSnapshot, when set, runs during BuildSnapshot once envd answers
	// and before the state is saved: custom templates start their start
	// command and wait for their ready command here. client reaches envd at
	// envdURL (e.g. "http://169.254.0.21:49983").
	BeforeSnapshot func(ctx context.Context, client *http.Client, envdURL string) error `json:"-"`
}

// Source says what a Restore starts from.
type Source struct {
	// Template is the template the sandbox was created from; always set.
	Template *Template
	// Paused is the directory a paused sandbox was saved into by
	// Instance.Pause, or "" to restore the template's own snapshot.
	Paused string
}

// Spec describes one sandbox to a driver.
type Spec struct {
	ID string
	// Dir is the sandbox's private directory (disk layer, sockets, console
	// log, pid file). The driver creates what it needs in it; Kill removes it.
	Dir      string
	VCPUs    int
	MemoryMB int
	Slot     *network.Slot
}

// Runtime is one way of running sandboxes.
type Runtime interface {
	// Name is "qemu" or "gvisor"; it names snapshot directories and is
	// recorded with every sandbox.
	Name() string
	// BuildSnapshot boots the template once in slot, waits until envd
	// answers on port 49983 and saves the snapshot in Template.Dir/<Name>/.
	BuildSnapshot(ctx context.Context, t *Template, slot *network.Slot, dir string) error
	// Restore starts a sandbox from a snapshot and returns once it runs.
	// envd may need a moment more to answer; callers poll /health.
	Restore(ctx context.Context, src Source, spec Spec) (Instance, error)
	// Adopt re-attaches to a sandbox left running by an earlier orchestrator
	// process, from what its Dir records. It fails when the sandbox is gone.
	Adopt(ctx context.Context, spec Spec) (Instance, error)
}

// Instance is one running sandbox.
type Instance interface {
	// PID of the runtime process (QEMU, or the runsc sandbox).
	PID() int
	// Pause saves the sandbox's whole state into dir (which it creates) and
	// stops the instance. After Pause the instance is dead; Kill is a no-op.
	Pause(ctx context.Context, dir string) error
	// Kill stops the instance and removes Spec.Dir. It is idempotent.
	Kill(ctx context.Context) error
	// Done is closed when the instance's process exits for any reason.
	Done() <-chan struct{}
	// ConsoleLog is the path of the guest's console / runtime log.
	ConsoleLog() string
}

// Reconciler is implemented by drivers that can find runtime processes and
// state left behind by a crashed orchestrator (e.g. QEMU processes whose
// command line names this data dir, or runsc containers in its state root).
// The orchestrator calls it at start, after re-adopting what its records
// name; the driver kills and removes everything for which keep is false.
type Reconciler interface {
	Reconcile(ctx context.Context, keep func(sandboxID string) bool) error
}

// SnapshotChecker is implemented by drivers whose template snapshots can go
// stale when the driver changes (gVisor: runsc restores only with the
// platform and process spec it checkpointed with). SnapshotCurrent returns
// why t's snapshot cannot be restored, or nil.
type SnapshotChecker interface {
	SnapshotCurrent(t *Template) error
}

// PauseRecoverer is implemented by drivers whose Pause an orchestrator crash
// can interrupt half-way (the saving goes on in a process of its own).
// RecoverPause settles a Pause of the sandbox spec into dir: it waits for a
// save still in progress (until ctx ends), then either finishes the pause,
// when dir holds a complete saved state (the sandbox is stopped and its
// Spec.Dir removed; it returns complete = true), or rolls it back: the
// sandbox runs on and is returned re-adopted. It returns an error when
// neither is possible (the state is torn and the sandbox is gone).
type PauseRecoverer interface {
	RecoverPause(ctx context.Context, spec Spec, dir string) (inst Instance, complete bool, err error)
}

// ExitReasoner is implemented by instances that can tell why their process
// exited on its own (e.g. "out of memory" when its cgroup counted an OOM
// kill). ExitReason is asked after Done is closed and before Kill; "" means
// no known reason.
type ExitReasoner interface {
	ExitReason() string
}
