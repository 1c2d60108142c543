// Command testenvd is a stand-in for envd in the gVisor driver's tests, for
// when no Debian rootfs and no real envd are available. Installed as
// /usr/local/bin/envd it serves on :49983.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sleeper" {
		time.Sleep(time.Hour)
		return
	}

	var counter atomic.Int64
	go func() {
		for range time.Tick(10 * time.Millisecond) {
			counter.Add(1)
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /counter", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, counter.Load())
	})
	mux.HandleFunc("POST /file", func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Query().Get("path")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := os.WriteFile(p, []byte(r.URL.Query().Get("data")), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("GET /uname", func(w http.ResponseWriter, r *http.Request) {
		var u syscall.Utsname
		if err := syscall.Uname(&u); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%s %s %s", str(u.Sysname[:]), str(u.Nodename[:]), str(u.Release[:]))
	})
	// /pids lists the command lines of every process visible in /proc.
	mux.HandleFunc("GET /pids", func(w http.ResponseWriter, r *http.Request) {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			fmt.Fprintf(w, "%s %s\n", e.Name(), strings.ReplaceAll(string(b), "\x00", " "))
		}
	})
	// /forkbomb starts up to n sleeping processes, each its own address
	// space (a host stub process under systrap), until one fails; it
	// reports how many started and the error, then ends them.
	mux.HandleFunc("POST /forkbomb", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		var procs []*os.Process
		var err error
		for len(procs) < n {
			var p *os.Process
			p, err = os.StartProcess("/proc/self/exe", []string{"envd", "sleeper"}, &os.ProcAttr{})
			if err != nil {
				break
			}
			procs = append(procs, p)
		}
		for _, p := range procs {
			p.Kill()
			p.Wait()
		}
		fmt.Fprintf(w, "%d %v", len(procs), err)
	})
	log.Fatal(http.ListenAndServe(":49983", mux))
}

func str(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
