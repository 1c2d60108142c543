package vmm

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-run/cocoon/internal/network"
)

// inNetns runs fn on an OS thread that has joined the network namespace at
// path, then moves the thread back. Sockets created and processes forked by
// fn belong to that namespace for good. The thread is discarded if it cannot
// be moved back.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: Go ends it when this goroutine exits.
		return fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// startIn starts cmd inside the slot's network namespace (or the current one
// when slot is nil): the fork happens on a thread that joined the namespace,
// which saves the fork+exec of `ip netns exec` on every start.
func startIn(slot *network.Slot, cmd *exec.Cmd) error {
	if slot == nil {
		return cmd.Start()
	}
	return inNetns(slot.NetnsPath, cmd.Start)
}

// GuestClient returns an HTTP client whose connections are made from inside
// the slot's network namespace, so "http://169.254.0.21:<port>" reaches the
// guest whatever the host-side routing of the slot is. With a nil slot it is
// an ordinary client.
func GuestClient(slot *network.Slot) *http.Client {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, netw, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(slotPath(slot), func() error {
				var err error
				// The socket is created (in the namespace) before
				// DialContext returns; connect itself is async.
				c, err = (&net.Dialer{}).DialContext(ctx, netw, addr)
				return err
			})
			return c, err
		},
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func slotPath(slot *network.Slot) string {
	if slot == nil {
		return ""
	}
	return slot.NetnsPath
}

// EnvdURL is the base URL of envd in a guest, as seen from GuestClient.
func EnvdURL() string {
	return "http://" + net.JoinHostPort(network.GuestIP.String(), strconv.Itoa(envdPort))
}
