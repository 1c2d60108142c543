package vmm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// Accel is a QEMU accelerator.
type Accel string

const (
	// AccelKVM is hardware virtualization (-accel kvm -cpu host).
	AccelKVM Accel = "kvm"
	// AccelTCG is QEMU's software emulation (-accel tcg -cpu max).
	AccelTCG Accel = "tcg"
)

// accelCacheName is the file in the data dir that remembers the probe.
const accelCacheName = "vmm-accel"

// probeMarker is printed by the kernel right before it runs init: a
// kernel that got this far under KVM boots.
const probeMarker = "Freeing unused kernel image"

// ProbeAccel says whether KVM really works on this host: the presence of
// /dev/kvm is not enough (a paravirtual hypervisor may offer one that cannot
// boot a stock kernel), so it boots kernel (and initrd, if any) under
// -accel kvm with a deadline and looks for the kernel reaching init on the
// console. The answer is cached in dataDir and reused; delete the file
// dataDir/vmm-accel to probe again.
func ProbeAccel(ctx context.Context, dataDir, kernel, initrd string) (Accel, error) {
	return probeAccel(ctx, "qemu-system-x86_64", dataDir, kernel, initrd, 15*time.Second)
}

func probeAccel(ctx context.Context, qemu, dataDir, kernel, initrd string, deadline time.Duration) (Accel, error) {
	cache := filepath.Join(dataDir, accelCacheName)
	if b, err := os.ReadFile(cache); err == nil {
		switch a := Accel(strings.TrimSpace(string(b))); a {
		case AccelKVM, AccelTCG:
			return a, nil
		}
	}
	a := AccelTCG
	if kvmBoots(ctx, qemu, kernel, initrd, deadline) {
		a = AccelKVM
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("probe kvm: %w", ctx.Err())
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return "", fmt.Errorf("probe kvm: %w", err)
	}
	if err := os.WriteFile(cache, []byte(a+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("probe kvm: cache answer: %w", err)
	}
	return a, nil
}

func kvmBoots(ctx context.Context, qemu, kernel, initrd string, deadline time.Duration) bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	khz, _ := guest.HostTSCKHz()
	args := []string{
		"-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
		"-machine", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M",
		"-kernel", kernel,
		// Not quiet: the marker is a KERN_INFO message.
		"-append", fmt.Sprintf("console=ttyS0 panic=-1 tsc_early_khz=%d", khz),
		"-serial", "stdio",
	}
	if initrd != "" {
		args = append(args, "-initrd", initrd)
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdin = nil
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return false
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if strings.Contains(sc.Text(), probeMarker) {
			return true
		}
	}
	return false
}
