package network

import (
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func TestDropConnections(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (SOCK_DESTROY)")
	}
	// A loopback address of its own, so no other connection is touched.
	target, other := "127.77.0.1", "127.77.0.2"
	ln, err := net.Listen("tcp", target+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln2, err := net.Listen("tcp", other+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	go func() {
		for _, l := range []net.Listener{ln, ln2} {
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	dropped, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dropped.Close()
	kept, err := net.Dial("tcp", ln2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()

	if err := DropConnections(netip.MustParseAddr(target)); err != nil {
		t.Fatalf("DropConnections: %v", err)
	}
	_ = dropped.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := dropped.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection to %s: read got %v, want it aborted", target, err)
	}
	// The listener and connections to other addresses are untouched.
	if _, err := kept.Write([]byte("x")); err != nil {
		t.Errorf("connection to %s was touched: %v", other, err)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Errorf("listener on %s was touched: %v", target, err)
	} else {
		c.Close()
	}
}
