package gvisor

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// prespawned is a container restored from a template's checkpoint ahead of
// a create: envd has answered /health, a harmless /init
// (runtime.WarmInit) and one commands.run('true') (runtime.WarmExec). It keeps its container ID and directory when claimed
// (runsc cannot rename a container); the instance reports that ID through
// runtime.Named so the orchestrator can adopt it after a restart.
//
// Unlike a pooled QEMU it is not niced: systrap runs the sandbox's code in
// stub processes, and stubs forked after a claim still came out niced
// (16) although the whole process tree had been reniced to 0, so a claimed
// sandbox's user code ran at low priority (a Python loop 1.6× the host's
// while the pool refilled, 0.94× alone).
type prespawned struct {
	inst   *instance
	slot   *network.Slot
	vcpus  int
	memory int
}

var _ runtime.Prespawner = (*Driver)(nil)

// Prespawn implements runtime.Prespawner: it restores t's checkpoint into
// dir (the container is named after dir) and slot and waits until envd has
// run one /init.
func (d *Driver) Prespawn(ctx context.Context, t *runtime.Template, slot *network.Slot, dir string) (runtime.Prespawned, error) {
	spec := runtime.Spec{ID: filepath.Base(dir), Dir: dir, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB, Slot: slot}
	inst, err := d.restore(ctx, runtime.Source{Template: t}, spec)
	if err != nil {
		return nil, fmt.Errorf("gvisor: prespawn: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	addr := slot.Addr.Addr()
	err = WaitEnvd(wctx, addr)
	if err == nil {
		err = runtime.WarmInit(wctx, d.envd, envdURL(addr))
	}
	if err == nil {
		// The template's snapshot was warmed the same way, but each
		// sandbox's systrap stubs are its own: made here, not on the
		// user's first command.
		err = runtime.WarmExec(wctx, d.envd, envdURL(addr))
	}
	if err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("gvisor: prespawn: %w; console: %s", err, runtime.TailLog(inst.ConsoleLog(), 10))
	}
	return &prespawned{inst: inst, slot: slot, vcpus: t.VCPUs, memory: t.MemoryMB}, nil
}

func (p *prespawned) Done() <-chan struct{} { return p.inst.done }

func (p *prespawned) Discard(ctx context.Context) error { return p.inst.Kill(ctx) }

// Claim implements runtime.Prespawned: the container becomes spec's
// sandbox in place.
func (p *prespawned) Claim(ctx context.Context, spec runtime.Spec) (runtime.Instance, error) {
	fail := func(err error) (runtime.Instance, error) {
		p.inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("gvisor: claim pooled container for %s: %w", spec.ID, err)
	}
	if spec.Slot == nil || spec.Slot.Index != p.slot.Index {
		return fail(errors.New("the sandbox's slot is not the one the container was restored in"))
	}
	if (spec.VCPUs != 0 && spec.VCPUs != p.vcpus) || (spec.MemoryMB != 0 && spec.MemoryMB != p.memory) {
		return fail(fmt.Errorf("pooled container has %d vCPUs and %d MiB, spec asks %d and %d", p.vcpus, p.memory, spec.VCPUs, spec.MemoryMB))
	}
	select {
	case <-p.inst.done:
		return fail(errors.New("the container exited while it waited"))
	default:
	}
	return p.inst, nil
}

// RuntimeID implements runtime.Named.
func (i *instance) RuntimeID() string { return i.id }
