// Package network manages sandbox network slots: one network namespace per
// sandbox, joined to the host by a veth pair, holding the TAP device of a
// microVM or the gVisor sandbox itself, with NAT-ed and filtered egress.
//
// # Addressing
//
// A Manager owns an IPv4 pool (default 10.200.0.0/16) cut into /30s. Slot i
// uses the i-th /30, network N = pool + 4i:
//
//	root namespace   <prefix>-h<i>  N+1/30   Slot.HostAddr
//	slot namespace   eth0           N+2/30   Slot.Addr (the veth's peer)
//	slot namespace   tap0           169.254.0.22/30 (GuestGateway)
//	microVM guest    eth0           169.254.0.21/30 (GuestIP), gw GuestGateway
//
// The namespace is <prefix>-slot-<i> (/run/netns/<prefix>-slot-<i>). The
// guest's address is the same in every slot so that a snapshot restores
// into any slot; the host tells slots apart by Slot.Addr.
//
// # Rules inside a slot (nftables, created once with the slot)
//
//   - prerouting, raw: traffic arriving on eth0 for an address that is not
//     local to the namespace is dropped. While a gVisor sandbox runs, it has
//     taken Slot.Addr off eth0 (see ReapplyAddr) and reads eth0's packets
//     itself; this rule keeps the namespace's own kernel from also
//     DNAT-ing, forwarding or answering them. The microVM DNAT below thus
//     only fires while Addr is on eth0, i.e. when no gVisor sandbox owns it,
//     and one slot serves both runtimes without a mode switch.
//   - prerouting, nat: TCP to Slot.Addr arriving on eth0 is DNAT-ed to
//     GuestIP, so the host reaches any guest port at Slot.Addr:port.
//   - postrouting, nat: traffic leaving via tap0 is masqueraded (the guest
//     sees GuestGateway as the client, so replies route back whatever the
//     guest's routes); guest traffic leaving via eth0 is masqueraded to
//     Slot.Addr.
//   - netdev egress hook on eth0 (table "egress"): the per-sandbox policy
//     set by SetEgress. It sees both forwarded microVM traffic and the
//     packets gVisor writes to eth0 itself. It is stateless: traffic to
//     Slot.HostAddr (replies to the host) and non-IP traffic (ARP) always
//     pass, IPv6 never does; then AllowOut accepts, DenyOut drops, and
//     Disabled drops everything else.
//
// IPv6 is disabled on the slot's links, and IP forwarding is on inside the
// namespace.
//
// # Rules on the host (table "ip <prefix>", created on first use)
//
//   - IPv4 forwarding is switched on (net.ipv4.ip_forward=1).
//   - the pool is masqueraded out of the egress interface;
//   - traffic from a slot may only be forwarded out of the egress
//     interface (no slot-to-slot, no other host networks), and only
//     established traffic is forwarded into a slot;
//   - new connections from a slot to the host itself are dropped: the host
//     reaches the sandbox, not the other way round.
//
// # Life cycle
//
// Acquire hands out a warm slot from the pool (or creates one), Release
// resets it (egress policy, conntrack state, Slot.Addr) and pools it again,
// and Reconcile removes what a crashed process left behind. One Manager per
// prefix per host; managers with different prefixes must use disjoint pools.
package network
