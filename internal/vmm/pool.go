package vmm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// Prespawned is a QEMU started with -incoming defer for a template
// snapshot, in its own directory and network slot, waiting to be claimed
// by a create. It implements runtime.Prespawned.
//
// With Options.PoolRestore (the default) the template's state is already
// loaded and the guest runs: envd has answered one /health request and one
// harmless /init (runtime.WarmInit), which fills TCG's translation cache for
// the path of the create's /init (every QEMU process starts with an empty
// one, and on a TCG host the guest's first run of a code path after a
// restore is the slowest step of a create: ≈ 90 ms for a first /init against
// ≈ 10 ms for a second). The pooled QEMU runs at poolNice until it
// is claimed. Such a guest is a
// clone that has not had its /init yet: it has the template's identity and
// no access token, and it is reachable only from inside its slot until the
// orchestrator claims it and sends /init (new token, clock, RNG seed).
//
// Its files are named relative to its working directory (its directory),
// so Claim can rename the directory to the sandbox's under the running
// process; Adopt and the orchestrator's reconcile recognise it by its cwd.
type Prespawned struct {
	r    *Runtime
	inst *Instance
	snap string // the template snapshot directory
	slot *network.Slot
	// running: the state is loaded and the guest runs (see PoolRestore).
	running bool
}

var _ runtime.Prespawner = (*Runtime)(nil)
var _ runtime.Prespawned = (*Prespawned)(nil)

// Prespawn starts QEMU for a future restore of t's snapshot: the machine
// of the snapshot, RAM mapped privately from its memory file, a copy of the
// empty clone overlay as disk, the TAP of slot, -incoming defer. It returns
// once QMP answers; the expensive part of a restore (≈ 44 of 51 ms on a
// quiet host) is then done.
func (r *Runtime) Prespawn(ctx context.Context, t *runtime.Template, slot *network.Slot, dir string) (runtime.Prespawned, error) {
	snap := snapshotDir(t)
	m, err := readMeta(filepath.Join(snap, metaName))
	if err != nil {
		return nil, fmt.Errorf("prespawn: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("prespawn: create dir: %w", err)
	}
	disk := filepath.Join(dir, diskName)
	if err := copyFile(filepath.Join(snap, cloneName), disk); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("prespawn: create disk layer: %w", err)
	}
	m.Template = filepath.Join(snap, memoryName)
	t0 := time.Now()
	inst, err := r.launch(ctx, launchSpec{
		ID: filepath.Base(dir), Dir: dir, Machine: m, Disk: disk, Slot: slot,
		Memory:   memory{Path: m.Template, Share: false},
		Incoming: true, Sandbox: !r.opts.NoSandbox, Relative: true, NoLimit: true,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("prespawn: %w", err)
	}
	if err := renice(poolNice, inst.pid); err != nil {
		r.log.Debug("vmm: renice pooled qemu", "err", err)
	}
	p := &Prespawned{r: r, inst: inst, snap: snap, slot: slot}
	if r.opts.PoolNoRestore {
		return p, nil
	}
	// QEMU's own start-up is a large share of a restore's CPU: the debug
	// line below shows it next to the total.
	debug := r.log.Enabled(ctx, slog.LevelDebug)
	var cpuLaunch time.Duration
	if debug {
		cpuLaunch = cpuTime(inst.pid)
	}
	if err := inst.loadState(ctx, filepath.Join(snap, stateName), true); err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("prespawn: %w", withTail(err, dir))
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := WaitHealthy(wctx, slot, inst.done); err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("prespawn: envd: %w", withTail(err, dir))
	}
	if err := runtime.WarmInit(wctx, GuestClient(slot), EnvdURL()); err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("prespawn: %w", withTail(err, dir))
	}
	// One commands.run('true') too: under TCG the first run of bash in a
	// restored guest translates its code again, which the user's first
	// command would otherwise pay for.
	if err := runtime.WarmExec(wctx, GuestClient(slot), EnvdURL()); err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("prespawn: %w", withTail(err, dir))
	}
	p.running = true
	if debug {
		r.log.Debug("vmm: prespawned", "dir", dir, "took", time.Since(t0), "cpu", cpuTime(inst.pid), "cpu_qemu_start", cpuLaunch)
	}
	return p, nil
}

// Done is closed when the QEMU exits.
func (p *Prespawned) Done() <-chan struct{} { return p.inst.done }

// Discard kills the QEMU and removes its directory.
func (p *Prespawned) Discard(ctx context.Context) error { return p.inst.Kill(ctx) }

// Claim makes the prespawned QEMU the sandbox spec: it renames its
// directory to spec.Dir, puts it into the sandbox's cgroup, loads the
// template's device state and starts the guest.
func (p *Prespawned) Claim(ctx context.Context, spec runtime.Spec) (runtime.Instance, error) {
	inst := p.inst
	m := inst.machine
	fail := func(err error) (runtime.Instance, error) {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("claim prespawned qemu for %s: %w", spec.ID, err)
	}
	if spec.Slot == nil || p.slot == nil || spec.Slot.Index != p.slot.Index {
		return fail(errors.New("the sandbox's slot is not the one the process was spawned in"))
	}
	if (spec.VCPUs != 0 && spec.VCPUs != m.VCPUs) || (spec.MemoryMB != 0 && spec.MemoryMB != m.MemoryMB) {
		return fail(fmt.Errorf("snapshot has %d vCPUs and %d MiB, spec asks %d and %d", m.VCPUs, m.MemoryMB, spec.VCPUs, spec.MemoryMB))
	}
	select {
	case <-inst.done:
		return fail(errors.New("the process exited while it waited"))
	default:
	}
	t0 := time.Now()
	if err := os.MkdirAll(filepath.Dir(spec.Dir), 0o755); err != nil {
		return fail(err)
	}
	if err := os.Rename(inst.dir, spec.Dir); err != nil {
		return fail(fmt.Errorf("move to sandbox dir: %w", err))
	}
	inst.mu.Lock()
	inst.dir, inst.id = spec.Dir, spec.ID
	inst.mu.Unlock()
	if err := renice(0, inst.pid); err != nil {
		p.r.log.Warn("vmm: renice claimed qemu", "id", spec.ID, "err", err)
	}
	if err := p.r.limit(inst); err != nil {
		p.r.log.Warn("vmm: no cgroup limits", "id", spec.ID, "err", err)
	}
	if !p.running {
		if err := inst.loadState(ctx, filepath.Join(p.snap, stateName), true); err != nil {
			return fail(withTail(err, spec.Dir))
		}
	}
	p.r.log.Debug("vmm: restored prespawned", "id", spec.ID, "running", time.Since(t0))
	return inst, nil
}

// cpuTime is the CPU time (user+system) process pid has used, for logs.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) start at ")".
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}
