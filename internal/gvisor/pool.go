package gvisor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// prespawned is a container restored from a template's checkpoint ahead of
// a create: envd has answered /health and a harmless /init
// (runtime.WarmInit), and the container's processes run at
// runtime.PoolNice. It keeps its container ID and directory when claimed
// (runsc cannot rename a container); the instance reports that ID through
// runtime.Named so the orchestrator can adopt it after a restart.
type prespawned struct {
	inst   *instance
	gofers []int // the container's gofer processes
	slot   *network.Slot
	vcpus  int
	memory int
}

var _ runtime.Prespawner = (*Driver)(nil)

// Prespawn implements runtime.Prespawner: it restores t's checkpoint into
// dir (the container is named after dir) and slot, niced, and waits until
// envd has run one /init.
func (d *Driver) Prespawn(ctx context.Context, t *runtime.Template, slot *network.Slot, dir string) (runtime.Prespawned, error) {
	spec := runtime.Spec{ID: filepath.Base(dir), Dir: dir, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB, Slot: slot}
	inst, err := d.restore(ctx, runtime.Source{Template: t}, spec, runtime.PoolNice)
	if err != nil {
		return nil, fmt.Errorf("gvisor: prespawn: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	addr := slot.Addr.Addr()
	err = WaitEnvd(wctx, addr)
	if err == nil {
		err = runtime.WarmInit(wctx, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, envdURL(addr))
	}
	if err != nil {
		inst.Kill(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("gvisor: prespawn: %w; console: %s", err, runtime.TailLog(inst.ConsoleLog(), 10))
	}
	return &prespawned{inst: inst, gofers: goferPIDs(dir), slot: slot, vcpus: t.VCPUs, memory: t.MemoryMB}, nil
}

func envdURL(addr netip.Addr) string {
	return "http://" + netip.AddrPortFrom(addr, EnvdPort).String()
}

func (p *prespawned) Done() <-chan struct{} { return p.inst.done }

func (p *prespawned) Discard(ctx context.Context) error { return p.inst.Kill(ctx) }

// Claim implements runtime.Prespawned: the container becomes spec's
// sandbox in place and goes back to normal priority.
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
	// The sandbox process, its systrap stubs (which run the sandbox's
	// code) and the gofer.
	if err := runtime.Renice(0, runtime.Descendants(append([]int{p.inst.pid}, p.gofers...)...)...); err != nil {
		p.inst.d.cfg.Logger.Warn("gvisor: renice claimed container", "id", spec.ID, "err", err)
	}
	return p.inst, nil
}

// RuntimeID implements runtime.Named.
func (i *instance) RuntimeID() string { return i.id }

// goferPIDs finds the runsc gofer serving the bundle in dir: the process
// whose command line holds --bundle=<dir>, other than the sandbox.
func goferPIDs(dir string) []int {
	want := "--bundle=" + dir
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) < 10 || string(b[:10]) != "runsc-gofe" {
			continue
		}
		for _, a := range splitNUL(b) {
			if a == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func splitNUL(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	if start < len(b) {
		out = append(out, string(b[start:]))
	}
	return out
}
