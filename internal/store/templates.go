package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

const templateCols = "id, team_id, name, public, cpu_count, memory_mb, disk_mb, created_at"

func scanTemplate(sc scanner) (Template, error) {
	var (
		t  Template
		ca int64
	)
	if err := sc.Scan(&t.ID, &t.TeamID, &t.Name, &t.Public, &t.CPUCount, &t.MemoryMB, &t.DiskMB, &ca); err != nil {
		return Template{}, err
	}
	t.CreatedAt = fromMicros(ca)
	return t, nil
}

// queryTemplates runs a SELECT of templateCols (qualified with "t.") and
// attaches the aliases of every row.
func (s *sqlStore) queryTemplates(ctx context.Context, query string, args ...any) ([]Template, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	var out []Template
	for rows.Next() {
		t, err := scanTemplate(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range out {
		if out[i].Aliases, err = s.aliases(ctx, out[i].ID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (s *sqlStore) aliases(ctx context.Context, templateID string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT alias FROM template_aliases WHERE template_id = ? ORDER BY alias"), templateID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// putAliases inserts aliases for a template inside tx; ErrConflict if one is
// taken by any template.
func (s *sqlStore) putAliases(ctx context.Context, tx *sql.Tx, templateID string, aliases []string) error {
	for _, a := range aliases {
		err := insertNew(ctx, tx, s.q("INSERT INTO template_aliases (alias, template_id) VALUES (?, ?) ON CONFLICT DO NOTHING"), a, templateID)
		if err != nil {
			return fmt.Errorf("alias %q: %w", a, err)
		}
	}
	return nil
}

func (s *sqlStore) CreateTemplate(ctx context.Context, t Template) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		err := insertNew(ctx, tx, s.q("INSERT INTO templates ("+templateCols+") VALUES ("+placeholders(8)+") ON CONFLICT DO NOTHING"),
			t.ID, t.TeamID, t.Name, t.Public, t.CPUCount, t.MemoryMB, t.DiskMB, micros(t.CreatedAt))
		if err != nil {
			return err
		}
		return s.putAliases(ctx, tx, t.ID, t.Aliases)
	})
	if err != nil {
		return fmt.Errorf("create template %s: %w", t.ID, err)
	}
	return nil
}

func (s *sqlStore) inTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

func oneTemplate(ts []Template, err error) (Template, error) {
	if err != nil {
		return Template{}, err
	}
	if len(ts) == 0 {
		return Template{}, ErrNotFound
	}
	return ts[0], nil
}

func (s *sqlStore) GetTemplate(ctx context.Context, id string) (Template, error) {
	t, err := oneTemplate(s.queryTemplates(ctx, "SELECT "+templateCols+" FROM templates WHERE id = ?", id))
	if err != nil {
		return Template{}, fmt.Errorf("get template %s: %w", id, err)
	}
	return t, nil
}

func (s *sqlStore) ResolveTemplate(ctx context.Context, ref, teamID string) (Template, error) {
	// An ID match wins over an alias that happens to equal another ID.
	t, err := oneTemplate(s.queryTemplates(ctx, `SELECT `+templateCols+` FROM templates
		WHERE (id = ? OR id IN (SELECT template_id FROM template_aliases WHERE alias = ?))
		AND (team_id = ? OR public = ?)
		ORDER BY CASE WHEN id = ? THEN 0 ELSE 1 END LIMIT 1`, ref, ref, teamID, true, ref))
	if err != nil {
		return Template{}, fmt.Errorf("resolve template %q: %w", ref, err)
	}
	return t, nil
}

func (s *sqlStore) ListTemplates(ctx context.Context, teamID string) ([]Template, error) {
	ts, err := s.queryTemplates(ctx, "SELECT "+templateCols+" FROM templates WHERE team_id = ? ORDER BY created_at DESC, id", teamID)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	return ts, nil
}

func (s *sqlStore) UpdateTemplate(ctx context.Context, t Template) error {
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("UPDATE templates SET name = ?, public = ?, cpu_count = ?, memory_mb = ?, disk_mb = ? WHERE id = ?"),
			t.Name, t.Public, t.CPUCount, t.MemoryMB, t.DiskMB, t.ID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return ErrNotFound
		}
		if _, err := tx.ExecContext(ctx, s.q("DELETE FROM template_aliases WHERE template_id = ?"), t.ID); err != nil {
			return err
		}
		return s.putAliases(ctx, tx, t.ID, t.Aliases)
	})
	if err != nil {
		return fmt.Errorf("update template %s: %w", t.ID, err)
	}
	return nil
}

func (s *sqlStore) DeleteTemplate(ctx context.Context, id string) error {
	if err := s.execOne(ctx, "DELETE FROM templates WHERE id = ?", id); err != nil {
		return fmt.Errorf("delete template %s: %w", id, err)
	}
	return nil
}

// ---- builds ----

const buildCols = "id, template_id, status, reason, runtimes, tags, artifact_dir, spec, envd_version, created_at, finished_at"

func scanBuild(sc scanner) (TemplateBuild, error) {
	var (
		b              TemplateBuild
		rt, tags, spec string
		ca             int64
		fa             sql.NullInt64
	)
	if err := sc.Scan(&b.ID, &b.TemplateID, &b.Status, &b.Reason, &rt, &tags, &b.ArtifactDir, &spec, &b.EnvdVersion, &ca, &fa); err != nil {
		return TemplateBuild{}, err
	}
	if err := json.Unmarshal([]byte(rt), &b.Runtimes); err != nil {
		return TemplateBuild{}, fmt.Errorf("decode build %s runtimes: %w", b.ID, err)
	}
	if err := json.Unmarshal([]byte(tags), &b.Tags); err != nil {
		return TemplateBuild{}, fmt.Errorf("decode build %s tags: %w", b.ID, err)
	}
	b.Spec = textRaw(spec)
	b.CreatedAt, b.FinishedAt = fromMicros(ca), fromNullMicros(fa)
	return b, nil
}

func (s *sqlStore) CreateBuild(ctx context.Context, b TemplateBuild) error {
	rt, err := listText(b.Runtimes)
	if err != nil {
		return fmt.Errorf("create build %s: %w", b.ID, err)
	}
	tags, err := listText(b.Tags)
	if err != nil {
		return fmt.Errorf("create build %s: %w", b.ID, err)
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM templates WHERE id = ?"), b.TemplateID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("template %s: %w", b.TemplateID, ErrNotFound)
		} else if err != nil {
			return err
		}
		return insertNew(ctx, tx, s.q("INSERT INTO template_builds ("+buildCols+", log_count) VALUES ("+placeholders(12)+") ON CONFLICT DO NOTHING"),
			b.ID, b.TemplateID, string(b.Status), b.Reason, rt, tags, b.ArtifactDir, rawText(b.Spec), b.EnvdVersion,
			micros(b.CreatedAt), nullMicros(b.FinishedAt), 0)
	})
	if err != nil {
		return fmt.Errorf("create build %s: %w", b.ID, err)
	}
	return nil
}

func (s *sqlStore) GetBuild(ctx context.Context, id string) (TemplateBuild, error) {
	b, err := scanBuild(s.db.QueryRowContext(ctx, s.q("SELECT "+buildCols+" FROM template_builds WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return TemplateBuild{}, fmt.Errorf("get build %s: %w", id, err)
	}
	return b, nil
}

func (s *sqlStore) ListBuilds(ctx context.Context, templateID string) ([]TemplateBuild, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+buildCols+" FROM template_builds WHERE template_id = ? ORDER BY created_at DESC, id"), templateID)
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	defer rows.Close()
	var out []TemplateBuild
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return nil, fmt.Errorf("list builds: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	return out, nil
}

func (s *sqlStore) UpdateBuild(ctx context.Context, b TemplateBuild) error {
	rt, err := listText(b.Runtimes)
	if err != nil {
		return fmt.Errorf("update build %s: %w", b.ID, err)
	}
	err = s.execOne(ctx, `UPDATE template_builds SET status = ?, reason = ?, runtimes = ?, artifact_dir = ?, spec = ?,
		envd_version = ?, finished_at = ? WHERE id = ?`,
		string(b.Status), b.Reason, rt, b.ArtifactDir, rawText(b.Spec), b.EnvdVersion, nullMicros(b.FinishedAt), b.ID)
	if err != nil {
		return fmt.Errorf("update build %s: %w", b.ID, err)
	}
	return nil
}

func (s *sqlStore) LatestReadyBuild(ctx context.Context, ref, teamID string) (Template, TemplateBuild, error) {
	name, tag, _ := strings.Cut(ref, ":")
	t, err := s.ResolveTemplate(ctx, name, teamID)
	if err != nil {
		return Template{}, TemplateBuild{}, err
	}
	// Without a tag (every sandbox create) the newest ready build is the
	// answer: the database stops at one row.
	q := `SELECT ` + buildCols + ` FROM template_builds
		WHERE template_id = ? AND status = ?
		ORDER BY COALESCE(finished_at, 0) DESC, created_at DESC, id DESC`
	if tag == "" || tag == DefaultTag {
		q += " LIMIT 1"
	}
	rows, err := s.db.QueryContext(ctx, s.q(q), t.ID, string(BuildReady))
	if err != nil {
		return Template{}, TemplateBuild{}, fmt.Errorf("latest ready build of %q: %w", ref, err)
	}
	defer rows.Close()
	for rows.Next() {
		b, err := scanBuild(rows)
		if err != nil {
			return Template{}, TemplateBuild{}, fmt.Errorf("latest ready build of %q: %w", ref, err)
		}
		if tag == "" || tag == DefaultTag || slices.Contains(b.Tags, tag) {
			return t, b, nil
		}
	}
	if err := rows.Err(); err != nil {
		return Template{}, TemplateBuild{}, fmt.Errorf("latest ready build of %q: %w", ref, err)
	}
	return Template{}, TemplateBuild{}, fmt.Errorf("latest ready build of %q: %w", ref, ErrNotFound)
}

// DefaultTag names a template's newest ready build, whatever its tags.
const DefaultTag = "default"

func (s *sqlStore) AppendBuildLog(ctx context.Context, buildID string, entries ...BuildLogEntry) error {
	if len(entries) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		// The counter row serialises concurrent appenders (row lock in
		// PostgreSQL, the write lock in SQLite) and hands out sequence numbers.
		var end int
		err := tx.QueryRowContext(ctx, s.q("UPDATE template_builds SET log_count = log_count + ? WHERE id = ? RETURNING log_count"),
			len(entries), buildID).Scan(&end)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		} else if err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, s.q("INSERT INTO build_logs (build_id, seq, ts, level, message, step) VALUES (?, ?, ?, ?, ?, ?)"))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, e := range entries {
			if _, err := stmt.ExecContext(ctx, buildID, end-len(entries)+i, micros(e.Timestamp), e.Level, e.Message, e.Step); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("append build %s log: %w", buildID, err)
	}
	return nil
}

func (s *sqlStore) BuildLogs(ctx context.Context, buildID string, offset, limit int) ([]BuildLogEntry, error) {
	query := "SELECT seq, ts, level, message, step FROM build_logs WHERE build_id = ? AND seq >= ? ORDER BY seq"
	args := []any{buildID, offset}
	if limit > 0 {
		query += " LIMIT ?"
		args = append(args, limit)
	}
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("build %s logs: %w", buildID, err)
	}
	defer rows.Close()
	var out []BuildLogEntry
	for rows.Next() {
		var (
			e  BuildLogEntry
			ts int64
		)
		if err := rows.Scan(&e.Seq, &ts, &e.Level, &e.Message, &e.Step); err != nil {
			return nil, fmt.Errorf("build %s logs: %w", buildID, err)
		}
		e.Timestamp = fromMicros(ts)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("build %s logs: %w", buildID, err)
	}
	return out, nil
}

// ---- template files ----

func (s *sqlStore) PutTemplateFile(ctx context.Context, f TemplateFile) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO template_files (template_id, sha256, path, uploaded, created_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (template_id, sha256) DO UPDATE SET path = excluded.path, uploaded = excluded.uploaded`),
		f.TemplateID, f.SHA256, f.Path, f.Uploaded, micros(f.CreatedAt))
	if err != nil {
		return fmt.Errorf("put template %s file %s: %w", f.TemplateID, f.SHA256, err)
	}
	return nil
}

func (s *sqlStore) GetTemplateFile(ctx context.Context, templateID, sha256 string) (TemplateFile, error) {
	var (
		f  TemplateFile
		ca int64
	)
	err := s.db.QueryRowContext(ctx, s.q("SELECT template_id, sha256, path, uploaded, created_at FROM template_files WHERE template_id = ? AND sha256 = ?"),
		templateID, sha256).Scan(&f.TemplateID, &f.SHA256, &f.Path, &f.Uploaded, &ca)
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return TemplateFile{}, fmt.Errorf("get template %s file %s: %w", templateID, sha256, err)
	}
	f.CreatedAt = fromMicros(ca)
	return f, nil
}

// ---- metrics ----

func (s *sqlStore) InsertMetrics(ctx context.Context, ms ...Metric) error {
	if len(ms) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, s.q(`INSERT INTO sandbox_metrics (sandbox_id, ts, cpu_count, cpu_used_pct,
			mem_used, mem_total, mem_cache, disk_used, disk_total) VALUES (`+placeholders(9)+`) ON CONFLICT DO NOTHING`))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, m := range ms {
			if _, err := stmt.ExecContext(ctx, m.SandboxID, micros(m.Timestamp), m.CPUCount, m.CPUUsedPct,
				m.MemUsed, m.MemTotal, m.MemCache, m.DiskUsed, m.DiskTotal); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("insert metrics: %w", err)
	}
	return nil
}

func (s *sqlStore) Metrics(ctx context.Context, sandboxID string, start, end time.Time) ([]Metric, error) {
	query := `SELECT sandbox_id, ts, cpu_count, cpu_used_pct, mem_used, mem_total, mem_cache, disk_used, disk_total
		FROM sandbox_metrics WHERE sandbox_id = ?`
	args := []any{sandboxID}
	if !start.IsZero() {
		query, args = query+" AND ts >= ?", append(args, micros(start))
	}
	if !end.IsZero() {
		query, args = query+" AND ts <= ?", append(args, micros(end))
	}
	rows, err := s.db.QueryContext(ctx, s.q(query+" ORDER BY ts"), args...)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s metrics: %w", sandboxID, err)
	}
	defer rows.Close()
	var out []Metric
	for rows.Next() {
		var (
			m  Metric
			ts int64
		)
		if err := rows.Scan(&m.SandboxID, &ts, &m.CPUCount, &m.CPUUsedPct, &m.MemUsed, &m.MemTotal, &m.MemCache, &m.DiskUsed, &m.DiskTotal); err != nil {
			return nil, fmt.Errorf("sandbox %s metrics: %w", sandboxID, err)
		}
		m.Timestamp = fromMicros(ts)
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sandbox %s metrics: %w", sandboxID, err)
	}
	return out, nil
}

func (s *sqlStore) PruneMetrics(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, s.q("DELETE FROM sandbox_metrics WHERE ts < ?"), micros(before))
	if err != nil {
		return 0, fmt.Errorf("prune metrics: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune metrics: %w", err)
	}
	return n, nil
}
