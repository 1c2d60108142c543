package store

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"
)

type backend struct {
	name   string
	newDSN func(t *testing.T) string // a fresh, empty database
}

// TestStore runs the whole suite against every backend.
func TestStore(t *testing.T) {
	suite := []struct {
		name string
		fn   func(t *testing.T, dsn string)
	}{
		{"Migrations", testMigrations},
		{"Reopen", testReopen},
		{"TeamsAndKeys", testTeamsAndKeys},
		{"SandboxCRUD", testSandboxCRUD},
		{"SandboxState", testSandboxState},
		{"ListSandboxes", testListSandboxes},
		{"ListExpired", testListExpired},
		{"ConcurrentUpdate", testConcurrentUpdate},
		{"Templates", testTemplates},
		{"Builds", testBuilds},
		{"TemplateFiles", testTemplateFiles},
		{"Metrics", testMetrics},
		{"SecretsAtRest", testSecretsAtRest},
		{"Events", testEvents},
	}
	run := func(t *testing.T, b backend) {
		for _, c := range suite {
			t.Run(c.name, func(t *testing.T) { c.fn(t, b.newDSN(t)) })
		}
	}
	t.Run("sqlite", func(t *testing.T) {
		run(t, backend{"sqlite", func(t *testing.T) string {
			return "sqlite://" + filepath.Join(t.TempDir(), "db", "cocoon.db")
		}})
	})
	t.Run("postgres", func(t *testing.T) {
		pg, err := startPG(t)
		if err != nil {
			if os.Getenv("COCOON_REQUIRE_PG") == "1" {
				t.Fatalf("postgres unavailable: %v", err)
			}
			t.Skipf("postgres unavailable (set COCOON_REQUIRE_PG=1 to fail): %v", err)
		}
		run(t, backend{"postgres", pg.newDSN})
	})
}

func open(t *testing.T, dsn string, opts ...Option) Store {
	t.Helper()
	s, err := Open(t.Context(), dsn, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ts is a fixed time at microsecond precision, the store's resolution.
func ts(sec int) time.Time {
	return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(sec) * time.Second)
}

func mustTeam(t *testing.T, s Store, id string) {
	t.Helper()
	if err := s.CreateTeam(t.Context(), Team{ID: id, Name: "team " + id, CreatedAt: ts(0)}); err != nil {
		t.Fatalf("CreateTeam: %v", err)
	}
}

func newSandbox(team string, started int) Sandbox {
	return Sandbox{
		ID: NewSandboxID(), TeamID: team, NodeID: "node1", TemplateID: "tpl1", BuildID: "b1", Alias: "base",
		Runtime: "gvisor", State: StateRunning, CPUCount: 2, MemoryMB: 512, DiskMB: 1024,
		Metadata: map[string]string{"user": "alice"}, EnvVars: map[string]string{"A": "1"},
		EnvdAccessToken: "envd-tok", TrafficAccessToken: "traffic-tok", EnvdVersion: "0.2.0",
		StartedAt: ts(started), EndAt: ts(started + 300), OnTimeout: OnTimeoutKill, AutoResume: true,
		AllowInternetAccess: true, AllowOut: []string{"1.1.1.1"}, DenyOut: []string{"0.0.0.0/0"},
		NodeData: json.RawMessage(`{"slot":3}`), SnapshotURI: "",
	}
}

func mustCreate(t *testing.T, s Store, sb Sandbox) Sandbox {
	t.Helper()
	if err := s.CreateSandbox(t.Context(), &sb); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	return sb
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func ids(sbs []Sandbox) []string {
	out := []string{}
	for _, sb := range sbs {
		out = append(out, sb.ID)
	}
	return out
}

func testMigrations(t *testing.T, dsn string) {
	ctx := t.Context()
	// Concurrent first Opens must serialise, then reopening applies nothing.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() {
			s, err := Open(ctx, dsn)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open %d: %v", i, err)
		}
	}
	s := open(t, dsn).(*sqlStore)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_migrations").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != len(ms) {
		t.Errorf("schema_migrations rows: got %d, want %d", got, len(ms))
	}
}

func testReopen(t *testing.T, dsn string) {
	ctx := t.Context()
	s, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	mustTeam(t, s, "t1")
	sb := mustCreate(t, s, newSandbox("t1", 0))
	s.Close()

	s = open(t, dsn)
	got, err := s.GetSandbox(ctx, sb.ID)
	if err != nil {
		t.Fatalf("GetSandbox after reopen: %v", err)
	}
	if !reflect.DeepEqual(got, sb) {
		t.Errorf("after reopen:\n got %+v\nwant %+v", got, sb)
	}
}

func testTeamsAndKeys(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	mustTeam(t, s, "t2")
	wantErr(t, "duplicate team", s.CreateTeam(ctx, Team{ID: "t1", Name: "x"}), ErrConflict)
	got, err := s.GetTeam(ctx, "t1")
	if want := (Team{ID: "t1", Name: "team t1", CreatedAt: ts(0)}); err != nil || got != want {
		t.Errorf("GetTeam: got %+v, %v; want %+v", got, err, want)
	}
	_, err = s.GetTeam(ctx, "nope")
	wantErr(t, "GetTeam unknown", err, ErrNotFound)
	teams, err := s.ListTeams(ctx)
	if err != nil || len(teams) != 2 {
		t.Errorf("ListTeams: got %v, %v; want 2 teams", teams, err)
	}

	key, hash, prefix := GenerateAPIKey()
	if hash != HashAPIKey(key) || len(key) != len(APIKeyPrefix)+40 || key[:len(prefix)] != prefix {
		t.Fatalf("GenerateAPIKey: key %q hash %q prefix %q inconsistent", key, hash, prefix)
	}
	k := APIKey{ID: "k1", TeamID: "t1", Name: "default", Hash: hash, Prefix: prefix, CreatedAt: ts(1)}
	if err := s.CreateAPIKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "duplicate key hash", s.CreateAPIKey(ctx, APIKey{ID: "k2", TeamID: "t2", Hash: hash}), ErrConflict)
	_, hash2, _ := GenerateAPIKey()
	if err := s.CreateAPIKey(ctx, APIKey{ID: "k2", TeamID: "t2", Name: "other", Hash: hash2, CreatedAt: ts(2)}); err != nil {
		t.Fatal(err)
	}

	gotK, err := s.APIKeyByHash(ctx, HashAPIKey(key))
	if err != nil || gotK != k {
		t.Errorf("APIKeyByHash: got %+v, %v; want %+v", gotK, err, k)
	}
	_, err = s.APIKeyByHash(ctx, HashAPIKey("e2b_wrong"))
	wantErr(t, "APIKeyByHash wrong key", err, ErrNotFound)

	if err := s.TouchAPIKey(ctx, "k1", ts(10)); err != nil {
		t.Fatal(err)
	}
	keys, err := s.ListAPIKeys(ctx, "t1")
	if err != nil || len(keys) != 1 || keys[0].ID != "k1" || !keys[0].LastUsedAt.Equal(ts(10)) {
		t.Errorf("ListAPIKeys(t1): got %+v, %v; want k1 used at %v", keys, err, ts(10))
	}
	wantErr(t, "delete other team's key", s.DeleteAPIKey(ctx, "t1", "k2"), ErrNotFound)
	if err := s.DeleteAPIKey(ctx, "t1", "k1"); err != nil {
		t.Fatal(err)
	}
	_, err = s.APIKeyByHash(ctx, hash)
	wantErr(t, "deleted key", err, ErrNotFound)
}

func testSandboxCRUD(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	sb := newSandbox("t1", 0)
	if err := s.CreateSandbox(ctx, &sb); err != nil {
		t.Fatal(err)
	}
	if sb.Version != 1 || sb.UpdatedAt.IsZero() {
		t.Errorf("after create: version %d updated %v; want 1 and set", sb.Version, sb.UpdatedAt)
	}
	got, err := s.GetSandbox(ctx, sb.ID)
	if err != nil || !reflect.DeepEqual(got, sb) {
		t.Fatalf("GetSandbox:\n got %+v, %v\nwant %+v", got, err, sb)
	}
	_, err = s.GetSandbox(ctx, "missing")
	wantErr(t, "GetSandbox missing", err, ErrNotFound)

	// Nil maps and lists come back empty, not null.
	bare := Sandbox{ID: NewSandboxID(), TeamID: "t1", State: StateCreating}
	mustCreate(t, s, bare)
	gotBare, err := s.GetSandbox(ctx, bare.ID)
	if err != nil || gotBare.Metadata == nil || len(gotBare.Metadata) != 0 || gotBare.AllowOut == nil || gotBare.NodeData != nil {
		t.Errorf("bare sandbox: got %+v, %v", gotBare, err)
	}

	// Update every mutable field.
	sb.State, sb.NodeID, sb.EndAt, sb.OnTimeout = StatePaused, "", ts(900), OnTimeoutPause
	sb.Metadata = map[string]string{"user": "bob", "x": "y"}
	sb.AllowOut, sb.NodeData, sb.SnapshotURI = nil, json.RawMessage(`{"slot":null}`), "file:///snap/1"
	if err := s.UpdateSandbox(ctx, &sb); err != nil {
		t.Fatal(err)
	}
	if sb.Version != 2 {
		t.Errorf("version after update: got %d, want 2", sb.Version)
	}
	got, err = s.GetSandbox(ctx, sb.ID)
	sb.AllowOut = []string{}
	if err != nil || !reflect.DeepEqual(got, sb) {
		t.Errorf("after update:\n got %+v, %v\nwant %+v", got, err, sb)
	}

	stale := sb
	stale.Version = 1
	wantErr(t, "stale update", s.UpdateSandbox(ctx, &stale), ErrConflict)
	missing := newSandbox("t1", 0)
	missing.Version = 1
	wantErr(t, "update missing", s.UpdateSandbox(ctx, &missing), ErrNotFound)

	// IDs are never reused, even after a kill.
	if _, err := s.SetSandboxState(ctx, sb.ID, nil, StateKilled, ""); err != nil {
		t.Fatal(err)
	}
	dup := newSandbox("t1", 5)
	dup.ID = sb.ID
	wantErr(t, "reuse killed ID", s.CreateSandbox(ctx, &dup), ErrConflict)
}

func testSandboxState(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	sb := mustCreate(t, s, newSandbox("t1", 0))
	tests := []struct {
		from    []SandboxState
		to      SandboxState
		reason  string
		wantErr error
		want    SandboxState
	}{
		{[]SandboxState{StateRunning}, StatePausing, "", nil, StatePausing},
		{[]SandboxState{StateRunning}, StatePausing, "", ErrConflict, StatePausing}, // already pausing
		{[]SandboxState{StatePausing}, StatePaused, "", nil, StatePaused},
		{[]SandboxState{StateRunning, StatePausing}, StateKilled, "", ErrConflict, StatePaused},
		{[]SandboxState{StatePaused}, StateError, "resume failed", nil, StateError},
	}
	version := sb.Version
	for i, tc := range tests {
		got, err := s.SetSandboxState(ctx, sb.ID, tc.from, tc.to, tc.reason)
		wantErr(t, "step "+strconv.Itoa(i), err, tc.wantErr)
		if err == nil {
			version++
			if got.State != tc.want || got.StateReason != tc.reason || got.Version != version {
				t.Errorf("step %d: got state %q reason %q version %d; want %q %q %d", i, got.State, got.StateReason, got.Version, tc.want, tc.reason, version)
			}
		}
		cur, _ := s.GetSandbox(ctx, sb.ID)
		if cur.State != tc.want {
			t.Errorf("step %d: stored state %q, want %q", i, cur.State, tc.want)
		}
	}
	_, err := s.SetSandboxState(ctx, "missing", nil, StateKilled, "")
	wantErr(t, "missing sandbox", err, ErrNotFound)
}

func testListSandboxes(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	mustTeam(t, s, "t2")
	// 10 sandboxes of t1, newest last; pairs share started_at to exercise the
	// id tie-break of the cursor. Every third is paused; odd ones are "web".
	var all []Sandbox // newest first
	for i := range 10 {
		sb := newSandbox("t1", i/2)
		if i%3 == 0 {
			sb.State = StatePaused
		}
		sb.Metadata = map[string]string{"n": strconv.Itoa(i)}
		if i%2 == 1 {
			sb.Metadata["role"] = "web"
		}
		sb = mustCreate(t, s, sb)
		all = append([]Sandbox{sb}, all...)
	}
	// Restore the store's order for equal started_at (id descending).
	for i := 0; i+1 < len(all); i++ {
		if all[i].StartedAt.Equal(all[i+1].StartedAt) && all[i].ID < all[i+1].ID {
			all[i], all[i+1] = all[i+1], all[i]
		}
	}
	other := mustCreate(t, s, newSandbox("t2", 100))

	filter := func(keep func(Sandbox) bool) []string {
		out := []string{}
		for _, sb := range all {
			if keep(sb) {
				out = append(out, sb.ID)
			}
		}
		return out
	}
	tests := []struct {
		name string
		f    SandboxFilter
		want []string
	}{
		{"team", SandboxFilter{TeamID: "t1"}, ids(all)},
		{"other team", SandboxFilter{TeamID: "t2"}, []string{other.ID}},
		{"unknown team", SandboxFilter{TeamID: "t3"}, []string{}},
		{"running", SandboxFilter{TeamID: "t1", States: []SandboxState{StateRunning}},
			filter(func(sb Sandbox) bool { return sb.State == StateRunning })},
		{"running or paused", SandboxFilter{TeamID: "t1", States: []SandboxState{StateRunning, StatePaused}}, ids(all)},
		{"metadata", SandboxFilter{TeamID: "t1", Metadata: map[string]string{"role": "web"}},
			filter(func(sb Sandbox) bool { return sb.Metadata["role"] == "web" })},
		{"metadata and state", SandboxFilter{TeamID: "t1", States: []SandboxState{StatePaused}, Metadata: map[string]string{"role": "web"}},
			filter(func(sb Sandbox) bool { return sb.Metadata["role"] == "web" && sb.State == StatePaused })},
		{"metadata two keys", SandboxFilter{TeamID: "t1", Metadata: map[string]string{"role": "web", "n": "3"}},
			filter(func(sb Sandbox) bool { return sb.Metadata["n"] == "3" })},
		{"metadata no match", SandboxFilter{TeamID: "t1", Metadata: map[string]string{"role": "db"}}, []string{}},
	}
	for _, tc := range tests {
		for _, limit := range []int{0, 1, 3, 4, 100} {
			f := tc.f
			f.Limit = limit
			got := []string{}
			pages := 0
			for {
				page, next, err := s.ListSandboxes(ctx, f)
				if err != nil {
					t.Fatalf("%s limit %d: %v", tc.name, limit, err)
				}
				if limit > 0 && len(page) > limit {
					t.Fatalf("%s limit %d: page of %d", tc.name, limit, len(page))
				}
				got = append(got, ids(page)...)
				if pages++; next == "" || pages > 20 {
					break
				}
				f.Next = next
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s limit %d: got %v, want %v", tc.name, limit, got, tc.want)
			}
		}
	}
	// An exact page leaves no dangling empty page.
	page, next, err := s.ListSandboxes(ctx, SandboxFilter{TeamID: "t1", Limit: 10})
	if err != nil || len(page) != 10 || next != "" {
		t.Errorf("exact page: got %d rows, next %q, %v; want 10, no next", len(page), next, err)
	}
	_, _, err = s.ListSandboxes(ctx, SandboxFilter{TeamID: "t1", Next: "!!not a token"})
	wantErr(t, "bad token", err, ErrBadToken)
}

func testListExpired(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	mk := func(state SandboxState, end time.Time) Sandbox {
		sb := newSandbox("t1", 0)
		sb.State, sb.EndAt = state, end
		return mustCreate(t, s, sb)
	}
	a := mk(StateRunning, ts(10))
	b := mk(StateRunning, ts(20))
	mk(StateRunning, ts(30))      // not yet
	mk(StatePaused, ts(5))        // paused sandboxes do not expire
	mk(StateKilled, ts(5))        // already gone
	mk(StateRunning, time.Time{}) // no deadline
	got, err := s.ListExpired(ctx, ts(20))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{a.ID, b.ID}; !reflect.DeepEqual(ids(got), want) {
		t.Errorf("ListExpired: got %v, want %v", ids(got), want)
	}
}

func testConcurrentUpdate(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	sb := mustCreate(t, s, newSandbox("t1", 0))

	// Writers holding the same version: exactly one wins.
	const writers = 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			mine := sb
			mine.Metadata = map[string]string{"writer": strconv.Itoa(i)}
			errs[i] = s.UpdateSandbox(ctx, &mine)
		})
	}
	wg.Wait()
	wins, winner := 0, -1
	for i, err := range errs {
		switch {
		case err == nil:
			wins, winner = wins+1, i
		case !errors.Is(err, ErrConflict):
			t.Errorf("writer %d: %v, want nil or ErrConflict", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("winners: got %d, want 1 (%v)", wins, errs)
	}
	got, _ := s.GetSandbox(ctx, sb.ID)
	if got.Metadata["writer"] != strconv.Itoa(winner) || got.Version != 2 {
		t.Errorf("stored: metadata %v version %d; want writer %d version 2", got.Metadata, got.Version, winner)
	}

	// Modify retries, so concurrent increments all land.
	const incs = 6
	for range incs {
		wg.Go(func() {
			_, err := Modify(ctx, s, sb.ID, func(sb *Sandbox) error {
				n, _ := strconv.Atoi(sb.Metadata["count"])
				sb.Metadata["count"] = strconv.Itoa(n + 1)
				return nil
			})
			if err != nil {
				t.Errorf("Modify: %v", err)
			}
		})
	}
	wg.Wait()
	got, _ = s.GetSandbox(ctx, sb.ID)
	if got.Metadata["count"] != strconv.Itoa(incs) {
		t.Errorf("count after %d concurrent Modify: got %q", incs, got.Metadata["count"])
	}
}

func testTemplates(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	mustTeam(t, s, "t2")
	priv := Template{ID: "tp1", TeamID: "t1", Name: "mine", Aliases: []string{"mine", "mine-v2"}, CPUCount: 2, MemoryMB: 512, DiskMB: 2048, CreatedAt: ts(1)}
	pub := Template{ID: "tp2", TeamID: "t2", Name: "base", Aliases: []string{"base"}, Public: true, CPUCount: 1, MemoryMB: 256, DiskMB: 1024, CreatedAt: ts(2)}
	for _, tp := range []Template{priv, pub} {
		if err := s.CreateTemplate(ctx, tp); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, "duplicate id", s.CreateTemplate(ctx, Template{ID: "tp1", TeamID: "t1"}), ErrConflict)
	wantErr(t, "taken alias", s.CreateTemplate(ctx, Template{ID: "tp3", TeamID: "t2", Aliases: []string{"new", "mine"}}), ErrConflict)
	_, err := s.GetTemplate(ctx, "tp3")
	wantErr(t, "template of failed create", err, ErrNotFound)
	if _, err := s.ResolveTemplate(ctx, "new", "t2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("alias of failed create resolves: %v", err)
	}

	got, err := s.GetTemplate(ctx, "tp1")
	if err != nil || !reflect.DeepEqual(got, priv) {
		t.Errorf("GetTemplate:\n got %+v, %v\nwant %+v", got, err, priv)
	}
	resolve := []struct {
		ref, team string
		want      string // "" means ErrNotFound
	}{
		{"tp1", "t1", "tp1"},
		{"mine", "t1", "tp1"},
		{"mine-v2", "t1", "tp1"},
		{"mine", "t2", ""}, // private to t1
		{"tp1", "t2", ""},
		{"base", "t1", "tp2"}, // public
		{"tp2", "t1", "tp2"},
		{"nope", "t1", ""},
	}
	for _, tc := range resolve {
		got, err := s.ResolveTemplate(ctx, tc.ref, tc.team)
		if tc.want == "" {
			wantErr(t, "resolve "+tc.ref+" as "+tc.team, err, ErrNotFound)
		} else if err != nil || got.ID != tc.want {
			t.Errorf("resolve %s as %s: got %s, %v; want %s", tc.ref, tc.team, got.ID, err, tc.want)
		}
	}

	list, err := s.ListTemplates(ctx, "t1")
	if err != nil || len(list) != 1 || list[0].ID != "tp1" {
		t.Errorf("ListTemplates(t1): got %+v, %v", list, err)
	}

	priv.Aliases, priv.Public, priv.CPUCount = []string{"renamed"}, true, 4
	if err := s.UpdateTemplate(ctx, priv); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ResolveTemplate(ctx, "renamed", "t2"); err != nil || !reflect.DeepEqual(got, priv) {
		t.Errorf("after update: got %+v, %v; want %+v", got, err, priv)
	}
	if _, err := s.ResolveTemplate(ctx, "mine", "t1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("old alias still resolves: %v", err)
	}
	wantErr(t, "update to taken alias", s.UpdateTemplate(ctx, Template{ID: "tp1", TeamID: "t1", Aliases: []string{"base"}}), ErrConflict)
	wantErr(t, "update missing", s.UpdateTemplate(ctx, Template{ID: "zz"}), ErrNotFound)

	// Delete cascades to builds, logs and files, and frees the aliases.
	if err := s.CreateBuild(ctx, TemplateBuild{ID: "b1", TemplateID: "tp1", Status: BuildReady}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendBuildLog(ctx, "b1", BuildLogEntry{Message: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTemplateFile(ctx, TemplateFile{TemplateID: "tp1", SHA256: "aa"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTemplate(ctx, "tp1"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "delete again", s.DeleteTemplate(ctx, "tp1"), ErrNotFound)
	_, err = s.GetBuild(ctx, "b1")
	wantErr(t, "build of deleted template", err, ErrNotFound)
	if logs, err := s.BuildLogs(ctx, "b1", 0, 0); err != nil || len(logs) != 0 {
		t.Errorf("logs of deleted build: %v, %v", logs, err)
	}
	_, err = s.GetTemplateFile(ctx, "tp1", "aa")
	wantErr(t, "file of deleted template", err, ErrNotFound)
	if err := s.CreateTemplate(ctx, Template{ID: "tp4", TeamID: "t1", Aliases: []string{"renamed"}}); err != nil {
		t.Errorf("reuse alias of deleted template: %v", err)
	}
}

func testBuilds(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	if err := s.CreateTemplate(ctx, Template{ID: "tp1", TeamID: "t1", Aliases: []string{"app"}, CreatedAt: ts(0)}); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.LatestReadyBuild(ctx, "app", "t1")
	wantErr(t, "no ready build", err, ErrNotFound)
	wantErr(t, "build of missing template", s.CreateBuild(ctx, TemplateBuild{ID: "bx", TemplateID: "nope"}), ErrNotFound)

	b1 := TemplateBuild{ID: "b1", TemplateID: "tp1", Status: BuildBuilding, Runtimes: []string{"gvisor"}, Tags: []string{"v1", "stable"},
		ArtifactDir: "/var/lib/cocoon/b1", Spec: json.RawMessage(`{"fromImage":"debian:12","steps":[]}`), CreatedAt: ts(1)}
	b2 := TemplateBuild{ID: "b2", TemplateID: "tp1", Status: BuildWaiting, Runtimes: []string{}, CreatedAt: ts(2)}
	for _, b := range []TemplateBuild{b1, b2} {
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, "duplicate build", s.CreateBuild(ctx, b1), ErrConflict)
	got, err := s.GetBuild(ctx, "b1")
	if err != nil || !reflect.DeepEqual(got, b1) {
		t.Errorf("GetBuild:\n got %+v, %v\nwant %+v", got, err, b1)
	}

	b1.Status, b1.FinishedAt, b1.EnvdVersion, b1.Runtimes = BuildReady, ts(10), "0.2.0", []string{"gvisor", "qemu"}
	if err := s.UpdateBuild(ctx, b1); err != nil {
		t.Fatal(err)
	}
	b2.Status, b2.Reason, b2.FinishedAt = BuildError, "step 2 failed", ts(20)
	if err := s.UpdateBuild(ctx, b2); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "update missing build", s.UpdateBuild(ctx, TemplateBuild{ID: "nope"}), ErrNotFound)
	tp, rb, err := s.LatestReadyBuild(ctx, "app", "t1")
	if err != nil || tp.ID != "tp1" || !reflect.DeepEqual(rb, b1) {
		t.Errorf("LatestReadyBuild: got %s %+v, %v; want b1", tp.ID, rb, err)
	}
	b3 := TemplateBuild{ID: "b3", TemplateID: "tp1", Status: BuildReady, CreatedAt: ts(3), FinishedAt: ts(30), Runtimes: []string{}}
	if err := s.CreateBuild(ctx, b3); err != nil {
		t.Fatal(err)
	}
	if _, rb, err := s.LatestReadyBuild(ctx, "tp1", "t1"); err != nil || rb.ID != "b3" {
		t.Errorf("LatestReadyBuild after b3: got %s, %v", rb.ID, err)
	}
	// A tag picks the newest ready build that carries it; "default" the newest.
	for _, tt := range []struct{ ref, want string }{{"app:v1", "b1"}, {"app:stable", "b1"}, {"app:default", "b3"}, {"tp1:v1", "b1"}} {
		if _, rb, err := s.LatestReadyBuild(ctx, tt.ref, "t1"); err != nil || rb.ID != tt.want {
			t.Errorf("LatestReadyBuild(%q): got %s, %v; want %s", tt.ref, rb.ID, err, tt.want)
		}
	}
	_, _, err = s.LatestReadyBuild(ctx, "app:v2", "t1")
	wantErr(t, "unknown tag", err, ErrNotFound)
	if bs, err := s.ListBuilds(ctx, "tp1"); err != nil || !reflect.DeepEqual(func() []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.ID)
		}
		return out
	}(), []string{"b3", "b2", "b1"}) {
		t.Errorf("ListBuilds: got %+v, %v", bs, err)
	}

	// Logs: concurrent appenders get distinct, gapless sequence numbers.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 5 {
				e := BuildLogEntry{Timestamp: ts(i), Level: "info", Message: strconv.Itoa(w) + "/" + strconv.Itoa(i), Step: "1"}
				if err := s.AppendBuildLog(ctx, "b1", e, e); err != nil {
					t.Errorf("AppendBuildLog: %v", err)
				}
			}
		})
	}
	wg.Wait()
	all, err := s.BuildLogs(ctx, "b1", 0, 0)
	if err != nil || len(all) != 40 {
		t.Fatalf("BuildLogs: got %d entries, %v; want 40", len(all), err)
	}
	for i, e := range all {
		if e.Seq != i {
			t.Fatalf("entry %d has seq %d", i, e.Seq)
		}
		if i%2 == 1 && e.Message != all[i-1].Message {
			t.Errorf("batch split: entries %d,%d = %q,%q", i-1, i, all[i-1].Message, e.Message)
		}
	}
	offsets := []struct{ offset, limit, wantLen, wantFirst int }{
		{0, 0, 40, 0}, {35, 0, 5, 35}, {10, 3, 3, 10}, {40, 0, 0, -1}, {99, 0, 0, -1},
	}
	for _, tc := range offsets {
		got, err := s.BuildLogs(ctx, "b1", tc.offset, tc.limit)
		if err != nil || len(got) != tc.wantLen || (tc.wantLen > 0 && got[0].Seq != tc.wantFirst) {
			t.Errorf("BuildLogs(%d, %d): got %d entries, %v", tc.offset, tc.limit, len(got), err)
		}
	}
	if want := (BuildLogEntry{Seq: 0, Timestamp: ts(0), Level: "info", Message: all[0].Message, Step: "1"}); all[0] != want {
		t.Errorf("entry 0: got %+v, want %+v", all[0], want)
	}
	wantErr(t, "append to missing build", s.AppendBuildLog(ctx, "nope", BuildLogEntry{}), ErrNotFound)
}

func testTemplateFiles(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	if err := s.CreateTemplate(ctx, Template{ID: "tp1", TeamID: "t1"}); err != nil {
		t.Fatal(err)
	}
	_, err := s.GetTemplateFile(ctx, "tp1", "abc")
	wantErr(t, "missing file", err, ErrNotFound)
	f := TemplateFile{TemplateID: "tp1", SHA256: "abc", Path: "/files/abc.tar.gz", CreatedAt: ts(1)}
	if err := s.PutTemplateFile(ctx, f); err != nil {
		t.Fatal(err)
	}
	f2 := f
	f2.Uploaded, f2.CreatedAt = true, ts(9)
	if err := s.PutTemplateFile(ctx, f2); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetTemplateFile(ctx, "tp1", "abc")
	f.Uploaded = true // created_at is kept from the first put
	if err != nil || got != f {
		t.Errorf("GetTemplateFile: got %+v, %v; want %+v", got, err, f)
	}
}

func testMetrics(t *testing.T, dsn string) {
	ctx := t.Context()
	s := open(t, dsn)
	mustTeam(t, s, "t1")
	a := mustCreate(t, s, newSandbox("t1", 0))
	b := mustCreate(t, s, newSandbox("t1", 0))
	var ms []Metric
	for i := range 5 {
		ms = append(ms, Metric{SandboxID: a.ID, Timestamp: ts(i * 10), CPUCount: 2, CPUUsedPct: 12.5 + float64(i),
			MemUsed: int64(i) << 20, MemTotal: 512 << 20, MemCache: 1 << 20, DiskUsed: 100 << 20, DiskTotal: 1 << 30})
	}
	ms = append(ms, Metric{SandboxID: b.ID, Timestamp: ts(0)})
	if err := s.InsertMetrics(ctx, ms...); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertMetrics(ctx, ms[0]); err != nil {
		t.Errorf("duplicate sample: %v", err)
	}
	tests := []struct {
		start, end time.Time
		want       []Metric
	}{
		{time.Time{}, time.Time{}, ms[:5]},
		{ts(10), ts(30), ms[1:4]},
		{ts(35), time.Time{}, ms[4:5]},
		{time.Time{}, ts(0), ms[:1]},
		{ts(100), ts(200), nil},
	}
	for _, tc := range tests {
		got, err := s.Metrics(ctx, a.ID, tc.start, tc.end)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Metrics(%v, %v):\n got %+v, %v\nwant %+v", tc.start, tc.end, got, err, tc.want)
		}
	}
	n, err := s.PruneMetrics(ctx, ts(20))
	if err != nil || n != 3 { // a@0, a@10, b@0
		t.Errorf("PruneMetrics: got %d, %v; want 3", n, err)
	}
	if got, _ := s.Metrics(ctx, a.ID, time.Time{}, time.Time{}); !reflect.DeepEqual(got, ms[2:5]) {
		t.Errorf("after prune: got %+v", got)
	}
}
