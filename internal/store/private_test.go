package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSQLiteFilesPrivate: cocoon.db was 0644 (issue 18); the database and
// SQLite's side files are 0600, and an old 0644 one is narrowed at open.
func TestSQLiteFilesPrivate(t *testing.T) {
	for _, pre := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "cocoon.db")
		if pre {
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s := open(t, "sqlite://"+path)
		if err := s.CreateTeam(t.Context(), Team{ID: "t", Name: "t", CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"cocoon.db", "cocoon.db-wal", "cocoon.db-shm"} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != 0o600 {
				t.Errorf("existing file %v: %s: got mode %#o, want 0600", pre, name, got)
			}
		}
	}
}
