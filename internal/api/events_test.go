package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

// receiver is a webhook endpoint that can be down (503) or slow (blocked
// on a channel), and checks every signature.
type receiver struct {
	t      *testing.T
	secret string
	down   atomic.Bool
	block  chan struct{} // non-nil: each request waits on it
	mu     sync.Mutex
	got    []eventJSON
	added  chan struct{}
}

func newReceiver(t *testing.T, secret string) (*receiver, *httptest.Server) {
	r := &receiver{t: t, secret: secret, added: make(chan struct{}, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.block != nil {
			<-r.block
		}
		if r.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(req.Body)
		if got, want := req.Header.Get("e2b-signature"), Signature(r.secret, body); got != want {
			t.Errorf("signature %q, want %q", got, want)
		}
		if req.Header.Get("e2b-signature-version") != "v1" || req.Header.Get("e2b-webhook-id") == "" || req.Header.Get("e2b-delivery-id") == "" {
			t.Errorf("headers: %v", req.Header)
		}
		var ev eventJSON
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("body: %v", err)
		}
		r.mu.Lock()
		r.got = append(r.got, ev)
		r.mu.Unlock()
		r.added <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	return r, srv
}

// types returns the event types received for sandbox id, in order.
func (r *receiver) types(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.got {
		if e.SandboxID == id {
			out = append(out, e.Type)
		}
	}
	return out
}

func fastWebhooks() Config {
	return Config{WebhookPoll: 10 * time.Millisecond, WebhookBackoff: 10 * time.Millisecond, WebhookTimeout: 5 * time.Second, LifecycleInterval: time.Hour}
}

// A receiver that is down gets every event of a sandbox, in order and
// signed, once it is back, also when the api restarted meanwhile; the
// events API lists the same events.
func TestWebhookDownThenUp(t *testing.T) {
	e := newEnv(t, fastWebhooks())
	rcv, srv := newReceiver(t, "shh")
	rcv.down.Store(true)
	var hook webhookJSON
	e.do(e.keyA, "POST", "/events/webhooks", map[string]any{"name": "w", "url": srv.URL, "signatureSecret": "shh"}).decode(t, &hook)
	if hook.ID == "" || len(hook.Events) != len(store.EventTypes) || !hook.Enabled {
		t.Fatalf("webhook = %+v", hook)
	}
	// The first api delivers (and fails) while the receiver is down.
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { e.srv.Run(ctx); close(stopped) }()

	sb := e.create(e.keyA, nil)
	if r := e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/timeout", map[string]any{"timeout": 600}); r.status != 204 {
		t.Fatalf("timeout: %d %s", r.status, r.body)
	}
	if r := e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/pause", nil); r.status != 204 {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if r := e.do(e.keyA, "POST", "/sandboxes/"+sb.SandboxID+"/connect", map[string]any{"timeout": 60}); r.status != 201 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	if r := e.do(e.keyA, "DELETE", "/sandboxes/"+sb.SandboxID, nil); r.status != 204 {
		t.Fatalf("kill: %d %s", r.status, r.body)
	}
	want := []string{store.EventCreated, store.EventUpdated, store.EventPaused, store.EventResumed, store.EventKilled}
	var evs []eventJSON
	e.do(e.keyA, "GET", "/events/sandboxes/"+sb.SandboxID+"?orderAsc=true&limit=100", nil).decode(t, &evs)
	var types []string
	for _, ev := range evs {
		types = append(types, ev.Type)
	}
	if !slices.Equal(types, want) {
		t.Fatalf("events API: %v, want %v", types, want)
	}
	if k := evs[4]; string(k.EventData) == "null" || !json.Valid(k.EventData) {
		t.Errorf("killed eventData = %s", k.EventData)
	}
	var killed struct {
		Reason    string         `json:"reason"`
		Execution map[string]any `json:"execution"`
	}
	_ = json.Unmarshal(evs[4].EventData, &killed)
	if killed.Reason != "request" || killed.Execution["vcpu_count"] == nil {
		t.Errorf("killed eventData = %s", evs[4].EventData)
	}
	// Team B sees none of it.
	if r := e.do(e.keyB, "GET", "/events/sandboxes/"+sb.SandboxID, nil); r.status != 404 {
		t.Errorf("team B: %d %s", r.status, r.body)
	}
	var teamB []eventJSON
	e.do(e.keyB, "GET", "/events/sandboxes", nil).decode(t, &teamB)
	if len(teamB) != 0 {
		t.Errorf("team B events: %+v", teamB)
	}
	// At least one attempt failed before the restart.
	eventually(t, "a failed attempt", func() bool {
		ds, _ := e.store.PendingDeliveries(context.Background())
		return len(ds) == 1 && ds[0].Attempts > 0
	})
	cancel()
	<-stopped

	// A new api over the same store, and the receiver back.
	e.start(fastWebhooks())
	rcv.down.Store(false)
	e.run()
	eventually(t, "every event delivered", func() bool { return len(rcv.types(sb.SandboxID)) >= len(want) })
	if got := rcv.types(sb.SandboxID); !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

// A receiver that does not answer delays no sandbox operation.
func TestWebhookSlowReceiver(t *testing.T) {
	e := newEnv(t, fastWebhooks())
	rcv, srv := newReceiver(t, "k")
	rcv.block = make(chan struct{})
	e.do(e.keyA, "POST", "/events/webhooks", map[string]any{"url": srv.URL, "signatureSecret": "k",
		"events": []string{store.EventCreated}}).decode(t, new(webhookJSON))
	e.run()
	first := e.create(e.keyA, nil)
	eventually(t, "the first delivery waiting on the receiver", func() bool {
		ds, _ := e.store.PendingDeliveries(context.Background())
		return len(ds) == 1 && ds[0].NextAt.After(time.Now())
	})
	// The receiver holds the first delivery; creates go on.
	for range 3 {
		e.create(e.keyA, nil)
	}
	close(rcv.block)
	eventually(t, "all four delivered", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return len(rcv.got) == 4
	})
	if rcv.got[0].SandboxID != first.SandboxID {
		t.Errorf("first delivered %s, want %s", rcv.got[0].SandboxID, first.SandboxID)
	}
}

func TestWebhookCRUD(t *testing.T) {
	e := newEnv(t, Config{})
	if r := e.do(e.keyA, "POST", "/events/webhooks", map[string]any{"url": "ftp://x", "signatureSecret": "s"}); r.status != 400 {
		t.Errorf("ftp url: %d", r.status)
	}
	if r := e.do(e.keyA, "POST", "/events/webhooks", map[string]any{"url": "http://x", "signatureSecret": "s", "events": []string{"nope"}}); r.status != 400 {
		t.Errorf("unknown event: %d", r.status)
	}
	var h webhookJSON
	e.do(e.keyA, "POST", "/events/webhooks", map[string]any{"url": "http://x/", "signatureSecret": "s", "name": "a"}).decode(t, &h)
	var upd webhookJSON
	e.do(e.keyA, "PATCH", "/events/webhooks/"+h.ID, map[string]any{"enabled": false, "events": []string{store.EventKilled}}).decode(t, &upd)
	if upd.Enabled || !slices.Equal(upd.Events, []string{store.EventKilled}) || upd.Name != "a" {
		t.Errorf("updated = %+v", upd)
	}
	if r := e.do(e.keyB, "GET", "/events/webhooks/"+h.ID, nil); r.status != 404 {
		t.Errorf("team B get: %d", r.status)
	}
	if r := e.do(e.keyA, "GET", "/events/webhooks/"+h.ID, nil); r.status != 200 || json.Valid(r.body) && string(r.body) == "" {
		t.Errorf("get: %d", r.status)
	}
	if r := e.do(e.keyA, "DELETE", "/events/webhooks/"+h.ID, nil); r.status != 200 {
		t.Errorf("delete: %d %s", r.status, r.body)
	}
	var list []webhookJSON
	e.do(e.keyA, "GET", "/events/webhooks", nil).decode(t, &list)
	if len(list) != 0 {
		t.Errorf("after delete: %+v", list)
	}
}
