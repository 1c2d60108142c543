package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// runNft applies script as one nftables transaction in the calling
// thread's network namespace.
func runNft(ctx context.Context, script string) error {
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Names of the nftables objects inside a slot.
const (
	slotTable   = "cocoon"
	egressTable = "egress"
)

// slotRules is the script that sets up a new slot's namespace (see the
// package documentation).
func slotRules(s *Slot) string {
	return fmt.Sprintf(`table ip %[1]s {
	chain pre_raw {
		type filter hook prerouting priority raw; policy accept;
		iifname %[2]q fib daddr type != local drop
	}
	chain pre_nat {
		type nat hook prerouting priority dstnat; policy accept;
		iifname %[2]q ip daddr %[3]s meta l4proto tcp dnat to %[4]s
	}
	chain post_nat {
		type nat hook postrouting priority srcnat; policy accept;
		oifname %[5]q masquerade
		oifname %[2]q ip saddr %[6]s masquerade
	}
}
table netdev %[7]s {
	set allow { type ipv4_addr; flags interval; auto-merge; }
	set deny { type ipv4_addr; flags interval; auto-merge; }
	chain out {
		type filter hook egress device %[2]q priority filter; policy accept;
	}
}
`, slotTable, s.VethSlot, s.Addr.Addr(), GuestIP, s.Tap, TapPrefix(), egressTable) + egressScript(s, policy{})
}

// policy is a validated Egress.
type policy struct {
	disabled    bool
	allow, deny []netip.Prefix
}

func (p policy) isDefault() bool { return !p.disabled && len(p.allow) == 0 && len(p.deny) == 0 }

// parsePolicy validates e. IPv6 entries are checked and dropped: IPv6
// never leaves a slot.
func parsePolicy(e Egress) (policy, error) {
	p := policy{disabled: e.Disabled}
	var errs []error
	for _, l := range []struct {
		name string
		in   []string
		out  *[]netip.Prefix
	}{{"allowOut", e.AllowOut, &p.allow}, {"denyOut", e.DenyOut, &p.deny}} {
		for _, s := range l.in {
			pfx, err := parseCIDR(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", l.name, err))
				continue
			}
			if pfx.Addr().Is4() {
				*l.out = append(*l.out, pfx)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return policy{}, err
	}
	return p, nil
}

// CheckEgress says what is wrong with e's rules, as a node would refuse
// them, so that the API can answer 400 before it records a sandbox.
func CheckEgress(e Egress) error {
	_, err := parsePolicy(e)
	return err
}

// parseCIDR accepts a CIDR or a bare address; host bits must be zero so
// that a typo like 10.0.0.1/8 is not silently widened.
func parseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// egressScript replaces the slot's egress policy in one transaction.
func egressScript(s *Slot, p policy) string {
	var b strings.Builder
	fmt.Fprintf(&b, "flush set netdev %s allow\n", egressTable)
	fmt.Fprintf(&b, "flush set netdev %s deny\n", egressTable)
	for _, set := range []struct {
		name string
		list []netip.Prefix
	}{{"allow", p.allow}, {"deny", p.deny}} {
		if len(set.list) == 0 {
			continue
		}
		elems := make([]string, len(set.list))
		for i, pfx := range set.list {
			elems[i] = pfx.String()
		}
		fmt.Fprintf(&b, "add element netdev %s %s { %s }\n", egressTable, set.name, strings.Join(elems, ", "))
	}
	rule := func(r string) { fmt.Fprintf(&b, "add rule netdev %s out %s\n", egressTable, r) }
	fmt.Fprintf(&b, "flush chain netdev %s out\n", egressTable)
	rule("meta protocol ip6 drop")
	rule("meta protocol != ip accept")
	rule(fmt.Sprintf("ip daddr %s accept", s.HostAddr.Addr()))
	switch {
	case p.disabled:
		rule("drop")
	default:
		if len(p.allow) > 0 {
			rule("ip daddr @allow accept")
		}
		if len(p.deny) > 0 {
			rule("ip daddr @deny drop")
		}
	}
	return b.String()
}

// applyEgress replaces slot s's egress policy.
func applyEgress(ctx context.Context, s *Slot, p policy) error {
	if err := inNetns(s.NetnsPath, func() error { return runNft(ctx, egressScript(s, p)) }); err != nil {
		return fmt.Errorf("egress rules in %s: %w", s.Netns, err)
	}
	return nil
}

// SetEgress replaces the egress policy of a slot handed out by Acquire.
// Bad CIDRs are reported all at once, and nothing changes then.
func (m *Manager) SetEgress(ctx context.Context, s *Slot, e Egress) error {
	p, err := parsePolicy(e)
	if err != nil {
		return fmt.Errorf("network: egress: %w", err)
	}
	m.mu.Lock()
	inUse, custom := m.used[s.Index], m.custom[s.Index]
	m.mu.Unlock()
	if !inUse {
		return fmt.Errorf("network: egress of slot %d, which is not in use", s.Index)
	}
	if !custom && p.isDefault() {
		// Acquired slots carry the default policy: spare the create path
		// an nft run.
		return nil
	}
	if err := applyEgress(ctx, m.slot(s.Index), p); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	m.mu.Lock()
	// A policy on a slot released meanwhile is reset by that Release.
	if m.used[s.Index] {
		m.custom[s.Index] = !p.isDefault()
	}
	m.mu.Unlock()
	return nil
}

// hostRules is the host's table for this manager (see the package
// documentation). It is replaced as a whole, so it is idempotent.
func (m *Manager) hostRules() string {
	veths := m.cfg.Prefix + "-h*"
	return fmt.Sprintf(`table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[2]s oifname %[3]q masquerade
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname %[4]q oifname != %[3]q drop
		oifname %[4]q ct state established,related accept
		oifname %[4]q drop
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname %[4]q ct state established,related accept
		iifname %[4]q drop
	}
}
`, m.cfg.Prefix, m.cfg.Pool, m.cfg.EgressInterface, veths)
}

// ensureHost sets up the host side once per manager.
func (m *Manager) ensureHost(ctx context.Context) error {
	m.hostMu.Lock()
	defer m.hostMu.Unlock()
	if m.hostReady {
		return nil
	}
	if _, err := netlink.LinkByName(m.cfg.EgressInterface); err != nil {
		return fmt.Errorf("network: egress interface %s: %w", m.cfg.EgressInterface, err)
	}
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := runNft(ctx, m.hostRules()); err != nil {
		return fmt.Errorf("network: host rules: %w", err)
	}
	m.hostReady = true
	return nil
}

// removeHost deletes the host's table (forwarding stays on: other users of
// the host may rely on it).
func (m *Manager) removeHost(ctx context.Context) error {
	m.hostMu.Lock()
	defer m.hostMu.Unlock()
	script := fmt.Sprintf("table ip %[1]s\ndelete table ip %[1]s\n", m.cfg.Prefix)
	if err := runNft(ctx, script); err != nil {
		return fmt.Errorf("remove host rules: %w", err)
	}
	m.hostReady = false
	return nil
}
