package fleet

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// TestTemplateFetch: a node lacking a custom template asks the control
// plane where it is and fetches it from the node that has it, whether or
// not that node's heartbeat lists it yet; the asking node is not named.
func TestTemplateFetch(t *testing.T) {
	f := newTestFleet(t)
	const ref = "custom/0123456789abcdef0123456789abcdef"
	nodeSrv := func(has bool) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Header.Get("Authorization") != "Bearer node-secret":
				http.Error(w, "token", http.StatusUnauthorized)
			case has && r.URL.Path == "/node/templates/"+ref:
				io.WriteString(w, "artifact")
			default:
				http.NotFound(w, r)
			}
		}))
		t.Cleanup(s.Close)
		return s
	}
	urls := map[string]string{"n1": nodeSrv(true).URL, "n2": nodeSrv(false).URL, "n3": nodeSrv(false).URL}
	beatWith := func(id string, templates ...string) {
		a := NewAgent(AgentConfig{ControlURL: f.srv.URL, NodeToken: "node-secret", Logger: quiet(),
			Beat: func(ctx context.Context) (Heartbeat, error) {
				hb, _ := beat(id)(ctx)
				hb.URL, hb.Templates = urls[id], templates
				return hb, nil
			}})
		if _, err := a.Beat(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// n2 sorts before n1's URL or not: n1 is found either way.
	beatWith("n1")
	beatWith("n2")
	beatWith("n3")
	if err := f.reg.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	fetch := func(self string) (string, error) {
		tf := &TemplateFetcher{ControlURL: f.srv.URL, NodeToken: "node-secret", NodeID: self, ArtifactPath: "/node/templates/"}
		rc, err := tf.FetchTemplate(t.Context(), ref)
		if err != nil {
			return "", err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		return string(b), err
	}
	if got, err := fetch("n3"); err != nil || got != "artifact" {
		t.Fatalf("fetch before n1 lists it: %q %v", got, err)
	}
	if h := f.reg.Holders(ref, "n3"); len(h) != 2 || slices.Contains(h, urls["n3"]) {
		t.Errorf("holders for n3: %v", h)
	}
	// Listed: n1 first.
	beatWith("n1", ref)
	if err := f.reg.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if h := f.reg.Holders(ref, "n3"); len(h) != 2 || h[0] != urls["n1"] {
		t.Errorf("holders for n3 once n1 lists it: %v, want %s first", h, urls["n1"])
	}
	// n1 asking finds no other holder.
	if _, err := fetch("n1"); err == nil || !strings.Contains(err.Error(), "no node has it") {
		t.Errorf("n1 fetching what only it has: %v", err)
	}
	// A wrong token is refused by the control plane.
	tf := &TemplateFetcher{ControlURL: f.srv.URL, NodeToken: "wrong", NodeID: "n3", ArtifactPath: "/node/templates/"}
	if _, err := tf.FetchTemplate(t.Context(), ref); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}
}
