package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Every test names what it creates "cnt<letter(s)>…" so that concurrent
// users of the host (and other tests) are never touched, and uses its own
// addresses under 10.238.0.0/16 (slots) and 10.239.0.0/16 (outside hosts).

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

// newTestManager returns a manager whose every trace is wiped when the test
// ends.
func newTestManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	requireRoot(t)
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() { wipe(t, cfg) })
	return m
}

// wipe removes everything with cfg.Prefix, as Reconcile of a fresh manager
// that knows of nothing in use, then Close.
func wipe(t testing.TB, cfg Config) {
	t.Helper()
	ctx := context.Background()
	m, err := NewManager(cfg)
	if err != nil {
		t.Errorf("wipe: %v", err)
		return
	}
	if err := m.Reconcile(ctx, func(int) bool { return false }); err != nil {
		t.Errorf("wipe: %v", err)
	}
	if err := m.Close(ctx); err != nil {
		t.Errorf("wipe: %v", err)
	}
}

// newNetns creates a named namespace with loopback up, removed at cleanup.
func newNetns(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(NetnsDir, name)
	err := onThread(func(orig netns.NsHandle) error {
		ns, err := netns.NewNamed(name)
		if err != nil {
			return err
		}
		defer ns.Close()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		return errors.Join(err, netns.Set(orig))
	})
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		s := &Slot{NetnsPath: path, VethHost: "none"}
		if err := destroy(s); err != nil {
			t.Errorf("remove netns %s: %v", name, err)
		}
	})
	return path
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// outside creates a host "on the internet" for a test: a namespace joined to
// the root namespace by the veth <prefix>-o, which the manager is to use as
// its egress interface. Its addresses are net.2 and net.3 of subnet (a
// /24), and it serves TCP on port 7000 of both.
func outside(t testing.TB, prefix, subnet string) (iface string, addrs []netip.Addr) {
	t.Helper()
	sn := mustPrefix(subnet)
	a1 := sn.Addr().Next()
	a2, a3 := a1.Next(), a1.Next().Next()
	path := newNetns(t, prefix+"-out")
	iface = prefix + "-o"
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: iface}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create %s: %v", iface, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(iface); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	if err := setAddrUp(iface, netip.PrefixFrom(a1, 24)); err != nil {
		t.Fatal(err)
	}
	err = inNetns(path, func() error {
		if err := setAddrUp("eth0", netip.PrefixFrom(a2, 24), netip.PrefixFrom(a3, 24)); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: a1.AsSlice()})
	})
	if err != nil {
		t.Fatalf("set up outside: %v", err)
	}
	serve(t, path, ":7000")
	return iface, []netip.Addr{a2, a3}
}

// setAddrUp puts addresses on a link of the calling thread's namespace and
// sets it up.
func setAddrUp(name string, addrs ...netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipnet(a)}); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, name, err)
		}
	}
	return netlink.LinkSetUp(l)
}

// plugGuest stands in for a microVM: it replaces the slot's TAP by a veth of
// the same name whose peer, in a new namespace, has GuestIP and a default
// route via GuestGateway, as a guest does. The slot must be destroyed, not
// pooled, afterwards. It returns the guest's namespace path.
func plugGuest(t testing.TB, s *Slot, name string) string {
	t.Helper()
	gpath := newNetns(t, name)
	gns, err := netns.GetFromPath(gpath)
	if err != nil {
		t.Fatal(err)
	}
	defer gns.Close()
	err = inNetns(s.NetnsPath, func() error {
		tap, err := netlink.LinkByName(s.Tap)
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(tap); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.Tap}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(gns))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		return setAddrUp(s.Tap, netip.PrefixFrom(GuestGateway, GuestPrefixLen))
	})
	if err != nil {
		t.Fatalf("plug guest into %s: %v", s.Netns, err)
	}
	err = inNetns(gpath, func() error {
		if err := setAddrUp("eth0", netip.PrefixFrom(GuestIP, GuestPrefixLen)); err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: GuestGateway.AsSlice()})
	})
	if err != nil {
		t.Fatalf("set up guest: %v", err)
	}
	return gpath
}

// serve listens on addr inside the namespace at path (the socket stays
// there) and answers each connection with "ok <client address>\n".
func serve(t testing.TB, path, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	listen := func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}
	var err error
	if path == "" {
		err = listen()
	} else {
		err = inNetns(path, listen)
	}
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "ok %s\n", c.RemoteAddr())
			c.Close()
		}
	}()
	return ln
}

// dial connects from the namespace at path ("" for the root namespace) and
// returns the server's line.
func dial(path, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	d := net.Dialer{Timeout: timeout}
	connect := func() error {
		var err error
		c, err = d.Dial("tcp4", addr)
		return err
	}
	var err error
	if path == "" {
		err = connect()
	} else {
		err = inNetns(path, connect)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// isTimeout tells a silently dropped connection from a refused or
// unreachable one.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}
