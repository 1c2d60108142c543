package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
)

// Warm pool: runtimes that can prespawn (QEMU, gVisor) get a few sandboxes
// per template snapshot restored ahead of creates, each bound to a network
// slot of its own (a microvm's virtio-mmio NIC cannot be hot-added after a
// restore, QEMU needs the TAP when it starts, and gVisor takes the slot's
// address into its own stack at restore, so the slot is part of the pool
// entry). A create then only claims one and sends its /init.
//
// Pooled sandboxes live in <data>/sandboxes/w<hex>/ until claimed (QEMU
// ones at niceness 15); reconcile after a crash finds them there like any
// sandbox no record names (by command line, working directory or runsc
// container) and removes them, so a crash leaks nothing, and Close
// discards them. <data>/pool/ is where earlier versions kept them; it is
// still cleaned at start.
//
// Size: between Config.WarmMin and Config.WarmMax per template, following
// the create rate: the target is the number of creates of that template in
// the last two seconds (at least WarmMin), refilled in the background by
// at most warmSpawners processes at a time.

const (
	defaultWarmMin = 1
	defaultWarmMax = 4
	warmWindow     = 2 * time.Second
	warmSpawners   = 2
)

type poolKey struct{ runtime, templateDir string }

type warmEntry struct {
	p    runtime.Prespawned
	slot *network.Slot
}

type warmQueue struct {
	ready    []*warmEntry
	added    chan struct{} // closed (and replaced) when an entry is queued
	spawning int
	creates  []time.Time
	tmpl     *runtime.Template
	rt       runtime.Prespawner
}

type warmPool struct {
	o      *Orchestrator
	mu     sync.Mutex
	queues map[poolKey]*warmQueue
	closed bool
	wg     sync.WaitGroup
}

func (o *Orchestrator) poolRoot() string { return filepath.Join(o.cfg.DataDir, "pool") }

func (o *Orchestrator) warmLimits() (lo, hi int) {
	lo, hi = o.cfg.WarmMin, o.cfg.WarmMax
	if hi == 0 {
		hi = defaultWarmMax
	}
	if lo == 0 {
		lo = defaultWarmMin
	}
	if hi < 0 {
		return 0, 0
	}
	return min(lo, hi), hi
}

// take returns a prespawned process for the template, or nil, and tops
// the pool up in the background either way.
func (w *warmPool) take(rtName string, rt runtime.Runtime, tmpl *runtime.Template, templateDir string) *warmEntry {
	ps, ok := rt.(runtime.Prespawner)
	if _, hi := w.o.warmLimits(); !ok || hi == 0 {
		return nil
	}
	k := poolKey{rtName, templateDir}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	q := w.queues[k]
	if q == nil {
		q = &warmQueue{rt: ps}
		w.queues[k] = q
	}
	q.tmpl = tmpl
	now := time.Now()
	q.creates = append(q.creates, now)
	got := q.popLocked()
	w.fillLocked(k, q)
	return got
}

// popLocked returns the first live ready entry, or nil.
func (q *warmQueue) popLocked() *warmEntry {
	for len(q.ready) > 0 {
		e := q.ready[0]
		q.ready = q.ready[1:]
		select {
		case <-e.p.Done(): // died while waiting: the watcher frees it
		default:
			return e
		}
	}
	return nil
}

// waitOrStart waits until a token can be put into starting (it returns
// nil: the caller restores the usual way and takes the token out when
// done) or, when pooled, until an entry of the pool of (rtName,
// templateDir) is ready (it returns the entry).
func (w *warmPool) waitOrStart(ctx context.Context, pooled bool, rtName, templateDir string, starting chan struct{}) (*warmEntry, error) {
	for {
		var added chan struct{}
		if pooled {
			w.mu.Lock()
			if q := w.queues[poolKey{rtName, templateDir}]; q != nil && !w.closed {
				if e := q.popLocked(); e != nil {
					w.mu.Unlock()
					return e, nil
				}
				if q.spawning > 0 {
					if q.added == nil {
						q.added = make(chan struct{})
					}
					added = q.added
				}
			}
			w.mu.Unlock()
		}
		select {
		case starting <- struct{}{}:
			return nil, nil
		case <-added: // nil when nothing is on its way: blocks forever
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// warm starts filling the pool of a template without a create.
func (w *warmPool) warm(rtName string, rt runtime.Runtime, tmpl *runtime.Template, templateDir string) {
	ps, ok := rt.(runtime.Prespawner)
	if _, hi := w.o.warmLimits(); !ok || hi == 0 {
		return
	}
	k := poolKey{rtName, templateDir}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if w.queues[k] == nil {
		w.queues[k] = &warmQueue{rt: ps, tmpl: tmpl}
	}
	w.fillLocked(k, w.queues[k])
}

// targetLocked is the pool size q should have now.
func (w *warmPool) targetLocked(q *warmQueue) int {
	lo, hi := w.o.warmLimits()
	cut := time.Now().Add(-warmWindow)
	i := 0
	for i < len(q.creates) && q.creates[i].Before(cut) {
		i++
	}
	q.creates = q.creates[i:]
	return max(lo, min(hi, len(q.creates)))
}

func (w *warmPool) fillLocked(k poolKey, q *warmQueue) {
	for !w.closed && q.spawning < warmSpawners && len(q.ready)+q.spawning < w.targetLocked(q) {
		q.spawning++
		w.wg.Add(1)
		go w.spawn(k, q, q.rt, q.tmpl)
	}
}

// spawn prespawns one process for q and queues it; it keeps going while
// the pool is below its target.
func (w *warmPool) spawn(k poolKey, q *warmQueue, rt runtime.Prespawner, tmpl *runtime.Template) {
	defer w.wg.Done()
	o := w.o
	ctx := context.Background()
	e, err := func() (*warmEntry, error) {
		slot, err := o.cfg.Slots.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		o.refillSlots()
		// Under sandboxes/, like the sandbox it becomes: a gVisor entry
		// keeps its directory when claimed. After a crash reconcile removes
		// unclaimed entries with the other leftovers there.
		p, err := rt.Prespawn(ctx, tmpl, slot, filepath.Join(o.sandboxRoot(), newPoolID()))
		if err != nil {
			o.releaseSlot(slot)
			return nil, err
		}
		return &warmEntry{p: p, slot: slot}, nil
	}()
	o.cfg.Metrics.Refill(k.runtime, err)
	w.mu.Lock()
	q.spawning--
	if err != nil {
		w.mu.Unlock()
		o.log.Warn("warm pool: prespawn failed", "runtime", k.runtime, "template", k.templateDir, "err", err)
		return
	}
	if w.closed {
		w.mu.Unlock()
		w.discard(e)
		return
	}
	q.ready = append(q.ready, e)
	if q.added != nil {
		close(q.added)
		q.added = nil
	}
	w.fillLocked(k, q)
	w.mu.Unlock()
	go w.watch(k, e)
}

// watch frees an entry whose process dies while it waits in the pool.
func (w *warmPool) watch(k poolKey, e *warmEntry) {
	<-e.p.Done()
	w.mu.Lock()
	q := w.queues[k]
	found := false
	if q != nil {
		for i, x := range q.ready {
			if x == e {
				q.ready = append(q.ready[:i], q.ready[i+1:]...)
				found = true
				break
			}
		}
	}
	w.mu.Unlock()
	if found {
		w.o.log.Warn("warm pool: a pooled process exited", "runtime", k.runtime)
		w.discard(e)
	}
}

func (w *warmPool) discard(e *warmEntry) {
	if err := e.p.Discard(context.Background()); err != nil {
		w.o.log.Warn("warm pool: discard", "err", err)
	}
	w.o.releaseSlot(e.slot)
}

// close discards every pooled process and waits for spawns in flight.
func (w *warmPool) close() {
	w.mu.Lock()
	w.closed = true
	var all []*warmEntry
	for _, q := range w.queues {
		all = append(all, q.ready...)
		q.ready = nil
	}
	w.mu.Unlock()
	for _, e := range all {
		w.discard(e)
	}
	w.wg.Wait()
}

// Size reports the pooled processes ready per runtime and template.
func (w *warmPool) size() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, q := range w.queues {
		n += len(q.ready)
	}
	return n
}

// WarmSizes reports the pooled processes ready per runtime.
func (o *Orchestrator) WarmSizes() map[string]int {
	w := o.pool
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for k, q := range w.queues {
		out[k.runtime] += len(q.ready)
	}
	return out
}

func (o *Orchestrator) releaseSlot(s *network.Slot) {
	if err := o.cfg.Slots.Release(context.Background(), s); err != nil {
		o.log.Warn("release slot", "slot", s.Index, "err", err)
	}
}

// cleanPool kills whatever an earlier process left in the pool directory.
func (o *Orchestrator) cleanPool() error {
	root := o.poolRoot()
	killed, err := killStrays(root, func(string) bool { return false }, o.log)
	if err != nil {
		return err
	}
	if err := waitExited(killed, 10*time.Second); err != nil {
		return err
	}
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	return os.MkdirAll(root, 0o700)
}

// Warm starts filling the warm pool of a template (for the runtimes that
// prespawn) before the first create asks for it.
func (o *Orchestrator) Warm(runtimeName, templateDir string) error {
	rt, name, err := o.runtimeFor(runtimeName)
	if err != nil {
		return err
	}
	tmpl, err := base.Load(templateDir)
	if err != nil {
		return err
	}
	o.pool.warm(name, rt, tmpl, templateDir)
	return nil
}

// WarmSize is the number of prespawned processes ready.
func (o *Orchestrator) WarmSize() int { return o.pool.size() }

func newPoolID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "w" + hex.EncodeToString(b)
}
