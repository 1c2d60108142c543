package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzRoute feeds arbitrary hosts and routing headers to Route: it never
// panics, and a route it accepts names a sandbox ID without '.' or '/' and a
// port in 1..65535.
func FuzzRoute(f *testing.F) {
	for _, s := range [][3]string{
		{"49983-isbx1.sb.example", "", ""},
		{"proxy.local:3001", "isbx1", "49983"},
		{"0-x.sb.example", "", ""},
		{"65536-x.sb.example", "", ""},
		{"-x.sb.example", "", ""},
		{"80-.sb.example", "", ""},
		{"80-a-b.sb.example:443", "", ""},
		{"[::1]:3001", "id", "+80"},
		{"x", "id\x00", "0x50"},
		{"80-id.sb.example.evil", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	p := New(mapResolver{}, "sb.example", nil)
	f.Fuzz(func(t *testing.T, host, id, port string) {
		r := &http.Request{Host: host, Header: http.Header{}}
		if id != "" {
			r.Header.Set("E2b-Sandbox-Id", id)
			r.Header.Set("E2b-Sandbox-Port", port)
		}
		gotID, gotPort, err := p.Route(r)
		if err != nil {
			return
		}
		if gotID == "" || gotPort <= 0 || gotPort > 65535 {
			t.Fatalf("Route(%q, %q, %q) = %q, %d", host, id, port, gotID, gotPort)
		}
		if id == "" && strings.ContainsAny(gotID, "./") {
			t.Fatalf("host %q routed to sandbox %q", host, gotID)
		}
	})
}
