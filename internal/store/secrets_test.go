package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSecretsAtRest: cocoon.db held every sandbox's envd token and env vars
// in plain text, and a token read from it gave root in another team's
// sandbox (issue 18). With a secrets key the columns hold none of them, the
// store gives them back, rows written before the key are sealed at Open,
// and another key opens nothing.
func testSecretsAtRest(t *testing.T, dsn string) {
	key := bytes.Repeat([]byte{7}, KeySize)
	secrets := []string{"envd-secret-tok", "traffic-secret-tok", "env-secret-val"}
	withSecrets := func(sb Sandbox) Sandbox {
		sb.EnvdAccessToken, sb.TrafficAccessToken = secrets[0], secrets[1]
		sb.EnvVars = map[string]string{"API_KEY": secrets[2]}
		sb.RequireTrafficToken = true
		return sb
	}
	// A row written before the store had a key.
	plain := open(t, dsn)
	mustTeam(t, plain, "t1")
	old := mustCreate(t, plain, withSecrets(newSandbox("t1", 0)))
	plain.Close()

	s := open(t, dsn, WithSecretsKey(key))
	sb := mustCreate(t, s, withSecrets(newSandbox("t1", 1)))
	upd, err := s.GetSandbox(t.Context(), sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	upd.EndAt = ts(900)
	if err := s.UpdateSandbox(t.Context(), &upd); err != nil {
		t.Fatal(err)
	}
	// What a copy of the database shows.
	rows, err := s.(*sqlStore).db.QueryContext(t.Context(), "SELECT env_vars, envd_access_token, traffic_access_token FROM sandboxes")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var ev, envd, traffic string
		if err := rows.Scan(&ev, &envd, &traffic); err != nil {
			t.Fatal(err)
		}
		n++
		for _, sec := range secrets {
			if raw := ev + envd + traffic; strings.Contains(raw, sec) {
				t.Errorf("the database holds %q in plain text: %s", sec, raw)
			}
		}
	}
	rows.Close()
	if n != 2 {
		t.Fatalf("got %d rows, want 2", n)
	}
	for _, id := range []string{old.ID, sb.ID} {
		got, err := s.GetSandbox(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if got.EnvdAccessToken != secrets[0] || got.TrafficAccessToken != secrets[1] || got.EnvVars["API_KEY"] != secrets[2] || !got.RequireTrafficToken {
			t.Errorf("%s: got %q %q %v %v, want the secrets back", id, got.EnvdAccessToken, got.TrafficAccessToken, got.EnvVars, got.RequireTrafficToken)
		}
	}
	s.Close()
	other := open(t, dsn, WithSecretsKey(bytes.Repeat([]byte{8}, KeySize)))
	if _, err := other.GetSandbox(t.Context(), sb.ID); err == nil || !strings.Contains(err.Error(), "secrets key") {
		t.Errorf("another key: got %v, want an error naming the secrets key", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secrets.key")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1, k2) || len(k1) != KeySize {
		t.Fatalf("second load: %v, equal %v", err, bytes.Equal(k1, k2))
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %#o, want 0600", fi.Mode().Perm())
	}
}

// BenchmarkSandboxWrite: what sealing costs a create (one CreateSandbox and
// one GetSandbox on SQLite), with and without a secrets key.
func BenchmarkSandboxWrite(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts []Option
	}{{"plain", nil}, {"sealed", []Option{WithSecretsKey(bytes.Repeat([]byte{7}, KeySize))}}} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Open(b.Context(), "sqlite://"+filepath.Join(b.TempDir(), "cocoon.db"), tc.opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if err := s.CreateTeam(b.Context(), Team{ID: "t1", Name: "t1", CreatedAt: ts(0)}); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				sb := newSandbox("t1", 0)
				if err := s.CreateSandbox(b.Context(), &sb); err != nil {
					b.Fatal(err)
				}
				if _, err := s.GetSandbox(b.Context(), sb.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
