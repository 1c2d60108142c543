package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// dialect holds what differs between the SQL backends.
type dialect int

const (
	sqlite dialect = iota
	postgres
)

// Open connects to the database named by dsn and applies pending migrations.
//
//   - postgres://... or postgresql://... selects PostgreSQL (pgx);
//   - sqlite:///abs/path/cocoon.db, sqlite:rel/path.db, or a bare file path
//     selects SQLite, in WAL mode with a busy timeout and foreign keys on. The
//     parent directory is created if missing.
func Open(ctx context.Context, dsn string, opts ...Option) (Store, error) {
	var (
		d          dialect
		driver, ds string
	)
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		d, driver, ds = postgres, "pgx", dsn
	default:
		path := strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite://"), "sqlite:")
		if path == "" || strings.ContainsRune(path, '?') {
			return nil, fmt.Errorf("open store: bad sqlite path %q", path)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		// The database holds tenants' data: only Cocoon's user reads it.
		// SQLite gives its -wal and -shm files the database file's mode.
		if err := privateFile(path); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		// Immediate transactions take the write lock up front, so concurrent
		// writers wait on busy_timeout instead of failing on lock upgrade.
		d, driver, ds = sqlite, "sqlite", "file:"+path+
			"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	}
	db, err := sql.Open(driver, ds)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &sqlStore{db: db, d: d}
	for _, o := range opts {
		if err := o(s); err != nil {
			db.Close()
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	// A new SQLite connection switches to WAL mode as it opens; when another
	// process is doing the same, that pragma fails at once with SQLITE_BUSY
	// (the busy timeout does not cover it), so retry a few times.
	for attempt := 0; ; attempt++ {
		err = s.migrate(ctx)
		if err == nil || d != sqlite || attempt == 20 || !strings.Contains(err.Error(), "SQLITE_BUSY") {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 25 * time.Millisecond):
			continue
		}
		break
	}
	if err == nil {
		err = s.sealPlaintext(ctx)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return s, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration file %q: want NNNN_name.sql", name)
		}
		b, err := migrationFS.ReadFile("migrations/" + name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	return ms, nil
}

// statements splits a migration into statements, dropping "--" comments, so
// that every driver can run them one at a time. Migrations must not put ';'
// or "--" inside string literals.
func statements(src string) []string {
	var b strings.Builder
	for line := range strings.Lines(src) {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i] + "\n"
		}
		b.WriteString(line)
	}
	var out []string
	for stmt := range strings.SplitSeq(b.String(), ";") {
		if stmt = strings.TrimSpace(stmt); stmt != "" {
			out = append(out, stmt)
		}
	}
	return out
}

// migrate applies every pending migration in one transaction, so a failure
// leaves the schema as it was.
func (s *sqlStore) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	if s.d == postgres {
		// Serialise concurrent Opens from several processes; SQLite's
		// immediate transaction already holds the write lock.
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(7316115)"); err != nil {
			return fmt.Errorf("lock migrations: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    BIGINT PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for _, m := range ms {
		if applied[m.version] {
			continue
		}
		for _, stmt := range statements(m.sql) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migration %s: %w", m.name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, s.q("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)"),
			m.version, m.name, time.Now().UnixMicro()); err != nil {
			return fmt.Errorf("record migration %s: %w", m.name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migrations: %w", err)
	}
	return nil
}

// privateFile creates path (mode 0600) when missing, and narrows an
// existing file with group or other bits to 0600.
func privateFile(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return f.Chmod(0o600)
	}
	return nil
}
