package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer is a server's error log, written by its connections'
// goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSandboxDiesMidRequest: a sandbox that dies while a request with a
// body is in flight (its port refuses, its connection is cut, or Fail says
// it died) answers 502 {code, message} naming the sandbox, with no internal
// address; one that dies mid-stream ends the stream. The proxy's server logs
// no panic: a body the sandbox never read was drained after the handler
// returned, and the next request on the connection panicked with "invalid
// concurrent Body.Read call" (golang/go#68560).
func TestSandboxDiesMidRequest(t *testing.T) {
	tests := []struct {
		name   string
		gone   bool     // the sandbox's port refuses before the request
		stream bool     // the sandbox answers with a stream, then dies
		fail   bool     // the sandbox dies by Fail, not by a cut connection
		idle   bool     // the client sends no more of its body after the death
		want   []string // the reason, any of
	}{
		{name: "port refuses", gone: true, want: []string{"connection refused"}},
		// Whether the transport sees the end or a reset depends on whether
		// it was writing the body when the connection went.
		{name: "connection cut mid-request", want: []string{"the connection closed before an answer", "connection reset by peer"}},
		{name: "Fail mid-request", fail: true, want: []string{"killed by the test"}},
		// A partial upload whose client waits (it hung until the client
		// sent the rest of its body, or for ever).
		{name: "Fail mid-request, the client idle", fail: true, idle: true, want: []string{"killed by the test"}},
		{name: "connection cut mid-stream", stream: true},
		{name: "Fail mid-stream", stream: true, fail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived, cut := make(chan struct{}), make(chan struct{})
			var cutOnce sync.Once
			dieNow := func() { cutOnce.Do(func() { close(cut) }) }
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = http.NewResponseController(w).EnableFullDuplex()
				// The sandbox reads the first half of the body only.
				if _, err := io.ReadFull(r.Body, make([]byte, 5)); err != nil {
					t.Errorf("upstream read: %v", err)
				}
				if tt.stream {
					fmt.Fprint(w, "first\n")
					w.(http.Flusher).Flush()
				}
				close(arrived)
				select {
				case <-cut:
				case <-r.Context().Done():
					return
				}
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close() // what a dead runtime's connection does
				}
			}))
			defer up.Close()
			defer dieNow() // before up.Close: its handler waits for it
			host, port, _ := net.SplitHostPort(up.Listener.Addr().String())
			if tt.gone {
				up.Close()
			}
			p := New(mapResolver{"sb1": host}, "", nil)
			front := httptest.NewUnstartedServer(p)
			errLog := &lockedBuffer{}
			front.Config.ErrorLog = log.New(errLog, "", 0)
			front.Start()
			defer front.Close()
			var conns []net.Conn
			defer func() { // before front.Close, which waits for them
				for _, c := range conns {
					c.Close()
				}
			}()
			dial := func() (net.Conn, *bufio.Reader) {
				t.Helper()
				conn, err := net.Dial("tcp", front.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, conn)
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second)) // against a hang only
				return conn, bufio.NewReader(conn)
			}
			// health asks the proxy's own health on conn.
			health := func(conn net.Conn, br *bufio.Reader) error {
				fmt.Fprint(conn, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusNoContent {
					return fmt.Errorf("got %d, want 204", resp.StatusCode)
				}
				return nil
			}

			conn, br := dial()
			const head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nE2b-Sandbox-Id: sb1\r\nE2b-Sandbox-Port: %s\r\nContent-Length: 10\r\n\r\nfirst"
			fmt.Fprintf(conn, head, port)
			var resp *http.Response
			var err error
			if tt.stream {
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if l, err := bufio.NewReader(resp.Body).ReadString('\n'); l != "first\n" {
					t.Fatalf("stream's first line: %q, %v", l, err)
				}
			}
			if !tt.gone {
				<-arrived
				if tt.fail {
					p.Fail("sb1", "killed by the test")
				} else {
					dieNow()
				}
			}
			// The client goes on sending its body, as an upload does, or
			// waits.
			t0 := time.Now()
			if !tt.idle {
				fmt.Fprint(conn, "again")
			}
			if tt.stream {
				if _, err := io.Copy(io.Discard, resp.Body); err == nil {
					t.Error("the stream ended cleanly after its sandbox died; want an error")
				}
			} else {
				resp, err = http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				if took := time.Since(t0); tt.idle && took > 2*time.Second {
					t.Errorf("the idle client got its answer %v after the death, want at once", took)
				}
				var e struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				}
				if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != http.StatusBadGateway || e.Code != http.StatusBadGateway {
					t.Fatalf("got %d %q, want 502 with {code, message}", resp.StatusCode, body)
				}
				if !strings.Contains(e.Message, `"sb1"`) || !slices.ContainsFunc(tt.want, func(w string) bool { return strings.Contains(e.Message, w) }) {
					t.Errorf("message %q does not name the sandbox and one of %q", e.Message, tt.want)
				}
				if strings.Contains(e.Message, host) {
					t.Errorf("message %q shows the internal address %s", e.Message, host)
				}
				// The connection serves the next request, or says it
				// closes (the proxy did not read the body to its end).
				if resp.Close {
					if _, err := br.ReadByte(); err != io.EOF {
						t.Errorf("after Connection: close, read %v; want EOF", err)
					}
				} else if err := health(conn, br); err != nil {
					t.Errorf("the next request on the connection: %v", err)
				}
			}
			if err := health(dial()); err != nil {
				t.Errorf("a request on a new connection: %v", err)
			}
			for _, c := range conns {
				c.Close() // the client goes away
			}
			front.Close() // waits for the connections' goroutines
			if l := errLog.String(); strings.Contains(l, "panic serving") {
				t.Errorf("the proxy panicked:\n%s", l)
			}
		})
	}
}
