package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/template/base"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// runHostCompute runs the compute workload on the host, with Debian's
// python3 (the one the base template has).
func runHostCompute(ctx context.Context, cfg *Config, rep *Report) error {
	py := "/usr/bin/python3"
	var v []float64
	for range cfg.ComputeRuns {
		out, err := exec.CommandContext(ctx, py, "-c", computeScript).Output()
		if err != nil {
			return fmt.Errorf("host python: %w", err)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			return fmt.Errorf("host python output %q: %w", out, err)
		}
		v = append(v, f)
	}
	r := distResult("compute.python_loop", "host", "native", "ms", v)
	r.Note = "10^6 additions, timed inside " + py
	rep.add(r)
	return nil
}

// runBaselines measures the floors: fork+exec of true, `runc run` of the
// template's root filesystem, a cold boot of the template's microVM.
func runBaselines(ctx context.Context, cfg *Config, rep *Report) error {
	var s Samples
	for range cfg.Floors {
		t0 := time.Now()
		if err := exec.CommandContext(ctx, "/bin/true").Run(); err != nil {
			return fmt.Errorf("fork+exec true: %w", err)
		}
		s = append(s, time.Since(t0))
	}
	rep.add(msResult("floor.fork_exec_true", "host", "native", s))

	tmpl, err := loadTemplate(cfg.DataDir, cfg.Template)
	if err != nil {
		return err
	}
	if err := runcBaseline(ctx, cfg, rep, tmpl); err != nil {
		rep.Errors = append(rep.Errors, "runc: "+err.Error())
	}
	if cfg.ColdBoots > 0 {
		if err := coldBootBaseline(ctx, cfg, rep, tmpl); err != nil {
			rep.Errors = append(rep.Errors, "cold boot: "+err.Error())
		}
	}
	return nil
}

// loadTemplate loads the current build of template name in dataDir.
func loadTemplate(dataDir, name string) (*runtime.Template, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "templates", name, "current"))
	if err != nil {
		return nil, fmt.Errorf("template %s is not built in %s: %w", name, dataDir, err)
	}
	return base.Load(strings.TrimSpace(string(b)))
}

// runcBaseline runs `runc run` of /bin/true in a bundle whose root is the
// template's root filesystem (read-only), Debian's runc with its default
// spec (new pid, mount, ipc, uts, network namespaces).
func runcBaseline(ctx context.Context, cfg *Config, rep *Report, tmpl *runtime.Template) error {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return fmt.Errorf("runc not installed (apt-get install -y runc): %w", err)
	}
	bundle, err := os.MkdirTemp("", "cocoon-bench-runc")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bundle)
	if out, err := exec.CommandContext(ctx, runc, "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		return fmt.Errorf("runc spec: %w: %s", err, out)
	}
	specPath := filepath.Join(bundle, "config.json")
	var spec map[string]any
	b, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &spec); err != nil {
		return fmt.Errorf("runc spec: %w", err)
	}
	spec["root"] = map[string]any{"path": tmpl.RootfsDir, "readonly": true}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/true"}
	if b, err = json.Marshal(spec); err != nil {
		return err
	}
	if err := os.WriteFile(specPath, b, 0o644); err != nil {
		return err
	}
	root := filepath.Join(bundle, "state")
	var s Samples
	for i := range cfg.Floors {
		id := fmt.Sprintf("cocoon-bench-%d-%d", os.Getpid(), i)
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, runc, "--root", root, "run", "--bundle", bundle, id).CombinedOutput()
		if err != nil {
			_ = exec.Command(runc, "--root", root, "delete", "--force", id).Run()
			return fmt.Errorf("runc run: %w: %s", err, out)
		}
		s = append(s, time.Since(t0))
	}
	r := msResult("floor.runc_run_true", "runc", "native", s)
	ver, _ := exec.Command(runc, "--version").Output()
	r.Note = "rootfs " + tmpl.RootfsDir + ", " + strings.SplitN(string(ver), "\n", 2)[0]
	rep.add(r)
	return nil
}

// coldBootBaseline boots the template's microVM from its kernel (no
// snapshot) until envd answers, in a network slot of its own.
func coldBootBaseline(ctx context.Context, cfg *Config, rep *Report, tmpl *runtime.Template) error {
	accel := vmm.Accel("")
	switch cfg.Accel {
	case "kvm":
		accel = vmm.AccelKVM
	case "tcg":
		accel = vmm.AccelTCG
	}
	rt, err := vmm.New(vmm.Options{DataDir: cfg.DataDir, Accel: accel, CgroupParent: "-"})
	if err != nil {
		return err
	}
	slots, err := network.NewManager(network.Config{Prefix: "benchcb", Pool: netipMust("10.241.0.0/16"), PoolSize: -1})
	if err != nil {
		return err
	}
	defer slots.Close(context.WithoutCancel(ctx))
	var s Samples
	var used vmm.Accel
	for i := range cfg.ColdBoots {
		slot, err := slots.Acquire(ctx)
		if err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "cocoon-bench-coldboot")
		if err != nil {
			return err
		}
		t0 := time.Now()
		inst, err := rt.ColdBoot(ctx, tmpl, runtime.Spec{ID: fmt.Sprintf("benchcold%d", i), Dir: dir, Slot: slot})
		if err == nil {
			wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			err = vmm.WaitHealthy(wctx, slot, inst.Done())
			cancel()
			if err == nil {
				s = append(s, time.Since(t0))
			}
			used = inst.Accel()
			_ = inst.Kill(context.WithoutCancel(ctx))
		}
		_ = slots.Release(context.WithoutCancel(ctx), slot)
		os.RemoveAll(dir)
		if err != nil {
			return err
		}
	}
	r := msResult("floor.cold_boot", "qemu", string(used), s)
	r.Note = "vmm.Runtime.ColdBoot of the template until envd answers /health"
	rep.add(r)
	return nil
}
