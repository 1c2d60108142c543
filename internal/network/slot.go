package network

import (
	"net"
	"net/netip"
)

// Fixed addresses seen by every microVM guest. They are the same in every
// slot so that any snapshot restores into any slot.
var (
	// GuestIP is the address of a microVM guest inside its slot.
	GuestIP = netip.MustParseAddr("169.254.0.21")
	// GuestGateway is the slot-side address of the TAP device.
	GuestGateway = netip.MustParseAddr("169.254.0.22")
	// GuestMAC is a microVM guest's MAC address, the same in every slot.
	GuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xc0, 0xc0, 0x01}
	// TapMAC is the TAP device's MAC address, the same in every slot: a
	// guest restored from a snapshot still has the gateway's address in
	// its ARP cache, and it must stay right.
	TapMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xc0, 0xc0, 0x02}
)

// GuestPrefixLen is the prefix length of the guest's link (a /30).
const GuestPrefixLen = 30

// Slot is one network namespace prepared for a sandbox.
//
// The host reaches any port of the sandbox at Addr: for a microVM the slot
// DNATs Addr to GuestIP; for gVisor, which takes over the namespace's veth
// addresses, Addr is the sandbox's own address.
type Slot struct {
	// Index is unique per node; it derives the names and addresses below.
	Index int
	// Netns is the name of the namespace (as in `ip netns`).
	Netns string
	// NetnsPath is the path of the namespace handle, e.g. /var/run/netns/<Netns>.
	NetnsPath string
	// Tap is the name of the TAP device inside the namespace (microVMs).
	Tap string
	// VethHost is the host side of the veth pair, in the root namespace.
	VethHost string
	// VethSlot is the namespace side of the veth pair.
	VethSlot string
	// HostAddr is the host side's address (the gateway of a gVisor sandbox).
	HostAddr netip.Prefix
	// Addr is where the host reaches the sandbox's ports.
	Addr netip.Prefix
}

// TapPrefix is the guest's link: GuestGateway/30, holding GuestIP.
func TapPrefix() netip.Prefix { return netip.PrefixFrom(GuestGateway, GuestPrefixLen).Masked() }

// Egress is the per-sandbox outbound policy.
type Egress struct {
	// Disabled drops all outbound traffic from the sandbox, whatever the
	// lists say; the host still reaches the sandbox at Slot.Addr.
	Disabled bool
	// AllowOut and DenyOut are IPv4 CIDRs (or bare IPs); allow wins over
	// deny, so DenyOut 0.0.0.0/0 plus an AllowOut list is an allowlist.
	// IPv6 entries are accepted and have no effect: IPv6 never leaves a slot.
	AllowOut []string
	DenyOut  []string
}
