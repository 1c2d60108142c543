package orchestrator

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// fakeSlots hands out numbered slots and records releases.
type fakeSlots struct {
	mu       sync.Mutex
	next     int
	inUse    map[int]bool
	released int
}

func (f *fakeSlots) Acquire(context.Context) (*network.Slot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	f.inUse[f.next] = true
	return &network.Slot{Index: f.next}, nil
}

func (f *fakeSlots) Release(_ context.Context, s *network.Slot) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inUse, s.Index)
	f.released++
	return nil
}

func (f *fakeSlots) SetEgress(context.Context, *network.Slot, network.Egress) error { return nil }
func (f *fakeSlots) Reconcile(context.Context, func(int) bool) error                { return nil }

func (f *fakeSlots) used() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.inUse)
}

// fakeRuntime prespawns fake processes.
type fakeRuntime struct {
	mu    sync.Mutex
	procs []*fakeProc
	gate  chan struct{} // when set, each Prespawn waits for a value
}

type fakeProc struct {
	done      chan struct{}
	once      sync.Once
	discarded atomic.Bool
}

func (p *fakeProc) Claim(context.Context, runtime.Spec) (runtime.Instance, error) { return nil, nil }
func (p *fakeProc) Discard(context.Context) error {
	p.discarded.Store(true)
	p.exit()
	return nil
}
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) exit()                 { p.once.Do(func() { close(p.done) }) }

func (r *fakeRuntime) Name() string { return "fake" }
func (r *fakeRuntime) BuildSnapshot(context.Context, *runtime.Template, *network.Slot, string) error {
	return nil
}
func (r *fakeRuntime) Restore(context.Context, runtime.Source, runtime.Spec) (runtime.Instance, error) {
	return nil, nil
}
func (r *fakeRuntime) Adopt(context.Context, runtime.Spec) (runtime.Instance, error) {
	return nil, nil
}
func (r *fakeRuntime) Prespawn(context.Context, *runtime.Template, *network.Slot, string) (runtime.Prespawned, error) {
	if r.gate != nil {
		<-r.gate
	}
	p := &fakeProc{done: make(chan struct{})}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return p, nil
}

func newPoolTest(t *testing.T, lo, hi int) (*Orchestrator, *fakeSlots, *fakeRuntime) {
	slots := &fakeSlots{inUse: map[int]bool{}}
	rt := &fakeRuntime{}
	o := &Orchestrator{cfg: Config{DataDir: t.TempDir(), Slots: slots, WarmMin: lo, WarmMax: hi,
		Runtimes: map[string]runtime.Runtime{"fake": rt}, Default: "fake"},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	o.pool = &warmPool{o: o, queues: map[poolKey]*warmQueue{}}
	return o, slots, rt
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWarmPoolFollowsCreateRateAndCleansUp(t *testing.T) {
	o, slots, rt := newPoolTest(t, 1, 3)
	tmpl := &runtime.Template{}
	// The first create misses and starts filling (target: 1 create in
	// the window, at least WarmMin).
	if e := o.pool.take("fake", rt, tmpl, "/t"); e != nil {
		t.Fatal("empty pool handed out an entry")
	}
	eventually(t, "one pooled process", func() bool { return o.WarmSize() == 1 })
	// A burst raises the target up to WarmMax, never beyond.
	var got []*warmEntry
	for range 5 {
		if e := o.pool.take("fake", rt, tmpl, "/t"); e != nil {
			got = append(got, e)
		}
	}
	if len(got) == 0 {
		t.Fatal("no create was served from the pool")
	}
	eventually(t, "pool at its maximum", func() bool { return o.WarmSize() == 3 })
	time.Sleep(50 * time.Millisecond)
	if n := o.WarmSize(); n != 3 {
		t.Fatalf("pool grew to %d, max 3", n)
	}
	// Each entry owns a slot; handed-out ones belong to their sandboxes.
	if want := 3 + len(got); slots.used() != want {
		t.Fatalf("%d slots in use, want %d", slots.used(), want)
	}
	// A pooled process that dies is dropped and its slot released.
	o.pool.mu.Lock()
	victim := o.pool.queues[poolKey{"fake", "/t"}].ready[0].p.(*fakeProc)
	o.pool.mu.Unlock()
	victim.exit()
	eventually(t, "dead entry dropped", func() bool { return victim.discarded.Load() })
	// Close discards every pooled process and releases their slots.
	o.Close()
	if n := o.WarmSize(); n != 0 {
		t.Fatalf("%d pooled processes after Close", n)
	}
	if want := len(got); slots.used() != want {
		t.Fatalf("%d slots in use after Close, want %d (the claimed ones)", slots.used(), want)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, p := range rt.procs {
		claimed := false
		for _, e := range got {
			claimed = claimed || e.p == runtime.Prespawned(p)
		}
		if !claimed && !p.discarded.Load() {
			t.Fatal("a pooled process survived Close")
		}
	}
	if e := o.pool.take("fake", rt, tmpl, "/t"); e != nil {
		t.Fatal("closed pool handed out an entry")
	}
}

func TestWarmPoolDisabled(t *testing.T) {
	o, slots, rt := newPoolTest(t, 0, -1)
	if e := o.pool.take("fake", rt, &runtime.Template{}, "/t"); e != nil {
		t.Fatal("disabled pool handed out an entry")
	}
	time.Sleep(20 * time.Millisecond)
	if o.WarmSize() != 0 || slots.used() != 0 {
		t.Fatalf("disabled pool spawned: %d pooled, %d slots", o.WarmSize(), slots.used())
	}
}

func TestWaitOrStart(t *testing.T) {
	o, _, rt := newPoolTest(t, 1, 2)
	rt.gate = make(chan struct{})
	defer o.Close()
	defer close(rt.gate)
	tmpl := &runtime.Template{}
	starting := make(chan struct{}, 1)
	ctx := context.Background()

	// A free token: restore the usual way at once.
	if e := o.pool.take("fake", rt, tmpl, "/t"); e != nil {
		t.Fatal("empty pool handed out an entry")
	}
	e, err := o.pool.waitOrStart(ctx, true, "fake", "/t", starting)
	if e != nil || err != nil || len(starting) != 1 {
		t.Fatalf("got %v, %v with %d tokens taken, want a token", e, err, len(starting))
	}

	// No token free: a pooled create takes the entry whose spawn finishes.
	got := make(chan *warmEntry)
	go func() {
		e, err := o.pool.waitOrStart(ctx, true, "fake", "/t", starting)
		if err != nil {
			t.Error(err)
		}
		got <- e
	}()
	select {
	case e := <-got:
		t.Fatalf("returned %v before a token or an entry was free", e)
	case <-time.After(50 * time.Millisecond):
	}
	rt.gate <- struct{}{}
	select {
	case e := <-got:
		if e == nil {
			t.Fatal("got a token, want the pool entry")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting create did not get the new pool entry")
	}

	// Not poolable (a resume, another shape): only a token will do; the
	// wait ends with its context.
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if e, err := o.pool.waitOrStart(cctx, false, "fake", "/t", starting); e != nil || err == nil {
		t.Fatalf("got %v, %v, want the context's error", e, err)
	}
	// A token given back is taken by the next waiter.
	<-starting
	if e, err := o.pool.waitOrStart(ctx, false, "fake", "/t", starting); e != nil || err != nil {
		t.Fatalf("got %v, %v, want the freed token", e, err)
	}
}
