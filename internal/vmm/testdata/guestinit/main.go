// Command guestinit is a tiny PID 1 for the vmm tests: it loads the virtio
// modules, configures eth0 from cocoon.ip/cocoon.gw, mounts the root disk on
// /mnt and serves an envd-like HTTP API on port 49983:
//
//	GET  /health           204
//	POST /init             204 (ignored)
//	PUT  /file?path=P      write the body to /mnt/P
//	GET  /file?path=P      read /mnt/P (404 when absent)
//	POST /dirty?mb=N       fill N MiB of memory with a pattern
//	GET  /dirty            check that pattern (200 "ok N")
//	GET  /id               a random id drawn at boot
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var modules = []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk",
	"failover", "net_failover", "virtio_net", "virtio_console"}

func main() {
	if err := run(); err != nil {
		fmt.Println("guestinit: fatal:", err)
		os.Exit(1) // PID 1 exits: panic, and -no-reboot ends QEMU.
	}
}

func run() error {
	os.MkdirAll("/proc", 0o755)
	os.MkdirAll("/sys", 0o755)
	os.MkdirAll("/dev", 0o755)
	os.MkdirAll("/mnt", 0o755)
	unix.Mount("proc", "/proc", "proc", 0, "")
	unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	for _, m := range modules {
		f, err := os.Open("/lib/modules/" + m + ".ko")
		if err != nil {
			return err
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && err != unix.EEXIST {
			return fmt.Errorf("load %s: %w", m, err)
		}
		f.Close()
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	var ip netip.Prefix
	for _, a := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(a, "cocoon.ip="); ok {
			ip, _ = netip.ParsePrefix(v)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/dev/vda"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/dev/vda did not appear")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := unix.Mount("/dev/vda", "/mnt", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount /dev/vda: %w", err)
	}
	if ip.IsValid() {
		if err := ifup("eth0", ip); err != nil {
			fmt.Println("guestinit: eth0:", err)
		}
	}
	ifup("lo", netip.MustParsePrefix("127.0.0.1/8"))
	return serve()
}

func ifup(name string, p netip.Prefix) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	setAddr := func(req uint, a [4]byte) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := ifr.SetInet4Addr(a[:]); err != nil {
			return err
		}
		return unix.IoctlIfreq(fd, req, ifr)
	}
	if err := setAddr(unix.SIOCSIFADDR, p.Addr().As4()); err != nil {
		return fmt.Errorf("set addr: %w", err)
	}
	mask := net.CIDRMask(p.Bits(), 32)
	if err := setAddr(unix.SIOCSIFNETMASK, [4]byte(mask)); err != nil {
		return fmt.Errorf("set mask: %w", err)
	}
	ifr, _ := unix.NewIfreq(name)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func serve() error {
	var id [8]byte
	rand.Read(id[:])
	var (
		mu    sync.Mutex
		dirty []byte
		sum   [32]byte
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	// The warm pool's warm-up /init (runtime.WarmInit): accepted, ignored.
	mux.HandleFunc("POST /init", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	// The warm pool's warm-up command (runtime.WarmExec): a Connect stream
	// (JSON codec) with one end event and the end-of-stream frame.
	mux.HandleFunc("POST /process.Process/Start", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+json")
		for _, f := range []struct {
			flags byte
			msg   string
		}{{0, `{"event":{"end":{"exitCode":0,"exited":true}}}`}, {2, `{}`}} {
			var hdr [5]byte
			hdr[0] = f.flags
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(f.msg)))
			w.Write(hdr[:])
			io.WriteString(w, f.msg)
		}
	})
	mux.HandleFunc("GET /id", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, hex.EncodeToString(id[:])) })
	mux.HandleFunc("PUT /file", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		p := filepath.Join("/mnt", filepath.Clean("/"+r.URL.Query().Get("path")))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			http.Error(w, err.Error(), 500)
		}
	})
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		p := filepath.Join("/mnt", filepath.Clean("/"+r.URL.Query().Get("path")))
		b, err := os.ReadFile(p)
		if err != nil {
			http.Error(w, err.Error(), 404)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("POST /dirty", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		b := make([]byte, mb<<20)
		rand.Read(b)
		mu.Lock()
		dirty, sum = b, sha256.Sum256(b)
		mu.Unlock()
		fmt.Fprintf(w, "ok %d", mb)
	})
	mux.HandleFunc("GET /dirty", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if sha256.Sum256(dirty) != sum {
			http.Error(w, "memory changed", 500)
			return
		}
		fmt.Fprintf(w, "ok %d", len(dirty)>>20)
	})
	l, err := net.Listen("tcp", ":49983")
	if err != nil {
		return err
	}
	fmt.Println("guestinit: ready")
	return http.Serve(l, mux)
}
