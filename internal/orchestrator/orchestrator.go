// Package orchestrator owns the sandboxes of one node: it restores them from
// template snapshots through a runtime driver, gives each a network slot,
// initialises envd, pauses, resumes and kills them, and reconciles what it
// finds on disk after a crash so that nothing leaks.
//
// Lifecycle of a sandbox on a node:
//
//	Create  → slot acquired → runtime.Restore(template snapshot) → envd /health → envd /init → running
//	Pause   → Instance.Pause(<data>/snapshots/<id>/state) → slot released → paused (record kept)
//	Resume  → slot acquired → runtime.Restore(paused state) → envd /init → running
//	Kill    → Instance.Kill → slot released → record (and optionally snapshot) removed
//	VM dies → reported dead with the tail of its console log
//
// Every running sandbox has a record file under <data>/node/sandboxes; on
// start, New re-adopts the runtime processes those records name and cleans
// up everything else (processes, slots, directories).
package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cocoon-run/cocoon/internal/envd/initreq"
	"github.com/cocoon-run/cocoon/internal/metrics"
	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
)

// Errors the RPC layer maps to codes.
var (
	ErrNotFound = errors.New("sandbox not found")
	ErrExists   = errors.New("sandbox already exists")
	ErrState    = errors.New("sandbox is not in a state that allows this")
)

// Slots hands out network slots; *network.Manager implements it.
type Slots interface {
	Acquire(ctx context.Context) (*network.Slot, error)
	Release(ctx context.Context, s *network.Slot) error
	SetEgress(ctx context.Context, s *network.Slot, e network.Egress) error
	Reconcile(ctx context.Context, inUse func(index int) bool) error
}

// State of a sandbox on this node.
type State string

// States.
const (
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateDead    State = "dead"
)

// Config configures an Orchestrator.
type Config struct {
	NodeID  string
	DataDir string
	// Runtimes by name; Default names the one used when a request names none.
	Runtimes map[string]runtime.Runtime
	Default  string
	Slots    Slots
	Logger   *slog.Logger
	// Accel and Reason describe the choice of runtime, for Node().
	Accel  string
	Reason string
	// EnvdTimeout bounds the wait for envd after a restore (default 30 s).
	EnvdTimeout time.Duration
	// MaxStarting bounds the sandboxes restored at once outside the warm
	// pool (creates that find it empty, resumes); further ones queue, or
	// take a pool entry that becomes ready meanwhile. Restores are CPU-bound:
	// many at once on few cores thrash (under TCG a guest's vCPU spinning
	// for a descheduled one) and all finish late. Default: the host's CPU
	// count.
	MaxStarting int
	// WarmMin and WarmMax bound the warm pool of prespawned sandboxes per
	// template (runtimes that can prespawn: QEMU, gVisor); defaults
	// 1 and 4, WarmMax < 0 disables the pool. See pool.go.
	WarmMin, WarmMax int
	// FetchTemplate, if set, streams the artifact of a custom template
	// this node lacks from a node that has it (a tar of what
	// WriteTemplate writes; see artifacts.go). Nil outside a fleet.
	FetchTemplate func(ctx context.Context, ref string) (io.ReadCloser, error)
	// Metrics receives the node's Prometheus observations; nil: none.
	Metrics *metrics.Node
}

// CreateParams describe a sandbox to create or resume.
type CreateParams struct {
	ID          string
	TemplateDir string
	TemplateID  string
	BuildID     string
	Runtime     string
	VCPUs       int
	MemoryMB    int
	EnvVars     map[string]string
	AccessToken string
	Egress      network.Egress
	Hostname    string
	// Snapshot is the paused state to resume from ("" for a create).
	Snapshot string
}

// Sandbox is the node's view of one sandbox.
type Sandbox struct {
	ID         string    `json:"id"`
	State      State     `json:"state"`
	Runtime    string    `json:"runtime"`
	Address    string    `json:"address"`
	StartedAt  time.Time `json:"startedAt"`
	Detail     string    `json:"detail,omitempty"`
	Snapshot   string    `json:"snapshot,omitempty"`
	VCPUs      int       `json:"vcpus"`
	MemoryMB   int       `json:"memoryMB"`
	TemplateID string    `json:"templateID"`
	BuildID    string    `json:"buildID"`

	// Persisted for re-adoption and resume.
	TemplateDir string         `json:"templateDir"`
	SlotIndex   int            `json:"slotIndex"`
	Slot        *network.Slot  `json:"slot,omitempty"`
	Egress      network.Egress `json:"egress"`
	AccessToken string         `json:"accessToken,omitempty"`
	Console     string         `json:"console,omitempty"`
	// RuntimeID is the runtime's name for the sandbox (its container, and
	// its directory under sandboxes/) when that is not ID: a sandbox taken
	// from the warm pool keeps the name it was started under, since runsc
	// cannot rename a container.
	RuntimeID string `json:"runtimeID,omitempty"`
	// Pausing is the intent of a Pause, written to the record before the
	// runtime starts saving: after a crash, reconcile finishes the pause
	// when the saved state is whole and rolls it back otherwise.
	Pausing bool `json:"pausing,omitempty"`
}

// runtimeName is the name the runtime knows the sandbox by.
func (sb *Sandbox) runtimeName() string {
	if sb.RuntimeID != "" {
		return sb.RuntimeID
	}
	return sb.ID
}

// entry is a sandbox plus what only the running process has.
type entry struct {
	mu   sync.Mutex // serializes operations on this sandbox
	sb   Sandbox
	inst runtime.Instance
}

// Orchestrator manages the sandboxes of one node. Safe for concurrent use.
type Orchestrator struct {
	cfg Config
	log *slog.Logger

	envdHTTP *http.Client

	mu        sync.Mutex
	sandboxes map[string]*entry

	refilling atomic.Bool // a network slot refill is running
	fetchMu   sync.Mutex  // one custom template fetched at a time (ResolveTemplate)
	pool      *warmPool
	starting  chan struct{} // a token per restore in flight (MaxStarting)

	events *events
	swept  chan struct{} // closed when the startup sweep is over
}

// New starts an orchestrator: it re-adopts the sandboxes recorded under
// DataDir and removes whatever no record owns.
func New(ctx context.Context, cfg Config) (*Orchestrator, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.EnvdTimeout == 0 {
		cfg.EnvdTimeout = 30 * time.Second
	}
	if len(cfg.Runtimes) == 0 {
		return nil, errors.New("orchestrator: no runtime configured")
	}
	if _, ok := cfg.Runtimes[cfg.Default]; !ok {
		return nil, fmt.Errorf("orchestrator: default runtime %q is not configured", cfg.Default)
	}
	if cfg.MaxStarting <= 0 {
		cfg.MaxStarting = goruntime.NumCPU()
	}
	o := &Orchestrator{cfg: cfg, log: cfg.Logger, sandboxes: map[string]*entry{}, envdHTTP: newEnvdHTTP(),
		starting: make(chan struct{}, cfg.MaxStarting), events: newEvents(), swept: make(chan struct{})}
	o.envdHTTP.Transport = cfg.Metrics.EnvdTransport(o.envdHTTP.Transport)
	o.pool = &warmPool{o: o, queues: map[poolKey]*warmQueue{}}
	for _, d := range []string{o.recordDir(), o.sandboxRoot(), o.snapshotRoot()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := o.cleanPool(); err != nil {
		return nil, fmt.Errorf("clean warm pool: %w", err)
	}
	if err := o.reconcile(ctx); err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	return o, nil
}

func (o *Orchestrator) recordDir() string    { return filepath.Join(o.cfg.DataDir, "node", "sandboxes") }
func (o *Orchestrator) sandboxRoot() string  { return filepath.Join(o.cfg.DataDir, "sandboxes") }
func (o *Orchestrator) snapshotRoot() string { return filepath.Join(o.cfg.DataDir, "snapshots") }

// SnapshotDir is where a paused sandbox's state lives.
func (o *Orchestrator) SnapshotDir(id string) string { return filepath.Join(o.snapshotRoot(), id) }

// Runtimes lists the configured runtimes, sorted.
func (o *Orchestrator) Runtimes() []string {
	names := make([]string, 0, len(o.cfg.Runtimes))
	for n := range o.cfg.Runtimes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultRuntime is the runtime used when a request names none.
func (o *Orchestrator) DefaultRuntime() string { return o.cfg.Default }

// NodeID names this node.
func (o *Orchestrator) NodeID() string { return o.cfg.NodeID }

func (o *Orchestrator) runtimeFor(name string) (runtime.Runtime, string, error) {
	if name == "" {
		name = o.cfg.Default
	}
	rt, ok := o.cfg.Runtimes[name]
	if !ok {
		return nil, "", fmt.Errorf("runtime %q is not available on this node (have %v)", name, o.Runtimes())
	}
	return rt, name, nil
}

// Create restores a new sandbox from its template's snapshot.
func (o *Orchestrator) Create(ctx context.Context, p CreateParams) (Sandbox, error) {
	p.Snapshot = ""
	return o.start(ctx, p)
}

// Resume restores a paused sandbox into a fresh slot.
func (o *Orchestrator) Resume(ctx context.Context, p CreateParams) (Sandbox, error) {
	if p.Snapshot == "" {
		p.Snapshot = filepath.Join(o.SnapshotDir(p.ID), "state")
	}
	o.mu.Lock()
	e, ok := o.sandboxes[p.ID]
	o.mu.Unlock()
	if ok {
		e.mu.Lock()
		state := e.sb.State
		e.mu.Unlock()
		if state == StateRunning {
			return e.sb, nil
		}
	}
	return o.start(ctx, p)
}

func (o *Orchestrator) start(ctx context.Context, p CreateParams) (sb Sandbox, err error) {
	if !validID(p.ID) {
		return Sandbox{}, fmt.Errorf("invalid sandbox id %q", p.ID)
	}
	rt, rtName, err := o.runtimeFor(p.Runtime)
	if err != nil {
		return Sandbox{}, err
	}
	tmpl, err := base.Load(p.TemplateDir)
	if err != nil {
		return Sandbox{}, err
	}
	sp := newSpans()
	e := &entry{}
	e.mu.Lock()
	defer e.mu.Unlock()
	o.mu.Lock()
	if old, ok := o.sandboxes[p.ID]; ok && old.sb.State == StateRunning {
		o.mu.Unlock()
		return Sandbox{}, ErrExists
	}
	o.sandboxes[p.ID] = e
	o.mu.Unlock()
	defer func() {
		if err != nil {
			o.mu.Lock()
			if o.sandboxes[p.ID] == e {
				delete(o.sandboxes, p.ID)
			}
			o.mu.Unlock()
		}
	}()

	// A create of the template's own shape takes a prespawned process
	// (and the slot it is bound to) from the warm pool when there is one.
	// Otherwise it restores the usual way once one of MaxStarting tokens
	// is free, unless a pool entry gets ready first.
	var warm *warmEntry
	pooled := p.Snapshot == "" && (p.VCPUs == 0 || p.VCPUs == tmpl.VCPUs) && (p.MemoryMB == 0 || p.MemoryMB == tmpl.MemoryMB)
	if pooled {
		warm = o.pool.take(rtName, rt, tmpl, p.TemplateDir)
	}
	if warm == nil {
		if warm, err = o.pool.waitOrStart(ctx, pooled, rtName, p.TemplateDir, o.starting); err != nil {
			return Sandbox{}, fmt.Errorf("wait for a restore to finish: %w", err)
		}
		if warm == nil {
			defer func() { <-o.starting }()
		}
	}
	sp.mark("queue")
	var slot *network.Slot
	if warm != nil {
		slot = warm.slot
	} else {
		if slot, err = o.cfg.Slots.Acquire(ctx); err != nil {
			return Sandbox{}, fmt.Errorf("acquire network slot: %w", err)
		}
		o.refillSlots()
	}
	sp.mark("slot")
	defer func() {
		if err != nil {
			if rerr := o.cfg.Slots.Release(context.WithoutCancel(ctx), slot); rerr != nil {
				o.log.Warn("release slot", "slot", slot.Index, "err", rerr)
			}
		}
	}()
	if err := o.cfg.Slots.SetEgress(ctx, slot, p.Egress); err != nil {
		return Sandbox{}, fmt.Errorf("set egress: %w", err)
	}
	sp.mark("egress")
	vcpus, mem := p.VCPUs, p.MemoryMB
	if vcpus == 0 {
		vcpus = tmpl.VCPUs
	}
	if mem == 0 {
		mem = tmpl.MemoryMB
	}
	if p.Snapshot != "" && mem != tmpl.MemoryMB {
		// Memory size is baked into the saved state.
		mem = tmpl.MemoryMB
	}
	spec := runtime.Spec{
		ID:       p.ID,
		Dir:      filepath.Join(o.sandboxRoot(), p.ID),
		VCPUs:    vcpus,
		MemoryMB: mem,
		Slot:     slot,
	}
	src := runtime.Source{Template: tmpl, Paused: p.Snapshot}
	var inst runtime.Instance
	if warm != nil {
		if inst, err = warm.p.Claim(ctx, spec); err != nil {
			o.log.Warn("warm pool: claim failed; restoring the usual way", "id", p.ID, "err", err)
			inst = nil
		}
	}
	if inst == nil {
		if inst, err = rt.Restore(ctx, src, spec); err != nil {
			return Sandbox{}, fmt.Errorf("restore %s sandbox: %w", rtName, err)
		}
	}
	sp.mark("restore")
	defer func() {
		if err != nil {
			if kerr := inst.Kill(context.WithoutCancel(ctx)); kerr != nil {
				o.log.Warn("kill failed sandbox", "id", p.ID, "err", kerr)
			}
		}
	}()
	addr := slot.Addr.Addr().String()
	ec := o.envd(addr, p.AccessToken)
	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	if err := ec.initWhenUp(ctx, o.cfg.EnvdTimeout, inst.Done(), initreq.Request{
		EnvVars:     p.EnvVars,
		AccessToken: p.AccessToken,
		Timestamp:   time.Now().UTC().Format(time.RFC3339Nano),
		Hostname:    p.Hostname,
		Seed:        seed,
	}); err != nil {
		return Sandbox{}, fmt.Errorf("init envd: %w; console: %s", err, runtime.TailLog(inst.ConsoleLog(), 20))
	}
	sp.mark("envd_init")
	e.inst = inst
	e.sb = Sandbox{
		ID:          p.ID,
		State:       StateRunning,
		Runtime:     rtName,
		Address:     addr,
		StartedAt:   time.Now().UTC(),
		VCPUs:       vcpus,
		MemoryMB:    mem,
		TemplateID:  p.TemplateID,
		BuildID:     p.BuildID,
		TemplateDir: p.TemplateDir,
		SlotIndex:   slot.Index,
		Slot:        slot,
		Egress:      p.Egress,
		AccessToken: p.AccessToken,
		Console:     inst.ConsoleLog(),
	}
	if n, ok := inst.(runtime.Named); ok && n.RuntimeID() != p.ID {
		e.sb.RuntimeID = n.RuntimeID()
	}
	if err := o.writeRecord(&e.sb); err != nil {
		return Sandbox{}, err
	}
	sp.mark("record")
	o.log.Debug("sandbox started", append([]any{"id", p.ID, "runtime", rtName, "resume", p.Snapshot != "", "prespawned", warm != nil}, sp.attrs()...)...)
	if p.Snapshot != "" {
		// The state now lives in the running sandbox again.
		if err := os.RemoveAll(o.SnapshotDir(p.ID)); err != nil {
			o.log.Warn("remove resumed snapshot", "id", p.ID, "err", err)
		}
	}
	go o.watch(p.ID, e, inst)
	return e.sb, nil
}

// watch marks a sandbox dead when its runtime process exits on its own,
// removes what it held at once (slot, runtime state, cgroup, directory)
// and reports the death to the node's watchers.
func (o *Orchestrator) watch(id string, e *entry, inst runtime.Instance) {
	<-inst.Done()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inst != inst || e.sb.State != StateRunning {
		return // paused or killed on purpose
	}
	reason := runtime.ReasonExited
	if r, ok := inst.(runtime.ExitReasoner); ok {
		if why := r.ExitReason(); why != "" {
			reason = why
		}
	}
	e.sb.State = StateDead
	e.sb.Detail = reason
	o.log.Warn("sandbox died", "id", id, "runtime", e.sb.Runtime, "reason", reason,
		"console", runtime.TailLog(e.sb.Console, 20))
	e.inst = nil
	o.events.publish(e.sb)
	// Kill of an exited instance removes its runtime state (runsc's
	// container record, its cgroup) and its directory.
	if err := inst.Kill(context.Background()); err != nil {
		o.log.Warn("clean up dead sandbox", "id", id, "err", err)
	}
	if e.sb.Slot != nil {
		if err := o.cfg.Slots.Release(context.Background(), e.sb.Slot); err != nil {
			o.log.Warn("release slot of dead sandbox", "id", id, "err", err)
		}
		e.sb.Slot = nil
	}
	_ = os.RemoveAll(filepath.Join(o.sandboxRoot(), e.sb.runtimeName()))
	_ = os.Remove(o.recordPath(id))
}

// Get returns one sandbox.
func (o *Orchestrator) Get(ctx context.Context, id string) (Sandbox, error) {
	e, err := o.entry(id)
	if err != nil {
		if sb, perr := o.pausedRecord(id); perr == nil {
			return sb, nil
		}
		return Sandbox{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sb, nil
}

// List returns the sandboxes this node knows, running, dead and paused.
func (o *Orchestrator) List(ctx context.Context) []Sandbox {
	o.mu.Lock()
	entries := make([]*entry, 0, len(o.sandboxes))
	for _, e := range o.sandboxes {
		entries = append(entries, e)
	}
	o.mu.Unlock()
	seen := map[string]bool{}
	out := make([]Sandbox, 0, len(entries))
	for _, e := range entries {
		e.mu.Lock()
		if e.sb.ID != "" {
			out = append(out, e.sb)
			seen[e.sb.ID] = true
		}
		e.mu.Unlock()
	}
	dirs, _ := os.ReadDir(o.snapshotRoot())
	for _, d := range dirs {
		if seen[d.Name()] {
			continue
		}
		if sb, err := o.pausedRecord(d.Name()); err == nil {
			out = append(out, sb)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (o *Orchestrator) entry(id string) (*entry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.sandboxes[id]
	if !ok {
		return nil, ErrNotFound
	}
	return e, nil
}

// Pause saves a running sandbox into the snapshot store and frees its slot.
func (o *Orchestrator) Pause(ctx context.Context, id string) (Sandbox, error) {
	e, err := o.entry(id)
	if err != nil {
		return Sandbox{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sb.State != StateRunning || e.inst == nil {
		return e.sb, fmt.Errorf("pause sandbox in state %s: %w", e.sb.State, ErrState)
	}
	snap := o.SnapshotDir(id)
	if err := os.RemoveAll(snap); err != nil {
		return e.sb, fmt.Errorf("clear snapshot dir: %w", err)
	}
	if err := os.MkdirAll(snap, 0o700); err != nil {
		return e.sb, fmt.Errorf("create snapshot dir: %w", err)
	}
	inst := e.inst
	if addr, err := netip.ParseAddr(e.sb.Address); err == nil {
		if err := network.DropConnections(addr); err != nil {
			o.log.Warn("drop host connections before pause", "id", id, "err", err)
		}
	}
	// The intent first: a crash from here on is settled by reconcile
	// (the pause finished when the saved state is whole, else rolled back).
	e.sb.Pausing = true
	e.sb.Snapshot = filepath.Join(snap, "state")
	if err := o.writeRecord(&e.sb); err != nil {
		e.sb.Pausing, e.sb.Snapshot = false, ""
		return e.sb, fmt.Errorf("record pause intent: %w", err)
	}
	// Detach first so that watch() does not report the exit as a death.
	e.sb.State = StatePaused
	if err := inst.Pause(ctx, e.sb.Snapshot); err != nil {
		e.sb.State = StateRunning
		e.sb.Pausing, e.sb.Snapshot = false, ""
		_ = os.RemoveAll(snap)
		if werr := o.writeRecord(&e.sb); werr != nil {
			o.log.Warn("clear pause intent", "id", id, "err", werr)
		}
		return e.sb, fmt.Errorf("pause: %w", err)
	}
	e.inst = nil
	// Its address goes back to the pool: routes to it go first.
	o.events.publish(Sandbox{ID: id, State: StatePaused})
	if err := o.finishPause(ctx, &e.sb); err != nil {
		return e.sb, err
	}
	o.mu.Lock()
	delete(o.sandboxes, id)
	o.mu.Unlock()
	return e.sb, nil
}

// finishPause records sb, whose state is saved in <snapshots>/<id>/state,
// as paused (record.json there marks the pause complete), and releases
// what it held as a running sandbox.
func (o *Orchestrator) finishPause(ctx context.Context, sb *Sandbox) error {
	if sb.Slot != nil {
		if err := o.cfg.Slots.Release(ctx, sb.Slot); err != nil {
			o.log.Warn("release slot", "id", sb.ID, "err", err)
		}
	}
	sb.State = StatePaused
	sb.Pausing = false
	sb.Slot = nil
	sb.Address = ""
	sb.Snapshot = filepath.Join(o.SnapshotDir(sb.ID), "state")
	if err := writeJSON(filepath.Join(o.SnapshotDir(sb.ID), "record.json"), sb); err != nil {
		return err
	}
	_ = os.RemoveAll(filepath.Join(o.sandboxRoot(), sb.runtimeName()))
	_ = os.Remove(o.recordPath(sb.ID))
	return nil
}

func (o *Orchestrator) pausedRecord(id string) (Sandbox, error) {
	if !validID(id) {
		return Sandbox{}, ErrNotFound
	}
	var sb Sandbox
	b, err := os.ReadFile(filepath.Join(o.SnapshotDir(id), "record.json"))
	if err != nil {
		return Sandbox{}, ErrNotFound
	}
	if err := json.Unmarshal(b, &sb); err != nil {
		return Sandbox{}, fmt.Errorf("decode paused record: %w", err)
	}
	return sb, nil
}

// Kill stops a sandbox and releases everything it holds. Killing an unknown
// sandbox succeeds. With deleteSnapshot, its paused state goes too.
func (o *Orchestrator) Kill(ctx context.Context, id string, deleteSnapshot bool) error {
	if !validID(id) {
		return nil
	}
	if e, err := o.entry(id); err == nil {
		e.mu.Lock()
		inst := e.inst
		e.inst = nil
		if inst != nil {
			// Before the slot can go to another sandbox: routes to this
			// address must go first (a fleet's proxies cache them).
			o.events.publish(Sandbox{ID: id, State: StateDead, Detail: runtime.ReasonKilled})
		}
		e.sb.State = StateDead
		if inst != nil {
			if err := inst.Kill(ctx); err != nil {
				e.mu.Unlock()
				return fmt.Errorf("kill: %w", err)
			}
		}
		if e.sb.Slot != nil {
			if err := o.cfg.Slots.Release(ctx, e.sb.Slot); err != nil {
				o.log.Warn("release slot", "id", id, "err", err)
			}
			e.sb.Slot = nil
		}
		e.mu.Unlock()
		o.mu.Lock()
		delete(o.sandboxes, id)
		o.mu.Unlock()
	}
	_ = os.RemoveAll(filepath.Join(o.sandboxRoot(), id))
	_ = os.Remove(o.recordPath(id))
	if deleteSnapshot {
		if err := os.RemoveAll(o.SnapshotDir(id)); err != nil {
			return fmt.Errorf("remove snapshot: %w", err)
		}
	}
	return nil
}

// Close stops no sandbox: sandboxes outlive the orchestrator process and
// are re-adopted by the next one. It discards the warm pool's prespawned
// processes and releases their slots.
func (o *Orchestrator) Close() error {
	o.pool.close()
	return nil
}

// KillAll kills every running sandbox (used by tests and `--kill-on-exit`).
func (o *Orchestrator) KillAll(ctx context.Context) error {
	var errs []error
	for _, sb := range o.List(ctx) {
		if sb.State == StatePaused {
			continue
		}
		errs = append(errs, o.Kill(ctx, sb.ID, false))
	}
	return errors.Join(errs...)
}

func (o *Orchestrator) recordPath(id string) string {
	return filepath.Join(o.recordDir(), id+".json")
}

func (o *Orchestrator) writeRecord(sb *Sandbox) error {
	return writeJSON(o.recordPath(sb.ID), sb)
}

// writeJSON writes v atomically (temp file + rename) so that a crash never
// leaves a torn record.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// validID accepts the IDs the api generates: lowercase alphanumerics.
// Checking here keeps IDs from ever naming a path outside our directories.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
