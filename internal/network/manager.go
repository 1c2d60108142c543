package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// NetnsDir is where named network namespaces are mounted (as by `ip netns`).
const NetnsDir = "/run/netns"

// Names inside every slot's namespace.
const (
	slotVeth = "eth0"
	slotTap  = "tap0"
)

// Errors.
var (
	// ErrExhausted is returned by Acquire when every slot is taken.
	ErrExhausted = errors.New("network: no free slot")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("network: manager closed")
)

// Config configures a Manager.
type Config struct {
	// Prefix names everything the manager creates: namespaces
	// <Prefix>-slot-<i>, host veths <Prefix>-h<i> and the host's nftables
	// table. Lowercase letters and digits; default "cocoon".
	Prefix string
	// Pool is the IPv4 range cut into one /30 per slot; default
	// 10.200.0.0/16.
	Pool netip.Prefix
	// PoolSize bounds the warm slots kept for reuse: Release destroys a
	// slot beyond it. Default 8; negative keeps none.
	PoolSize int
	// MaxSlots bounds the slots in existence; default (and maximum) the
	// number of /30s in Pool.
	MaxSlots int
	// EgressInterface is the host's interface towards the outside; empty
	// means the interface of the default route.
	EgressInterface string
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// Manager creates, pools and destroys slots. It is safe for concurrent use.
type Manager struct {
	cfg Config

	mu       sync.Mutex
	closed   bool
	idle     []int        // warm slots, reused last-in first-out
	used     map[int]bool // handed out by Acquire (or adopted by Reconcile)
	creating map[int]bool // index reserved while a slot is built or torn down
	custom   map[int]bool // the slot has a non-default egress policy

	hostMu    sync.Mutex
	hostReady bool
}

// NewManager checks cfg, fills in defaults and returns a Manager. It changes
// nothing on the host: that happens on first use.
func NewManager(cfg Config) (*Manager, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "cocoon"
	}
	if !prefixRE.MatchString(cfg.Prefix) {
		return nil, fmt.Errorf("network: prefix %q: want lowercase letters and digits", cfg.Prefix)
	}
	if !cfg.Pool.IsValid() {
		cfg.Pool = netip.MustParsePrefix("10.200.0.0/16")
	}
	if !cfg.Pool.Addr().Is4() || cfg.Pool.Bits() > 30 {
		return nil, fmt.Errorf("network: pool %s: want an IPv4 prefix of /30 or wider", cfg.Pool)
	}
	cfg.Pool = cfg.Pool.Masked()
	capacity := 1 << (30 - cfg.Pool.Bits())
	if cfg.MaxSlots <= 0 || cfg.MaxSlots > capacity {
		cfg.MaxSlots = capacity
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 8
	}
	cfg.PoolSize = max(cfg.PoolSize, 0)
	// Interface names are at most 15 bytes.
	if n := len(hostVethName(cfg.Prefix, cfg.MaxSlots-1)); n > 15 {
		return nil, fmt.Errorf("network: prefix %q too long: host veth names would be %d bytes (max 15)", cfg.Prefix, n)
	}
	if cfg.EgressInterface == "" {
		dev, err := defaultRouteDevice()
		if err != nil {
			return nil, fmt.Errorf("network: detect egress interface: %w", err)
		}
		cfg.EgressInterface = dev
	}
	return &Manager{
		cfg:      cfg,
		used:     map[int]bool{},
		creating: map[int]bool{},
		custom:   map[int]bool{},
	}, nil
}

// Config returns the manager's configuration with defaults filled in.
func (m *Manager) Config() Config { return m.cfg }

func defaultRouteDevice() (string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.LinkIndex <= 0 {
			continue
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("default route link: %w", err)
		}
		return l.Attrs().Name, nil
	}
	return "", errors.New("no IPv4 default route")
}

func hostVethName(prefix string, i int) string { return prefix + "-h" + strconv.Itoa(i) }
func netnsName(prefix string, i int) string    { return prefix + "-slot-" + strconv.Itoa(i) }

// parseIndex returns i if name is exactly head+<i>.
func parseIndex(name, head string) (int, bool) {
	rest, ok := strings.CutPrefix(name, head)
	if !ok || rest == "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil
}

// slot describes slot i; it is pure arithmetic on the configuration.
func (m *Manager) slot(i int) *Slot {
	base := m.cfg.Pool.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(i) * 4
	at := func(off uint32) netip.Addr {
		v := n + off
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	name := netnsName(m.cfg.Prefix, i)
	return &Slot{
		Index:     i,
		Netns:     name,
		NetnsPath: filepath.Join(NetnsDir, name),
		Tap:       slotTap,
		VethHost:  hostVethName(m.cfg.Prefix, i),
		VethSlot:  slotVeth,
		HostAddr:  netip.PrefixFrom(at(1), 30),
		Addr:      netip.PrefixFrom(at(2), 30),
	}
}

// Acquire returns a ready slot: a warm one from the pool when there is one,
// else a new one.
func (m *Manager) Acquire(ctx context.Context) (*Slot, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(m.idle); n > 0 {
		i := m.idle[n-1]
		m.idle = m.idle[:n-1]
		m.used[i] = true
		m.mu.Unlock()
		return m.slot(i), nil
	}
	i, err := m.reserveLocked()
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s, err := m.build(ctx, i)
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.creating, i)
	if err != nil {
		return nil, err
	}
	m.used[i] = true
	return s, nil
}

// reserveLocked picks the lowest free index. An index whose namespace
// exists although the manager does not know it (left by an earlier process
// and not yet reconciled) is skipped rather than clobbered.
func (m *Manager) reserveLocked() (int, error) {
	if len(m.used)+len(m.idle)+len(m.creating) >= m.cfg.MaxSlots {
		return 0, ErrExhausted
	}
	for i := range m.cfg.MaxSlots {
		if m.used[i] || m.creating[i] || slices.Contains(m.idle, i) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(NetnsDir, netnsName(m.cfg.Prefix, i))); err == nil {
			continue
		}
		m.creating[i] = true
		return i, nil
	}
	return 0, ErrExhausted
}

// build creates slot i and destroys what it made if it fails.
func (m *Manager) build(ctx context.Context, i int) (*Slot, error) {
	if err := m.ensureHost(ctx); err != nil {
		return nil, err
	}
	s := m.slot(i)
	if err := create(ctx, s); err != nil {
		if derr := destroy(s); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, fmt.Errorf("network: create slot %d: %w", i, err)
	}
	return s, nil
}

// Prewarm creates slots until at least n (at most PoolSize) are warm. It
// creates them one at a time without holding the manager's lock, so it may
// run in the background while Acquire and Release go on.
func (m *Manager) Prewarm(ctx context.Context, n int) error {
	n = min(n, m.cfg.PoolSize)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		if len(m.idle) >= n {
			m.mu.Unlock()
			return nil
		}
		i, err := m.reserveLocked()
		m.mu.Unlock()
		if err != nil {
			return err
		}
		s, err := m.build(ctx, i)
		m.mu.Lock()
		if err == nil && !m.closed && len(m.idle) < m.cfg.PoolSize {
			delete(m.creating, i)
			m.idle = append(m.idle, i)
			m.mu.Unlock()
			continue
		}
		closed := m.closed
		m.mu.Unlock()
		if err == nil { // closed, or the pool was filled by Release meanwhile
			err = destroy(s)
			if closed {
				err = errors.Join(ErrClosed, err)
			}
		}
		m.mu.Lock()
		delete(m.creating, i)
		m.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// Release resets a slot the caller is done with (no process may run in it
// any more) and pools it, or destroys it when the pool is full or the reset
// fails. Reset means: the default egress policy, no conntrack state, and
// Slot.Addr back on the veth.
func (m *Manager) Release(ctx context.Context, s *Slot) error {
	if s == nil {
		return errors.New("network: release of nil slot")
	}
	i := s.Index
	m.mu.Lock()
	if slices.Contains(m.idle, i) || m.creating[i] {
		m.mu.Unlock()
		return fmt.Errorf("network: release of slot %d, which is not in use", i)
	}
	// An unknown index is a slot of an earlier process the caller still
	// held; it is reset like any other.
	delete(m.used, i)
	custom := m.custom[i]
	delete(m.custom, i)
	m.creating[i] = true
	keep := !m.closed && len(m.idle) < m.cfg.PoolSize
	m.mu.Unlock()

	slot := m.slot(i)
	var err error
	if keep {
		if err = m.reset(ctx, slot, custom); err != nil {
			keep = false
		}
	}
	if !keep {
		if derr := destroy(slot); derr != nil {
			err = errors.Join(err, derr)
		} else {
			err = nil // a slot that failed to reset is gone now: nothing leaks
		}
	}
	m.mu.Lock()
	// Concurrent releases may have filled the pool meanwhile.
	if keep && (m.closed || len(m.idle) >= m.cfg.PoolSize) {
		keep = false
		m.mu.Unlock()
		err = destroy(slot)
		m.mu.Lock()
	}
	delete(m.creating, i)
	if keep {
		m.idle = append(m.idle, i)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("network: release slot %d: %w", i, err)
	}
	return nil
}

func (m *Manager) reset(ctx context.Context, s *Slot, custom bool) error {
	if custom {
		if err := applyEgress(ctx, s, policy{}); err != nil {
			return err
		}
	}
	if err := flushConntrack(s); err != nil {
		return err
	}
	return ReapplyAddr(ctx, s)
}

// Close destroys the warm slots and, when no slot is in use, the host's
// rules. Slots in use are left alone: their sandboxes may outlive the
// process, and Reconcile adopts or removes them later.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	idle := m.idle
	m.idle = nil
	inUse := len(m.used) + len(m.creating)
	m.mu.Unlock()
	var errs []error
	for _, i := range idle {
		if err := destroy(m.slot(i)); err != nil {
			errs = append(errs, err)
		}
	}
	if inUse == 0 {
		if err := m.removeHost(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: close: %w", err)
	}
	return nil
}

// Reconcile makes the host match the caller's view: every namespace and
// host veth with this manager's prefix whose index is neither pooled, nor
// acquired from this manager, nor inUse is deleted; the ones inUse are
// adopted (so Acquire skips them and Release takes them back). The
// orchestrator calls it at start, so a crash leaks nothing.
func (m *Manager) Reconcile(ctx context.Context, inUse func(index int) bool) error {
	if err := m.ensureHost(ctx); err != nil {
		return err
	}
	found := map[int]bool{}
	entries, err := os.ReadDir(NetnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("network: reconcile: %w", err)
	}
	for _, e := range entries {
		if i, ok := parseIndex(e.Name(), m.cfg.Prefix+"-slot-"); ok {
			found[i] = true
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("network: reconcile: list links: %w", err)
	}
	for _, l := range links {
		if i, ok := parseIndex(l.Attrs().Name, m.cfg.Prefix+"-h"); ok {
			found[i] = true
		}
	}
	var errs []error
	for i := range found {
		m.mu.Lock()
		mine := m.used[i] || m.creating[i] || slices.Contains(m.idle, i)
		adopt := !mine && inUse(i)
		if adopt {
			m.used[i] = true
			m.custom[i] = true // its egress policy is unknown
		}
		if !mine && !adopt {
			m.creating[i] = true
		}
		m.mu.Unlock()
		if mine || adopt {
			continue
		}
		if err := destroy(m.slot(i)); err != nil {
			errs = append(errs, err)
		}
		m.mu.Lock()
		delete(m.creating, i)
		m.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: reconcile: %w", err)
	}
	return nil
}

// InUse reports the indices handed out and not released, in order.
func (m *Manager) InUse() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]int, 0, len(m.used))
	for i := range m.used {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// Idle reports the number of warm slots.
func (m *Manager) Idle() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.idle)
}
