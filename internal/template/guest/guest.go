// Package guest holds the contract between a Cocoon guest image and the
// drivers that boot it: the kernel command line, the initramfs /init and
// the guest's own init script (cocoon-init), with the paths and markers
// they share.
package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

const (
	// EnvdPort is where envd listens inside every guest.
	EnvdPort = 49983
	// EnvdPath is where envd is installed in the root filesystem.
	EnvdPath = "/usr/local/bin/envd"
	// InitPath is the guest init that the initramfs switches to.
	InitPath = "/usr/local/sbin/cocoon-init"
	// ReadyMarker is printed on the console by cocoon-init right before it
	// execs envd; drivers and tests can wait for it.
	ReadyMarker = "cocoon-init: starting envd"
	// RootDevice is the root disk as the guest sees it (the first virtio-blk).
	RootDevice = "/dev/vda"
	// RootLabel is the ext4 label of the root filesystem.
	RootLabel = "cocoon-root"
	// DefaultHostname is the guest's hostname unless cocoon.hostname= is given.
	DefaultHostname = "cocoon"
	// DefaultDNS is the resolver written to /etc/resolv.conf unless
	// cocoon.dns= is given.
	DefaultDNS = "8.8.8.8"
)

// Modules are the kernel modules the initramfs loads, in this order, before
// it mounts the root disk: Debian's cloud kernel builds them as modules.
var Modules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio_blk",
	"failover", "net_failover", "virtio_net", "virtio_console",
}

// Net is the guest's network configuration, passed on the command line.
type Net struct {
	Addr    netip.Prefix // e.g. 169.254.0.21/30
	Gateway netip.Addr   // e.g. 169.254.0.22
	DNS     netip.Addr   // optional
}

// Args returns the cocoon.* kernel arguments for n (omitting zero fields).
func (n Net) Args() []string {
	var a []string
	if n.Addr.IsValid() {
		a = append(a, "cocoon.ip="+n.Addr.String())
	}
	if n.Gateway.IsValid() {
		a = append(a, "cocoon.gw="+n.Gateway.String())
	}
	if n.DNS.IsValid() {
		a = append(a, "cocoon.dns="+n.DNS.String())
	}
	return a
}

// CmdLine returns the kernel command line of a guest. tscKHz is the host's
// TSC frequency: without tsc_early_khz some TCG boots hang calibrating
// against the PIT. Zero leaves it out. extra is appended (e.g. Net.Args()).
func CmdLine(tscKHz int, extra ...string) string {
	a := []string{"console=ttyS0", "quiet", "panic=-1"}
	if tscKHz > 0 {
		// tsc=reliable: without it the kernel of a TCG guest (no kvm-clock,
		// no HPET on microvm) falls back to the refined-jiffies clocksource,
		// which cannot go tickless: every idle guest then took 250 timer
		// interrupts a second per vCPU, ≈ 5 % of a host core under TCG.
		a = append(a, "tsc_early_khz="+strconv.Itoa(tscKHz), "tsc=reliable")
	}
	a = append(a, "root="+RootDevice, "rootfstype=ext4", "rw")
	a = append(a, extra...)
	return strings.Join(a, " ")
}

// HostCmdLine is CmdLine with the TSC frequency of this host.
func HostCmdLine(extra ...string) (string, error) {
	khz, err := HostTSCKHz()
	if err != nil {
		return "", err
	}
	return CmdLine(khz, extra...), nil
}

// HostTSCKHz reads the CPU frequency of this host from /proc/cpuinfo, in kHz.
func HostTSCKHz() (int, error) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read cpuinfo: %w", err)
	}
	return parseCPUInfoKHz(b)
}

func parseCPUInfoKHz(b []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("parse cpu MHz %q: bad value", strings.TrimSpace(v))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	return 0, fmt.Errorf("no cpu MHz in /proc/cpuinfo")
}
