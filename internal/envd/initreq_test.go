package envd

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/envd/initreq"
)

// TestInitreqSend: what the host sends with initreq is what envd's /init
// reads, field by field, and a refusal comes back as a StatusError.
func TestInitreqSend(t *testing.T) {
	s, hs, sys := newTestServer(t, Config{})
	ctx := context.Background()
	ts := time.Date(2030, 1, 2, 3, 4, 5, 123456789, time.UTC)
	r := initreq.Request{
		EnvVars: map[string]string{"FOO": "bar"}, AccessToken: "t1", DefaultUser: "root",
		DefaultWorkdir: "/srv", Timestamp: ts.Format(time.RFC3339Nano), Hostname: "sbx-1", Seed: []byte{1, 2, 3},
	}
	if err := initreq.Send(ctx, hs.Client(), hs.URL, "", r); err != nil {
		t.Fatal(err)
	}
	sess := s.Session()
	if !sys.clock.Equal(ts) || sys.hostname != "sbx-1" || !bytes.Equal(sys.seed, []byte{1, 2, 3}) {
		t.Errorf("system = clock %v host %q seed %v", sys.clock, sys.hostname, sys.seed)
	}
	if got := sess.Envs()["FOO"]; got != "bar" {
		t.Errorf("env FOO = %q, want bar", got)
	}
	if sess.Token() != "t1" || sess.DefaultUser() != "root" || sess.DefaultWorkdir() != "/srv" {
		t.Errorf("session token %q user %q workdir %q", sess.Token(), sess.DefaultUser(), sess.DefaultWorkdir())
	}

	// Now the token is required; empty fields change nothing.
	var se *initreq.StatusError
	if err := initreq.Send(ctx, hs.Client(), hs.URL, "wrong", initreq.Request{}); !errors.As(err, &se) || se.Status != "401 Unauthorized" {
		t.Fatalf("wrong token: %v, want a 401 StatusError", err)
	}
	if err := initreq.Send(ctx, hs.Client(), hs.URL, "t1", initreq.Request{}); err != nil {
		t.Fatal(err)
	}
	if sess.Token() != "t1" || sess.DefaultUser() != "root" || sess.DefaultWorkdir() != "/srv" {
		t.Errorf("an empty /init changed the session: token %q user %q workdir %q", sess.Token(), sess.DefaultUser(), sess.DefaultWorkdir())
	}
}
