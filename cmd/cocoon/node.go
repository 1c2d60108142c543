package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// nodeFlags choose and configure the runtimes of a node.
type nodeFlags struct {
	runtime     string // auto | qemu | gvisor
	accel       string // auto | kvm | tcg
	netPrefix   string
	netPool     string
	installRSC  bool
	cgroupLimit bool
	asRoot      bool
}

func (f *nodeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.runtime, "runtime", envOr("COCOON_RUNTIME", "auto"),
		"default runtime: auto (microVM with KVM when a KVM boot works, else gVisor), qemu, gvisor")
	fl.StringVar(&f.accel, "accel", envOr("COCOON_ACCEL", "auto"), "QEMU accelerator: auto (probe by booting), kvm, tcg")
	fl.StringVar(&f.netPrefix, "net-prefix", "cocoon", "name prefix of network namespaces and devices")
	fl.StringVar(&f.netPool, "net-pool", "10.200.0.0/16", "address pool of the per-sandbox links")
	fl.BoolVar(&f.installRSC, "install-runsc", true, "build runsc (gVisor) into <data-dir>/bin when it is missing")
	fl.BoolVar(&f.cgroupLimit, "cgroups", true, "put each sandbox in its own cgroup with CPU, memory, pids and I/O limits")
	fl.BoolVar(&f.asRoot, "sandboxes-as-root", false,
		"run QEMU and gVisor's sandbox and gofer as root instead of unprivileged host ids (for filesystems without idmapped mounts)")
}

// node is what one orchestrator runs on: its runtimes and network slots.
type node struct {
	runtimes map[string]runtime.Runtime
	def      string
	accel    string
	reason   string
	slots    *network.Manager
}

// openNode sets up the runtimes this host can run and picks the default.
// A KVM boot probe needs a kernel: tmpl is the base template, or nil.
func openNode(ctx context.Context, dataDir string, f *nodeFlags, tmpl *runtime.Template, log *slog.Logger) (*node, error) {
	pool, err := parsePrefix(f.netPool)
	if err != nil {
		return nil, err
	}
	slots, err := network.NewManager(network.Config{Prefix: f.netPrefix, Pool: pool})
	if err != nil {
		return nil, err
	}
	n := &node{runtimes: map[string]runtime.Runtime{}, slots: slots}
	var problems []string
	if err := checkSandboxIDs("/etc"); err != nil && !f.asRoot {
		log.Error("host accounts overlap the sandboxes' ids; they could reach the sandboxes' processes", "err", err)
	}

	cg := ""
	if !f.cgroupLimit {
		cg = "-"
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		accel := vmm.Accel("")
		switch f.accel {
		case "kvm":
			accel = vmm.AccelKVM
		case "tcg":
			accel = vmm.AccelTCG
		case "auto", "":
			if tmpl != nil {
				a, err := vmm.ProbeAccel(ctx, dataDir, tmpl.Kernel, tmpl.Initrd)
				if err != nil {
					log.Warn("KVM probe failed; assuming TCG", "err", err)
					a = vmm.AccelTCG
				}
				accel = a
			} else {
				accel = vmm.AccelTCG
			}
		default:
			return nil, fmt.Errorf("--accel %q: want auto, kvm or tcg", f.accel)
		}
		rt, err := vmm.New(vmm.Options{DataDir: dataDir, Accel: accel, CgroupParent: cg, AsRoot: f.asRoot, Logger: log})
		if err != nil {
			problems = append(problems, "qemu: "+err.Error())
		} else {
			n.runtimes[vmm.Name] = rt
			n.accel = string(accel)
		}
	} else {
		problems = append(problems, "qemu: qemu-system-x86_64 not installed")
	}

	runsc := filepath.Join(dataDir, "bin", "runsc")
	if f.installRSC {
		if p, err := gvisor.Install(ctx, dataDir); err != nil {
			problems = append(problems, "gvisor: "+err.Error())
		} else {
			runsc = p
		}
	}
	gcg := ""
	if !f.cgroupLimit {
		gcg = "-"
	}
	if d, err := gvisor.New(ctx, gvisor.Config{
		Runsc:        runsc,
		StateDir:     filepath.Join(dataDir, "gvisor", "state"),
		CgroupParent: gcg,
		ReapplyAddr:  network.ReapplyAddr,
		AsRoot:       f.asRoot,
	}); err != nil {
		problems = append(problems, "gvisor: "+err.Error())
	} else {
		n.runtimes[gvisor.Name] = d
	}

	switch f.runtime {
	case "auto", "":
		switch {
		case n.accel == string(vmm.AccelKVM):
			n.def, n.reason = vmm.Name, "a KVM boot succeeded on this host: microVMs at native speed"
		case n.runtimes[gvisor.Name] != nil:
			n.def, n.reason = gvisor.Name, "no usable KVM on this host (a KVM boot did not succeed): gVisor runs user code at near-native speed, a TCG microVM 10-17x slower"
		case n.runtimes[vmm.Name] != nil:
			n.def, n.reason = vmm.Name, "no usable KVM and gVisor is not available: QEMU with TCG (software emulation)"
		}
	case vmm.Name, gvisor.Name:
		if n.runtimes[f.runtime] == nil {
			return nil, fmt.Errorf("--runtime %s is not available here: %s", f.runtime, strings.Join(problems, "; "))
		}
		n.def, n.reason = f.runtime, "asked for with --runtime"
	default:
		return nil, fmt.Errorf("--runtime %q: want auto, qemu or gvisor", f.runtime)
	}
	if n.def == "" {
		return nil, errors.New("no sandbox runtime works on this host: " + strings.Join(problems, "; "))
	}
	for _, p := range problems {
		log.Warn("runtime unavailable", "problem", p)
	}
	return n, nil
}

// names lists the node's runtimes, the default first.
func (n *node) names() []string {
	out := []string{n.def}
	for name := range n.runtimes {
		if name != n.def {
			out = append(out, name)
		}
	}
	slices.Sort(out[1:])
	return out
}
