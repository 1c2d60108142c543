package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

func TestKey(t *testing.T) {
	tests := []struct {
		name string
		a, b []string
		same bool
	}{
		{"equal", []string{"a", "b"}, []string{"a", "b"}, true},
		{"boundary", []string{"ab", "c"}, []string{"a", "bc"}, false},
		{"order", []string{"a", "b"}, []string{"b", "a"}, false},
		{"empty part", []string{"a", ""}, []string{"a"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Key(tt.a...) == Key(tt.b...); got != tt.same {
				t.Errorf("Key(%q) == Key(%q) is %v, want %v", tt.a, tt.b, got, tt.same)
			}
		})
	}
}

// Keys name directories in a cache shared across runs and releases: they
// must not drift.
func TestKeyGolden(t *testing.T) {
	if got, want := Key("kernel", "6.1"), "259e8d10aee595450c8fc306"; got != want {
		t.Errorf("Key(kernel, 6.1) = %q, want %q", got, want)
	}
}

func TestEnsure(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	var builds atomic.Int32
	build := func(ctx context.Context, dir string) error {
		builds.Add(1)
		return os.WriteFile(filepath.Join(dir, "out"), []byte("x"), 0o644)
	}
	dir, hit, err := Ensure(ctx, root, "thing", "k1", build)
	if err != nil || hit {
		t.Fatalf("first Ensure = %q, %v, %v; want a miss", dir, hit, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	dir2, hit, err := Ensure(ctx, root, "thing", "k1", build)
	if err != nil || !hit || dir2 != dir {
		t.Fatalf("second Ensure = %q, %v, %v; want hit on %q", dir2, hit, err, dir)
	}
	if got := builds.Load(); got != 1 {
		t.Errorf("builds = %d, want 1", got)
	}
}

func TestEnsureFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	boom := errors.New("boom")
	_, _, err := Ensure(ctx, root, "thing", "k", func(ctx context.Context, dir string) error {
		os.WriteFile(filepath.Join(dir, "half"), nil, 0o644)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Ensure error = %v, want %v", err, boom)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "thing"))
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("left %s behind after a failed build", e.Name())
		}
	}
	// A stale temp dir from a crashed build is swept by the next build.
	stale := filepath.Join(root, "thing", ".tmp-k-123")
	os.MkdirAll(stale, 0o755)
	if _, _, err := Ensure(ctx, root, "thing", "k", func(context.Context, string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp dir still there: %v", err)
	}
}

func TestEnsureConcurrent(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	var builds atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := Ensure(ctx, root, "thing", "k", func(ctx context.Context, dir string) error {
				builds.Add(1)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := builds.Load(); got != 1 {
		t.Errorf("builds = %d, want 1", got)
	}
}

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want string }{
		{`/a/b`, "/a/b"},
		{`/a\040b`, "/a b"},
		{`/a\\b`, `/a\\b`},
	}
	for _, tt := range tests {
		if got := unescape(tt.in); got != tt.want {
			t.Errorf("unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
