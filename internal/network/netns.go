package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// onThread runs fn on a fresh goroutine locked to its OS thread and waits
// for it. fn may move the thread into other namespaces; if it leaves the
// thread elsewhere than where it started, the thread is discarded (a
// goroutine that exits locked takes its thread with it), so no other
// goroutine ever runs in the wrong namespace.
func onThread(fn func(orig netns.NsHandle) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("get own netns: %w", err)
			return
		}
		defer orig.Close()
		err = fn(orig)
		cur, gerr := netns.Get()
		if gerr == nil {
			if cur.Equal(orig) {
				runtime.UnlockOSThread()
			}
			cur.Close()
		}
		errc <- err
	}()
	return <-errc
}

// inNetns runs fn with the calling thread inside the namespace at path:
// sockets it opens and processes it starts belong to that namespace.
func inNetns(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return onThread(func(orig netns.NsHandle) error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", path, err))
		}
		return ferr
	})
}

// writeSysctl writes a /proc/sys/net value of the calling thread's namespace.
func writeSysctl(path, value string) error {
	if err := os.WriteFile("/proc/sys/"+path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// create builds slot s: its namespace, TAP, veth pair, addresses, routes
// and nftables rules. The caller destroys a half-built slot on error.
func create(ctx context.Context, s *Slot) error {
	return onThread(func(orig netns.NsHandle) error {
		// NewNamed moves this thread into the new namespace.
		ns, err := netns.NewNamed(s.Netns)
		if err != nil {
			return fmt.Errorf("create netns %s: %w", s.Netns, err)
		}
		defer ns.Close()
		if err := setupInside(s); err != nil {
			return err
		}
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("leave netns: %w", err)
		}
		if err := setupHostVeth(s, ns); err != nil {
			return err
		}
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		if err := setupSlotVeth(s); err != nil {
			return err
		}
		if err := runNft(ctx, slotRules(s)); err != nil {
			return fmt.Errorf("slot rules: %w", err)
		}
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("leave netns: %w", err)
		}
		return nil
	})
}

// setupInside runs in the new namespace: sysctls, loopback and the TAP.
func setupInside(s *Slot) error {
	for _, kv := range [][2]string{
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
		{"net/ipv4/ip_forward", "1"},
	} {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	// The TAP is created by ioctl on /dev/net/tun, in the namespace of the
	// calling thread; persistent, so QEMU attaches to it by name.
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: s.Tap},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create %s: %w", s.Tap, err)
	}
	link, err := netlink.LinkByName(s.Tap)
	if err != nil {
		return fmt.Errorf("find %s: %w", s.Tap, err)
	}
	gw := netip.PrefixFrom(GuestGateway, GuestPrefixLen)
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet(gw)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", gw, s.Tap, err)
	}
	// A fixed MAC: a restored guest's ARP entry for its gateway (taken
	// in the build slot) stays right in every slot.
	if err := netlink.LinkSetHardwareAddr(link, TapMAC); err != nil {
		return fmt.Errorf("set %s address: %w", s.Tap, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", s.Tap, err)
	}
	return nil
}

// setupHostVeth runs in the root namespace: it creates the veth pair with
// its peer already inside ns, so the peer's name never clashes on the host.
func setupHostVeth(s *Slot, ns netns.NsHandle) error {
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.VethHost},
		PeerName:      s.VethSlot,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", s.VethHost, err)
	}
	link, err := netlink.LinkByName(s.VethHost)
	if err != nil {
		return fmt.Errorf("find %s: %w", s.VethHost, err)
	}
	// No IPv6 link-local address: guests must not reach the host over it.
	if err := writeSysctl("net/ipv6/conf/"+s.VethHost+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet(s.HostAddr)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", s.HostAddr, s.VethHost, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", s.VethHost, err)
	}
	return nil
}

// setupSlotVeth runs in the slot's namespace.
func setupSlotVeth(s *Slot) error {
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return reapply(h, s)
}

// ReapplyAddr puts slot.Addr back on the slot's veth, with the link up and
// a default route via slot.HostAddr. gVisor's --network=sandbox moves the
// namespace's addresses into its own stack and deletes them from the
// interface; call it before every runsc start or restore. It is harmless
// when the address is present. Its signature fits gvisor.Config.ReapplyAddr.
func ReapplyAddr(ctx context.Context, slot *Slot) error {
	ns, err := netns.GetFromPath(slot.NetnsPath)
	if err != nil {
		return fmt.Errorf("network: open netns %s: %w", slot.NetnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("network: netlink in %s: %w", slot.Netns, err)
	}
	defer h.Close()
	if err := reapply(h, slot); err != nil {
		return fmt.Errorf("network: %s: %w", slot.Netns, err)
	}
	return nil
}

func reapply(h *netlink.Handle, s *Slot) error {
	link, err := h.LinkByName(s.VethSlot)
	if err != nil {
		return fmt.Errorf("find %s: %w", s.VethSlot, err)
	}
	if err := h.AddrReplace(link, &netlink.Addr{IPNet: ipnet(s.Addr)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", s.Addr, s.VethSlot, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", s.VethSlot, err)
	}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: s.HostAddr.Addr().AsSlice()}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s: %w", s.HostAddr.Addr(), err)
	}
	// gVisor takes the TAP's address too; a slot reused by a microVM needs it back.
	if s.Tap != "" {
		tap, err := h.LinkByName(s.Tap)
		if err != nil {
			return fmt.Errorf("find %s: %w", s.Tap, err)
		}
		if err := h.AddrReplace(tap, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(GuestGateway, GuestPrefixLen))}); err != nil {
			return fmt.Errorf("add %s to %s: %w", GuestGateway, s.Tap, err)
		}
		if err := h.LinkSetUp(tap); err != nil {
			return fmt.Errorf("set %s up: %w", s.Tap, err)
		}
	}
	return nil
}

// flushConntrack forgets the connections of the slot's last sandbox, both
// inside the namespace and the host's entries for its address.
func flushConntrack(s *Slot) error {
	ns, err := netns.GetFromPath(s.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", s.NetnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", s.Netns, err)
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flush conntrack in %s: %w", s.Netns, err)
	}
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, s.Addr.Addr().AsSlice()); err != nil {
		return fmt.Errorf("conntrack filter: %w", err)
	}
	g := &netlink.ConntrackFilter{}
	if err := g.AddIP(netlink.ConntrackOrigDstIP, s.Addr.Addr().AsSlice()); err != nil {
		return fmt.Errorf("conntrack filter: %w", err)
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f, g); err != nil {
		return fmt.Errorf("delete host conntrack of %s: %w", s.Addr.Addr(), err)
	}
	return nil
}

// destroy removes slot s, whatever state it is in. Deleting the host veth
// first removes the pair at once (a namespace is torn down asynchronously,
// and its veth with it), so the index can be reused immediately.
func destroy(s *Slot) error {
	var errs []error
	if l, err := netlink.LinkByName(s.VethHost); err == nil {
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete %s: %w", s.VethHost, err))
		}
	}
	if err := unix.Unmount(s.NetnsPath, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", s.NetnsPath, err))
	}
	if err := os.Remove(s.NetnsPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", s.NetnsPath, err))
	}
	return errors.Join(errs...)
}
