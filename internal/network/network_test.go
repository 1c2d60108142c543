package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

const blocked = 400 * time.Millisecond // how long a dropped connect is given

func TestSlotAddressing(t *testing.T) {
	m, err := NewManager(Config{Prefix: "cnta", Pool: mustPrefix("10.238.0.0/16"), EgressInterface: "lo"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		i          int
		ns, veth   string
		host, addr string
	}{
		{0, "cnta-slot-0", "cnta-h0", "10.238.0.1/30", "10.238.0.2/30"},
		{1, "cnta-slot-1", "cnta-h1", "10.238.0.5/30", "10.238.0.6/30"},
		{64, "cnta-slot-64", "cnta-h64", "10.238.1.1/30", "10.238.1.2/30"},
		{16383, "cnta-slot-16383", "cnta-h16383", "10.238.255.253/30", "10.238.255.254/30"},
	}
	for _, tt := range tests {
		s := m.slot(tt.i)
		got := fmt.Sprintln(s.Netns, s.NetnsPath, s.VethHost, s.VethSlot, s.Tap, s.HostAddr, s.Addr)
		want := fmt.Sprintln(tt.ns, "/run/netns/"+tt.ns, tt.veth, "eth0", "tap0", tt.host, tt.addr)
		if got != want {
			t.Errorf("slot %d: got %s, want %s", tt.i, got, want)
		}
	}
	if got, want := m.Config().MaxSlots, 16384; got != want {
		t.Errorf("MaxSlots = %d, want %d", got, want)
	}
}

func TestNewManagerRejects(t *testing.T) {
	tests := []Config{
		{Prefix: "Bad-Prefix", EgressInterface: "lo"},
		{Prefix: "waytoolongprefix", EgressInterface: "lo"},
		{Pool: mustPrefix("fd00::/64"), EgressInterface: "lo"},
		{Pool: mustPrefix("10.0.0.0/31"), EgressInterface: "lo"},
	}
	for _, cfg := range tests {
		if _, err := NewManager(cfg); err == nil {
			t.Errorf("NewManager(%+v): got nil error", cfg)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name    string
		in      Egress
		wantErr string // substring; "" for success
		allow   []string
		deny    []string
	}{
		{"empty", Egress{}, "", nil, nil},
		{"bare IPs and CIDRs", Egress{AllowOut: []string{"1.2.3.4", " 10.0.0.0/8"}, DenyOut: []string{"0.0.0.0/0"}}, "",
			[]string{"1.2.3.4/32", "10.0.0.0/8"}, []string{"0.0.0.0/0"}},
		{"ipv6 ignored", Egress{DenyOut: []string{"::/0", "2001:db8::1"}}, "", nil, nil},
		{"hostname", Egress{AllowOut: []string{"example.com"}}, `allowOut: "example.com" is not an IP address or CIDR`, nil, nil},
		{"bad length", Egress{DenyOut: []string{"10.0.0.0/33"}}, `denyOut: "10.0.0.0/33"`, nil, nil},
		{"host bits", Egress{DenyOut: []string{"10.1.2.3/8"}}, "did you mean 10.0.0.0/8", nil, nil},
		{"empty string", Egress{AllowOut: []string{""}}, "is not an IP", nil, nil},
		{"zone", Egress{AllowOut: []string{"fe80::1%eth0"}}, "is not an IP", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parsePolicy(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			str := func(ps []netip.Prefix) []string {
				var out []string
				for _, p := range ps {
					out = append(out, p.String())
				}
				return out
			}
			if got := str(p.allow); !slices.Equal(got, tt.allow) {
				t.Errorf("allow = %v, want %v", got, tt.allow)
			}
			if got := str(p.deny); !slices.Equal(got, tt.deny) {
				t.Errorf("deny = %v, want %v", got, tt.deny)
			}
		})
	}
}

// TestAcquireLayout checks what an acquired slot holds.
func TestAcquireLayout(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, Config{Prefix: "cntb", Pool: mustPrefix("10.238.1.0/28"), EgressInterface: "lo"})
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !exists(s.NetnsPath) {
		t.Fatalf("%s missing", s.NetnsPath)
	}
	host, err := netlink.LinkByName(s.VethHost)
	if err != nil {
		t.Fatalf("host veth: %v", err)
	}
	if got := addrsOf(t, host); !slices.Equal(got, []string{s.HostAddr.String()}) {
		t.Errorf("%s addresses = %v, want %v", s.VethHost, got, s.HostAddr)
	}
	err = inNetns(s.NetnsPath, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, l := range links {
			up := l.Attrs().Flags&net.FlagUp != 0
			got[l.Attrs().Name] = fmt.Sprintf("%s up=%v %v", l.Type(), up, addrsOf(t, l))
		}
		want := map[string]string{
			"lo":   "device up=true [127.0.0.1/8]",
			"eth0": fmt.Sprintf("veth up=true [%s]", s.Addr),
			"tap0": "tuntap up=true [169.254.0.22/30]",
		}
		for name, w := range want {
			if got[name] != w {
				t.Errorf("%s: got %q, want %q", name, got[name], w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("links = %v, want %v", got, want)
		}
		routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		var gw string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				gw = r.Gw.String()
			}
		}
		if gw != s.HostAddr.Addr().String() {
			t.Errorf("default route via %q, want %s", gw, s.HostAddr.Addr())
		}
		fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(fwd)) != "1" {
			t.Errorf("ip_forward in slot = %q, want 1", fwd)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, s); err != nil {
		t.Fatal(err)
	}
}

func addrsOf(t testing.TB, l netlink.Link) []string {
	t.Helper()
	as, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("addresses of %s: %v", l.Attrs().Name, err)
	}
	var out []string
	for _, a := range as {
		out = append(out, a.IPNet.String())
	}
	return out
}

// TestHostReachesGuest: a server on GuestIP inside the slot answers at
// Slot.Addr from the host, and the guest sees the gateway as the client.
func TestHostReachesGuest(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, Config{Prefix: "cntc", Pool: mustPrefix("10.238.2.0/28"), EgressInterface: "lo", PoolSize: -1})
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release(ctx, s)
	g := plugGuest(t, s, "cntc-guest")
	serve(t, g, GuestIP.String()+":8080")
	serve(t, g, GuestIP.String()+":49983")
	for _, port := range []string{"8080", "49983"} {
		got, err := dial("", net.JoinHostPort(s.Addr.Addr().String(), port), 2*time.Second)
		if err != nil {
			t.Fatalf("host to %s:%s: %v", s.Addr.Addr(), port, err)
		}
		if !strings.HasPrefix(got, "ok "+GuestGateway.String()+":") {
			t.Errorf("port %s: got %q, want the guest to see %s", port, got, GuestGateway)
		}
	}
}

// TestGVisorAddressTakeover simulates gVisor's --network=sandbox: while
// Slot.Addr is off the veth (gVisor owns it and answers ARP), the
// namespace's kernel must neither DNAT nor answer traffic to it, else it
// would race gVisor's own replies. ReapplyAddr brings the microVM path back.
func TestGVisorAddressTakeover(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, Config{Prefix: "cntd", Pool: mustPrefix("10.238.3.0/28"), EgressInterface: "lo", PoolSize: -1})
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release(ctx, s)
	g := plugGuest(t, s, "cntd-guest")
	serve(t, g, GuestIP.String()+":8080")
	target := net.JoinHostPort(s.Addr.Addr().String(), "8080")
	if _, err := dial("", target, 2*time.Second); err != nil {
		t.Fatalf("before takeover: %v", err)
	}

	var mac net.HardwareAddr
	err = inNetns(s.NetnsPath, func() error {
		l, err := netlink.LinkByName(s.VethSlot)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		if err := netlink.AddrDel(l, &netlink.Addr{IPNet: ipnet(s.Addr)}); err != nil {
			return err
		}
		// Deleting the address took the routes with it; keep a way back to
		// the host so that the test shows the kernel stays silent because
		// of the slot's rules, not for want of a route.
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(netip.PrefixFrom(s.HostAddr.Addr(), 32)), Scope: netlink.SCOPE_LINK})
	})
	if err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName(s.VethHost)
	if err != nil {
		t.Fatal(err)
	}
	// gVisor would answer ARP for Addr with the veth's MAC.
	neigh := &netlink.Neigh{LinkIndex: host.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: s.Addr.Addr().AsSlice(), HardwareAddr: mac}
	if err := netlink.NeighSet(neigh); err != nil {
		t.Fatal(err)
	}
	if got, err := dial("", target, blocked); !isTimeout(err) {
		t.Errorf("with the address taken over: got %q, %v; want a timeout (the kernel must stay silent)", got, err)
	}

	if err := ReapplyAddr(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := ReapplyAddr(ctx, s); err != nil {
		t.Fatalf("second ReapplyAddr: %v", err)
	}
	if _, err := dial("", target, 2*time.Second); err != nil {
		t.Errorf("after ReapplyAddr: %v", err)
	}
}

// TestReleaseReuses: a released slot is pooled and handed out again, the
// same namespace; beyond PoolSize it is destroyed.
func TestReleaseReuses(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, Config{Prefix: "cnte", Pool: mustPrefix("10.238.4.0/28"), EgressInterface: "lo", PoolSize: 1})
	a, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.Index == b.Index {
		t.Fatalf("two slots with index %d", a.Index)
	}
	inoA := inode(t, a.NetnsPath)
	if err := m.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, b); err != nil {
		t.Fatal(err)
	}
	if exists(b.NetnsPath) || linkExists(b.VethHost) {
		t.Errorf("slot %d beyond the pool bound still exists", b.Index)
	}
	if got := m.Idle(); got != 1 {
		t.Errorf("Idle() = %d, want 1", got)
	}
	if err := m.Release(ctx, a); err == nil {
		t.Error("double Release: got nil error")
	}
	c, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Index != a.Index || inode(t, c.NetnsPath) != inoA {
		t.Errorf("got slot %d (inode %d), want the pooled slot %d (inode %d)", c.Index, inode(t, c.NetnsPath), a.Index, inoA)
	}
	if err := m.Release(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if exists(c.NetnsPath) || linkExists(c.VethHost) {
		t.Error("Close left the pooled slot")
	}
	if _, err := m.Acquire(ctx); err != ErrClosed {
		t.Errorf("Acquire after Close: got %v, want ErrClosed", err)
	}
}

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestPrewarmAndExhaustion(t *testing.T) {
	ctx := context.Background()
	// A /29 holds two slots.
	m := newTestManager(t, Config{Prefix: "cntf", Pool: mustPrefix("10.238.5.0/29"), EgressInterface: "lo", PoolSize: 4})
	if err := m.Prewarm(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got := m.Idle(); got != 2 {
		t.Fatalf("Idle() = %d, want 2", got)
	}
	var got []int
	for range 2 {
		s, err := m.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, s.Index)
		defer m.Release(ctx, s)
	}
	slices.Sort(got)
	if !slices.Equal(got, []int{0, 1}) {
		t.Errorf("indices = %v, want [0 1]", got)
	}
	if _, err := m.Acquire(ctx); err != ErrExhausted {
		t.Errorf("third Acquire: got %v, want ErrExhausted", err)
	}
}

// TestEgress: the guest's traffic to an outside host under each policy,
// and the host→guest path under all of them.
func TestEgress(t *testing.T) {
	ctx := context.Background()
	iface, out := outside(t, "cntg", "10.239.1.0/24")
	m := newTestManager(t, Config{Prefix: "cntg", Pool: mustPrefix("10.238.6.0/28"), EgressInterface: iface, PoolSize: -1})
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release(ctx, s)
	g := plugGuest(t, s, "cntg-guest")
	serve(t, g, GuestIP.String()+":8080")
	o2, o3 := out[0].String(), out[1].String()

	tests := []struct {
		name   string
		egress Egress
		reach  map[string]bool
	}{
		{"default", Egress{}, map[string]bool{o2: true, o3: true}},
		{"disabled", Egress{Disabled: true}, map[string]bool{o2: false, o3: false}},
		{"disabled wins over allow", Egress{Disabled: true, AllowOut: []string{o2}}, map[string]bool{o2: false, o3: false}},
		{"deny one", Egress{DenyOut: []string{o3}}, map[string]bool{o2: true, o3: false}},
		{"allowlist", Egress{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{o2 + "/32"}}, map[string]bool{o2: true, o3: false}},
		{"allow wins over deny", Egress{DenyOut: []string{"10.239.1.0/24"}, AllowOut: []string{o3}}, map[string]bool{o2: false, o3: true}},
		{"back to default", Egress{}, map[string]bool{o2: true, o3: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := m.SetEgress(ctx, s, tt.egress); err != nil {
				t.Fatal(err)
			}
			for addr, want := range tt.reach {
				timeout := blocked
				if want {
					timeout = 2 * time.Second
				}
				got, err := dial(g, addr+":7000", timeout)
				if want && err != nil {
					t.Errorf("guest to %s: %v, want it reachable", addr, err)
				}
				if want && !strings.HasPrefix(got, "ok 10.239.1.1:") {
					t.Errorf("guest to %s: outside saw %q, want the host's masqueraded address", addr, got)
				}
				if !want && !isTimeout(err) {
					t.Errorf("guest to %s: got %q, %v; want it dropped", addr, got, err)
				}
			}
			if _, err := dial("", net.JoinHostPort(s.Addr.Addr().String(), "8080"), 2*time.Second); err != nil {
				t.Errorf("host to guest: %v", err)
			}
		})
	}
	if err := m.SetEgress(ctx, s, Egress{DenyOut: []string{"10.0.0.0/33"}}); err == nil {
		t.Error("bad CIDR: got nil error")
	}
}

// TestEgressResetOnRelease: a pooled slot comes back with the default
// policy.
func TestEgressResetOnRelease(t *testing.T) {
	ctx := context.Background()
	iface, out := outside(t, "cnth", "10.239.2.0/24")
	m := newTestManager(t, Config{Prefix: "cnth", Pool: mustPrefix("10.238.7.0/28"), EgressInterface: iface, PoolSize: 1})
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SetEgress(ctx, s, Egress{Disabled: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, s); err != nil {
		t.Fatal(err)
	}
	s2, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Index != s.Index {
		t.Fatalf("got slot %d, want the pooled %d", s2.Index, s.Index)
	}
	// Pooled slots are reused, so plug the guest only now; the slot is
	// destroyed at the end.
	g := plugGuest(t, s2, "cnth-guest")
	if _, err := dial(g, out[0].String()+":7000", 2*time.Second); err != nil {
		t.Errorf("after release and reacquire: %v, want the default policy", err)
	}
	if err := m.Close(ctx); err != nil { // empties the pool first
		t.Fatal(err)
	}
	if err := m.Release(ctx, s2); err != nil {
		t.Fatal(err)
	}
}

// TestIsolation: a guest reaches neither the host nor another slot.
func TestIsolation(t *testing.T) {
	ctx := context.Background()
	iface, _ := outside(t, "cnti", "10.239.3.0/24")
	m := newTestManager(t, Config{Prefix: "cnti", Pool: mustPrefix("10.238.8.0/28"), EgressInterface: iface, PoolSize: -1})
	a, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release(ctx, a)
	b, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Release(ctx, b)
	ga := plugGuest(t, a, "cnti-ga")
	gb := plugGuest(t, b, "cnti-gb")
	serve(t, gb, GuestIP.String()+":8080")
	hostLn := serve(t, "", a.HostAddr.Addr().String()+":0")

	if _, err := dial("", net.JoinHostPort(b.Addr.Addr().String(), "8080"), 2*time.Second); err != nil {
		t.Fatalf("host to guest b: %v", err)
	}
	if got, err := dial(ga, net.JoinHostPort(b.Addr.Addr().String(), "8080"), blocked); !isTimeout(err) {
		t.Errorf("guest a to slot b: got %q, %v; want it dropped", got, err)
	}
	if got, err := dial(ga, hostLn.Addr().String(), blocked); !isTimeout(err) {
		t.Errorf("guest a to the host: got %q, %v; want it dropped", got, err)
	}
}

// TestReconcile: after a crash (a manager dropped without Close), a new
// manager's Reconcile removes the slots not in use, adopts the one in use,
// and leaves another prefix alone.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	cfgA := Config{Prefix: "cntj", Pool: mustPrefix("10.238.9.0/27"), EgressInterface: "lo", PoolSize: 2}
	cfgB := Config{Prefix: "cntk", Pool: mustPrefix("10.238.10.0/28"), EgressInterface: "lo"}
	crashed := newTestManager(t, cfgA)
	other := newTestManager(t, cfgB)
	for range 3 {
		if _, err := crashed.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := crashed.Prewarm(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// A veth left without its namespace.
	stray := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cntj-h6"}, PeerName: "cntjp6"}
	if err := netlink.LinkAdd(stray); err != nil {
		t.Fatal(err)
	}
	kept, err := other.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(ctx, kept)

	m, err := NewManager(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reconcile(ctx, func(i int) bool { return i == 1 }); err != nil {
		t.Fatal(err)
	}
	var left []string
	for i := range 8 {
		s := m.slot(i)
		if exists(s.NetnsPath) {
			left = append(left, s.Netns)
		}
		if linkExists(s.VethHost) {
			left = append(left, s.VethHost)
		}
	}
	if want := []string{"cntj-slot-1", "cntj-h1"}; !slices.Equal(left, want) {
		t.Errorf("left after Reconcile: %v, want %v", left, want)
	}
	if linkExists("cntjp6") {
		t.Error("stray veth peer left")
	}
	if !exists(kept.NetnsPath) || !linkExists(kept.VethHost) {
		t.Error("Reconcile removed another prefix's slot")
	}
	if got := m.InUse(); !slices.Equal(got, []int{1}) {
		t.Errorf("InUse() = %v, want [1]", got)
	}
	s, err := m.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Index != 0 {
		t.Errorf("Acquire after Reconcile: index %d, want 0 (1 is adopted)", s.Index)
	}
	if err := m.Release(ctx, m.slot(1)); err != nil {
		t.Errorf("release adopted slot: %v", err)
	}
	if err := m.Release(ctx, s); err != nil {
		t.Error(err)
	}
}

// TestConcurrent runs acquire/egress/release cycles in parallel.
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	m := newTestManager(t, Config{Prefix: "cntl", Pool: mustPrefix("10.238.11.0/27"), EgressInterface: "lo", PoolSize: 2})
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		held = map[int]bool{}
	)
	errs := make(chan error, 32)
	for range 4 {
		wg.Go(func() {
			for range 3 {
				s, err := m.Acquire(ctx)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if held[s.Index] {
					errs <- fmt.Errorf("slot %d handed out twice", s.Index)
				}
				held[s.Index] = true
				mu.Unlock()
				if err := m.SetEgress(ctx, s, Egress{DenyOut: []string{"192.0.2.0/24"}}); err != nil {
					errs <- err
				}
				mu.Lock()
				delete(held, s.Index)
				mu.Unlock()
				if err := m.Release(ctx, s); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := m.InUse(); len(got) != 0 {
		t.Errorf("InUse() = %v, want none", got)
	}
	if got := m.Idle(); got > 2 {
		t.Errorf("Idle() = %d, want at most PoolSize 2", got)
	}
}
