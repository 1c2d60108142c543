package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// reconcile re-adopts the sandboxes named by records and removes everything
// else: stray runtime processes, sandbox directories and network slots.
func (o *Orchestrator) reconcile(ctx context.Context) error {
	records, err := os.ReadDir(o.recordDir())
	if err != nil {
		return err
	}
	for _, r := range records {
		name := r.Name()
		if !strings.HasSuffix(name, ".json") {
			_ = os.Remove(filepath.Join(o.recordDir(), name)) // torn temp file
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		if err := o.adopt(ctx, id); err != nil {
			o.log.Warn("sandbox not re-adopted; cleaning it up", "id", id, "err", err)
			_ = os.Remove(filepath.Join(o.recordDir(), name))
		}
	}
	keep := func(id string) bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		_, ok := o.sandboxes[id]
		return ok
	}
	var errs []error
	for name, rt := range o.cfg.Runtimes {
		if rc, ok := rt.(runtime.Reconciler); ok {
			if err := rc.Reconcile(ctx, keep); err != nil {
				errs = append(errs, err)
				o.log.Warn("runtime reconcile", "runtime", name, "err", err)
			}
		}
	}
	dirs, err := os.ReadDir(o.sandboxRoot())
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if !keep(d.Name()) {
			o.log.Info("removing leftover sandbox directory", "id", d.Name())
			errs = append(errs, os.RemoveAll(filepath.Join(o.sandboxRoot(), d.Name())))
		}
	}
	inUse := map[int]bool{}
	o.mu.Lock()
	for _, e := range o.sandboxes {
		if e.sb.Slot != nil {
			inUse[e.sb.Slot.Index] = true
		}
	}
	o.mu.Unlock()
	if err := o.cfg.Slots.Reconcile(ctx, func(i int) bool { return inUse[i] }); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (o *Orchestrator) adopt(ctx context.Context, id string) error {
	b, err := os.ReadFile(o.recordPath(id))
	if err != nil {
		return err
	}
	var sb Sandbox
	if err := json.Unmarshal(b, &sb); err != nil {
		return err
	}
	rt, _, err := o.runtimeFor(sb.Runtime)
	if err != nil {
		return err
	}
	inst, err := rt.Adopt(ctx, runtime.Spec{
		ID:       sb.ID,
		Dir:      filepath.Join(o.sandboxRoot(), sb.ID),
		VCPUs:    sb.VCPUs,
		MemoryMB: sb.MemoryMB,
		Slot:     sb.Slot,
	})
	if err != nil {
		return err
	}
	e := &entry{sb: sb, inst: inst}
	o.mu.Lock()
	o.sandboxes[id] = e
	o.mu.Unlock()
	go o.watch(id, e, inst)
	o.log.Info("re-adopted sandbox", "id", id, "runtime", sb.Runtime)
	return nil
}
