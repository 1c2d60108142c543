package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DropConnections aborts every TCP connection of the host (root network
// namespace) to addr, like `ss -K dst <addr>`: the peer gets a reset.
//
// The orchestrator calls it before saving a sandbox: a gVisor checkpoint
// taken while host connections (the proxy's keep-alive or streaming ones)
// are established does not come back from `runsc restore`, and such
// connections are dead after a pause anyway.
func DropConnections(addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("network: drop connections to %s: only IPv4 is supported", addr)
	}
	socks, err := netlink.SocketDiagTCP(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("network: list tcp sockets: %w", err)
	}
	var errs []error
	for _, s := range socks {
		dst, ok := netip.AddrFromSlice(s.ID.Destination.To4())
		if !ok || dst != addr || s.State == tcpListen {
			continue
		}
		local := &net.TCPAddr{IP: s.ID.Source, Port: int(s.ID.SourcePort)}
		remote := &net.TCPAddr{IP: s.ID.Destination, Port: int(s.ID.DestinationPort)}
		if err := netlink.SocketDestroy(local, remote); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("destroy %s->%s: %w", local, remote, err))
		}
	}
	return errors.Join(errs...)
}

// tcpListen is TCP_LISTEN in the kernel's tcp_states.h.
const tcpListen = 10
