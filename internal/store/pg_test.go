package store

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pgCluster is a throwaway PostgreSQL server, or an external one named by
// COCOON_TEST_PG_DSN. Every test gets its own schema in it.
type pgCluster struct {
	dsn   string
	admin *sql.DB
}

// startPG returns a PostgreSQL server for the tests, stopped at cleanup. It
// runs Debian's binaries as the postgres user when the tests run as root.
func startPG(t *testing.T) (*pgCluster, error) {
	if dsn := os.Getenv("COCOON_TEST_PG_DSN"); dsn != "" {
		return connectPG(t, dsn)
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		return nil, fmt.Errorf("no /usr/lib/postgresql/*/bin/initdb (apt-get install -y postgresql, or set COCOON_TEST_PG_DSN)")
	}
	slices.SortFunc(bins, func(a, b string) int { return pgMajor(a) - pgMajor(b) })
	bin := filepath.Dir(bins[len(bins)-1])

	dir, err := os.MkdirTemp("", "cocoon-pg-")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var prefix []string
	if os.Geteuid() == 0 {
		// initdb refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("look up postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
		prefix = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(name string, args ...string) error {
		argv := append(slices.Clone(prefix), append([]string{filepath.Join(bin, name)}, args...)...)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", name, err, out)
		}
		return nil
	}
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	if err := run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"); err != nil {
		return nil, err
	}
	// Chmod, not Mkdir's mode, which the umask would narrow.
	if err := os.Mkdir(sock, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(sock, 0o777); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	opts := fmt.Sprintf("-F -k %s -h 127.0.0.1 -p %d", sock, port)
	logFile := filepath.Join(dir, "log")
	if err := run("pg_ctl", "-D", data, "-o", opts, "-l", logFile, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	t.Cleanup(func() {
		if err := run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"); err != nil {
			t.Logf("stop postgres: %v", err)
		}
	})
	return connectPG(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port))
}

func pgMajor(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func connectPG(t *testing.T, dsn string) (*pgCluster, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("connect %s: %w", dsn, err)
	}
	return &pgCluster{dsn: dsn, admin: db}, nil
}

// newDSN creates a fresh schema and returns a DSN whose search_path is it, so
// tests are isolated even on a shared external server.
func (c *pgCluster) newDSN(t *testing.T) string {
	schema := "t_" + NewID(12)
	if _, err := c.admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() { c.admin.Exec("DROP SCHEMA " + schema + " CASCADE") })
	sep := "?"
	if strings.Contains(c.dsn, "?") {
		sep = "&"
	}
	return c.dsn + sep + "search_path=" + schema
}
