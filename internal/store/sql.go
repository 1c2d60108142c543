package store

import (
	"context"
	"crypto/cipher"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// sqlStore implements Store on database/sql for both dialects.
type sqlStore struct {
	db *sql.DB
	d  dialect
	// aead encrypts secret columns (see secrets.go); nil stores them as they are.
	aead cipher.AEAD
}

// q rewrites the '?' placeholders of query for the dialect. Queries must not
// contain '?' anywhere else.
func (s *sqlStore) q(query string) string {
	if s.d != postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// placeholders returns "?, ?, ..." for n values.
func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func (s *sqlStore) Close() error { return s.db.Close() }

type execer interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}

// execOne runs a write that must affect a row, returning ErrNotFound if none.
func (s *sqlStore) execOne(ctx context.Context, query string, args ...any) error {
	return execAffecting(ctx, s.db, ErrNotFound, s.q(query), args...)
}

// insertNew runs an INSERT ... ON CONFLICT DO NOTHING, returning ErrConflict
// if a unique key was taken.
func insertNew(ctx context.Context, ex execer, query string, args ...any) error {
	return execAffecting(ctx, ex, ErrConflict, query, args...)
}

// execAffecting runs a write and returns none when it affected no row.
func execAffecting(ctx context.Context, ex execer, none error, query string, args ...any) error {
	res, err := ex.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return none
	}
	return nil
}

// Times are stored as unix microseconds; 0 or NULL is the zero time.

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func nullMicros(t time.Time) sql.NullInt64 {
	return sql.NullInt64{Int64: micros(t), Valid: !t.IsZero()}
}

func fromMicros(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

func fromNullMicros(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMicros(v.Int64)
}

func jsonText(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func mapText(m map[string]string) (string, error) {
	if m == nil {
		return "{}", nil
	}
	return jsonText(m)
}

func listText(l []string) (string, error) {
	if l == nil {
		return "[]", nil
	}
	return jsonText(l)
}

func rawText(r json.RawMessage) string { return string(r) }

func textRaw(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

type scanner interface{ Scan(dest ...any) error }

// ---- teams and API keys ----

func (s *sqlStore) CreateTeam(ctx context.Context, t Team) error {
	err := insertNew(ctx, s.db, s.q("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"),
		t.ID, t.Name, micros(t.CreatedAt))
	if err != nil {
		return fmt.Errorf("create team %s: %w", t.ID, err)
	}
	return nil
}

func (s *sqlStore) GetTeam(ctx context.Context, id string) (Team, error) {
	var (
		t  Team
		ca int64
	)
	err := s.db.QueryRowContext(ctx, s.q("SELECT id, name, created_at FROM teams WHERE id = ?"), id).Scan(&t.ID, &t.Name, &ca)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Team{}, fmt.Errorf("get team %s: %w", id, err)
	}
	t.CreatedAt = fromMicros(ca)
	return t, nil
}

func (s *sqlStore) ListTeams(ctx context.Context) ([]Team, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, name, created_at FROM teams ORDER BY created_at, id")
	if err != nil {
		return nil, fmt.Errorf("list teams: %w", err)
	}
	defer rows.Close()
	var out []Team
	for rows.Next() {
		var (
			t  Team
			ca int64
		)
		if err := rows.Scan(&t.ID, &t.Name, &ca); err != nil {
			return nil, fmt.Errorf("list teams: %w", err)
		}
		t.CreatedAt = fromMicros(ca)
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list teams: %w", err)
	}
	return out, nil
}

const apiKeyCols = "id, team_id, name, hash, prefix, created_at, last_used_at"

func scanAPIKey(sc scanner) (APIKey, error) {
	var (
		k  APIKey
		ca int64
		lu sql.NullInt64
	)
	if err := sc.Scan(&k.ID, &k.TeamID, &k.Name, &k.Hash, &k.Prefix, &ca, &lu); err != nil {
		return APIKey{}, err
	}
	k.CreatedAt, k.LastUsedAt = fromMicros(ca), fromNullMicros(lu)
	return k, nil
}

func (s *sqlStore) CreateAPIKey(ctx context.Context, k APIKey) error {
	err := insertNew(ctx, s.db, s.q("INSERT INTO api_keys ("+apiKeyCols+") VALUES ("+placeholders(7)+") ON CONFLICT DO NOTHING"),
		k.ID, k.TeamID, k.Name, k.Hash, k.Prefix, micros(k.CreatedAt), nullMicros(k.LastUsedAt))
	if err != nil {
		return fmt.Errorf("create api key %s: %w", k.ID, err)
	}
	return nil
}

func (s *sqlStore) APIKeyByHash(ctx context.Context, hash string) (APIKey, error) {
	k, err := scanAPIKey(s.db.QueryRowContext(ctx, s.q("SELECT "+apiKeyCols+" FROM api_keys WHERE hash = ?"), hash))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("api key by hash: %w", err)
	}
	return k, nil
}

func (s *sqlStore) ListAPIKeys(ctx context.Context, teamID string) ([]APIKey, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+apiKeyCols+" FROM api_keys WHERE team_id = ? ORDER BY created_at, id"), teamID)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	var out []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list api keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return out, nil
}

func (s *sqlStore) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	if err := s.execOne(ctx, "UPDATE api_keys SET last_used_at = ? WHERE id = ?", micros(at), id); err != nil {
		return fmt.Errorf("touch api key %s: %w", id, err)
	}
	return nil
}

func (s *sqlStore) DeleteAPIKey(ctx context.Context, teamID, id string) error {
	if err := s.execOne(ctx, "DELETE FROM api_keys WHERE id = ? AND team_id = ?", id, teamID); err != nil {
		return fmt.Errorf("delete api key %s: %w", id, err)
	}
	return nil
}

// ---- sandboxes ----

const sandboxCols = "id, team_id, node_id, template_id, build_id, alias, runtime, state, state_reason, " +
	"cpu_count, memory_mb, disk_mb, metadata, env_vars, envd_access_token, traffic_access_token, envd_version, " +
	"started_at, end_at, on_timeout, auto_resume, allow_internet_access, allow_out, deny_out, node_data, snapshot_uri, " +
	"require_traffic_token, updated_at, version"

func (s *sqlStore) scanSandbox(sc scanner) (Sandbox, error) {
	var (
		sb                          Sandbox
		md, ev, ao, do, nd          string
		startedAt, endAt, updatedAt int64
	)
	err := sc.Scan(&sb.ID, &sb.TeamID, &sb.NodeID, &sb.TemplateID, &sb.BuildID, &sb.Alias, &sb.Runtime, &sb.State, &sb.StateReason,
		&sb.CPUCount, &sb.MemoryMB, &sb.DiskMB, &md, &ev, &sb.EnvdAccessToken, &sb.TrafficAccessToken, &sb.EnvdVersion,
		&startedAt, &endAt, &sb.OnTimeout, &sb.AutoResume, &sb.AllowInternetAccess, &ao, &do, &nd, &sb.SnapshotURI,
		&sb.RequireTrafficToken, &updatedAt, &sb.Version)
	if err != nil {
		return Sandbox{}, err
	}
	for _, v := range []*string{&ev, &sb.EnvdAccessToken, &sb.TrafficAccessToken} {
		if *v, err = s.unseal(*v); err != nil {
			return Sandbox{}, fmt.Errorf("decode sandbox %s: %w", sb.ID, err)
		}
	}
	for _, f := range []struct {
		src string
		dst any
	}{{md, &sb.Metadata}, {ev, &sb.EnvVars}, {ao, &sb.AllowOut}, {do, &sb.DenyOut}} {
		if err := json.Unmarshal([]byte(f.src), f.dst); err != nil {
			return Sandbox{}, fmt.Errorf("decode sandbox %s: %w", sb.ID, err)
		}
	}
	sb.NodeData = textRaw(nd)
	sb.StartedAt, sb.EndAt, sb.UpdatedAt = fromMicros(startedAt), fromMicros(endAt), fromMicros(updatedAt)
	return sb, nil
}

// sandboxArgs returns the values of every column but id, team_id, updated_at
// and version, in sandboxCols order; secret ones sealed.
func (s *sqlStore) sandboxArgs(sb *Sandbox) ([]any, error) {
	md, err := mapText(sb.Metadata)
	if err != nil {
		return nil, err
	}
	ev, err := mapText(sb.EnvVars)
	if err != nil {
		return nil, err
	}
	var sealed [3]string
	for i, v := range []string{ev, sb.EnvdAccessToken, sb.TrafficAccessToken} {
		if sealed[i], err = s.seal(v); err != nil {
			return nil, err
		}
	}
	ao, err := listText(sb.AllowOut)
	if err != nil {
		return nil, err
	}
	do, err := listText(sb.DenyOut)
	if err != nil {
		return nil, err
	}
	return []any{sb.NodeID, sb.TemplateID, sb.BuildID, sb.Alias, sb.Runtime, string(sb.State), sb.StateReason,
		sb.CPUCount, sb.MemoryMB, sb.DiskMB, md, sealed[0], sealed[1], sealed[2], sb.EnvdVersion,
		micros(sb.StartedAt), micros(sb.EndAt), string(sb.OnTimeout), sb.AutoResume, sb.AllowInternetAccess, ao, do,
		rawText(sb.NodeData), sb.SnapshotURI, sb.RequireTrafficToken}, nil
}

func (s *sqlStore) CreateSandbox(ctx context.Context, sb *Sandbox) error {
	args, err := s.sandboxArgs(sb)
	if err != nil {
		return fmt.Errorf("create sandbox %s: %w", sb.ID, err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	args = append([]any{sb.ID, sb.TeamID}, args...)
	args = append(args, micros(now), int64(1))
	err = insertNew(ctx, s.db, s.q("INSERT INTO sandboxes ("+sandboxCols+") VALUES ("+placeholders(len(args))+") ON CONFLICT DO NOTHING"), args...)
	if err != nil {
		return fmt.Errorf("create sandbox %s: %w", sb.ID, err)
	}
	sb.UpdatedAt, sb.Version = now, 1
	return nil
}

func (s *sqlStore) GetSandbox(ctx context.Context, id string) (Sandbox, error) {
	sb, err := s.scanSandbox(s.db.QueryRowContext(ctx, s.q("SELECT "+sandboxCols+" FROM sandboxes WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// missingOr tells ErrNotFound from conflict after a conditional write hit no row.
func (s *sqlStore) missingOr(ctx context.Context, table, id string, conflict error) error {
	var one int
	err := s.db.QueryRowContext(ctx, s.q("SELECT 1 FROM "+table+" WHERE id = ?"), id).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	}
	return conflict
}

func (s *sqlStore) UpdateSandbox(ctx context.Context, sb *Sandbox) error {
	args, err := s.sandboxArgs(sb)
	if err != nil {
		return fmt.Errorf("update sandbox %s: %w", sb.ID, err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	args = append(args, micros(now), sb.ID, sb.Version)
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE sandboxes SET node_id = ?, template_id = ?, build_id = ?, alias = ?,
		runtime = ?, state = ?, state_reason = ?, cpu_count = ?, memory_mb = ?, disk_mb = ?, metadata = ?, env_vars = ?,
		envd_access_token = ?, traffic_access_token = ?, envd_version = ?, started_at = ?, end_at = ?, on_timeout = ?,
		auto_resume = ?, allow_internet_access = ?, allow_out = ?, deny_out = ?, node_data = ?, snapshot_uri = ?,
		require_traffic_token = ?, updated_at = ?, version = version + 1
		WHERE id = ? AND version = ?`), args...)
	if err != nil {
		return fmt.Errorf("update sandbox %s: %w", sb.ID, err)
	}
	n, err := res.RowsAffected()
	if err == nil && n == 0 {
		err = s.missingOr(ctx, "sandboxes", sb.ID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("update sandbox %s: %w", sb.ID, err)
	}
	sb.UpdatedAt = now
	sb.Version++
	return nil
}

func (s *sqlStore) SetSandboxState(ctx context.Context, id string, from []SandboxState, to SandboxState, reason string) (Sandbox, error) {
	query := "UPDATE sandboxes SET state = ?, state_reason = ?, updated_at = ?, version = version + 1 WHERE id = ?"
	args := []any{string(to), reason, micros(time.Now()), id}
	if len(from) > 0 {
		query += " AND state IN (" + placeholders(len(from)) + ")"
		for _, st := range from {
			args = append(args, string(st))
		}
	}
	sb, err := s.scanSandbox(s.db.QueryRowContext(ctx, s.q(query+" RETURNING "+sandboxCols), args...))
	if errors.Is(err, sql.ErrNoRows) {
		err = s.missingOr(ctx, "sandboxes", id, ErrConflict)
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("set sandbox %s state %s: %w", id, to, err)
	}
	return sb, nil
}

// Page tokens encode the (started_at, id) of the last row of a page.

func encodeToken(sb Sandbox) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(micros(sb.StartedAt), 10) + "." + sb.ID))
}

func decodeToken(tok string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, "", ErrBadToken
	}
	ts, id, ok := strings.Cut(string(b), ".")
	v, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || id == "" {
		return 0, "", ErrBadToken
	}
	return v, id, nil
}

func matchesMetadata(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func (s *sqlStore) ListSandboxes(ctx context.Context, f SandboxFilter) ([]Sandbox, string, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	var (
		where []string
		args  []any
	)
	if f.TeamID != "" {
		where, args = append(where, "team_id = ?"), append(args, f.TeamID)
	}
	if f.NodeID != "" {
		where, args = append(where, "node_id = ?"), append(args, f.NodeID)
	}
	if len(f.States) > 0 {
		where = append(where, "state IN ("+placeholders(len(f.States))+")")
		for _, st := range f.States {
			args = append(args, string(st))
		}
	}
	var (
		cursorSet bool
		cTS       int64
		cID       string
	)
	if f.Next != "" {
		var err error
		if cTS, cID, err = decodeToken(f.Next); err != nil {
			return nil, "", fmt.Errorf("list sandboxes: %w", err)
		}
		cursorSet = true
	}
	// Metadata is matched in Go, so fetch batches until one row more than a
	// page has matched (to know whether there is a next page) or rows run out.
	batch := limit + 1
	if len(f.Metadata) > 0 {
		batch = max(batch, 200)
	}
	var matched []Sandbox
	for len(matched) <= limit {
		w, a := where, args
		if cursorSet {
			w = append(w[:len(w):len(w)], "(started_at < ? OR (started_at = ? AND id < ?))")
			a = append(a[:len(a):len(a)], cTS, cTS, cID)
		}
		query := "SELECT " + sandboxCols + " FROM sandboxes"
		if len(w) > 0 {
			query += " WHERE " + strings.Join(w, " AND ")
		}
		query += " ORDER BY started_at DESC, id DESC LIMIT ?"
		a = append(a, batch)
		got, err := s.querySandboxes(ctx, query, a...)
		if err != nil {
			return nil, "", fmt.Errorf("list sandboxes: %w", err)
		}
		for _, sb := range got {
			if matchesMetadata(sb.Metadata, f.Metadata) {
				matched = append(matched, sb)
			}
		}
		if len(got) < batch {
			break
		}
		last := got[len(got)-1]
		cursorSet, cTS, cID = true, micros(last.StartedAt), last.ID
	}
	if len(matched) <= limit {
		return matched, "", nil
	}
	page := matched[:limit]
	return page, encodeToken(page[limit-1]), nil
}

func (s *sqlStore) querySandboxes(ctx context.Context, query string, args ...any) ([]Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Sandbox
	for rows.Next() {
		sb, err := s.scanSandbox(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, rows.Err()
}

func (s *sqlStore) ListExpired(ctx context.Context, now time.Time) ([]Sandbox, error) {
	// end_at 0 means no deadline.
	out, err := s.querySandboxes(ctx, "SELECT "+sandboxCols+" FROM sandboxes WHERE state = ? AND end_at > 0 AND end_at <= ? ORDER BY end_at, id",
		string(StateRunning), micros(now))
	if err != nil {
		return nil, fmt.Errorf("list expired sandboxes: %w", err)
	}
	return out, nil
}

func (s *sqlStore) CountSandboxes(ctx context.Context) (map[SandboxState]int, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
	if err != nil {
		return nil, fmt.Errorf("count sandboxes: %w", err)
	}
	defer rows.Close()
	out := map[SandboxState]int{}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count sandboxes: %w", err)
		}
		out[SandboxState(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count sandboxes: %w", err)
	}
	return out, nil
}
