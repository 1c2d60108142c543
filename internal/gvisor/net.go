package gvisor

import (
	"context"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cocoon-run/cocoon/internal/network"
)

// ReapplyAddr puts slot.Addr back on slot.VethSlot inside the slot's
// namespace, with the link up and a default route via slot.HostAddr.
// gVisor's --network=sandbox moves the addresses of the namespace's links
// into its own stack and deletes them from the host side, and reads them
// afresh at every start and restore. Calling it when the address is
// present is harmless.
func ReapplyAddr(ctx context.Context, slot *network.Slot) error {
	ns, err := netns.GetFromPath(slot.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", slot.NetnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", slot.NetnsPath, err)
	}
	defer h.Close()
	link, err := h.LinkByName(slot.VethSlot)
	if err != nil {
		return fmt.Errorf("find %s: %w", slot.VethSlot, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   slot.Addr.Addr().AsSlice(),
		Mask: net.CIDRMask(slot.Addr.Bits(), slot.Addr.Addr().BitLen()),
	}}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", slot.Addr, slot.VethSlot, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", slot.VethSlot, err)
	}
	if slot.HostAddr.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: slot.HostAddr.Addr().AsSlice()}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", slot.HostAddr.Addr(), err)
		}
	}
	return nil
}
