package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// SnapshotReady is the marker written once runtime rt's snapshot of t is
// complete; a snapshot directory without it is a crashed build and is redone.
func SnapshotReady(t *runtime.Template, rt string) string {
	return filepath.Join(t.Dir, rt+".ready")
}

// HasSnapshot tells whether t has a complete snapshot for runtime rt.
func HasSnapshot(t *runtime.Template, rt string) bool {
	_, err := os.Stat(SnapshotReady(t, rt))
	return err == nil
}

// SnapshotTemplate boots t once per runtime in names (in a slot acquired
// from slots) and saves its snapshot, skipping the runtimes that already
// have one. progress, if set, is told about each step.
func SnapshotTemplate(ctx context.Context, slots Slots, runtimes map[string]runtime.Runtime, t *runtime.Template, names []string, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	for _, name := range names {
		rt, ok := runtimes[name]
		if !ok {
			return fmt.Errorf("runtime %q is not available on this node", name)
		}
		if HasSnapshot(t, name) {
			sc, ok := rt.(runtime.SnapshotChecker)
			if !ok {
				progress(fmt.Sprintf("snapshot %s: cached", name))
				continue
			}
			err := sc.SnapshotCurrent(t)
			if err == nil {
				progress(fmt.Sprintf("snapshot %s: cached", name))
				continue
			}
			progress(fmt.Sprintf("snapshot %s: stale (%v); saving it again", name, err))
			if err := os.Remove(SnapshotReady(t, name)); err != nil {
				return fmt.Errorf("snapshot %s: remove stale marker: %w", name, err)
			}
		}
		if err := os.RemoveAll(filepath.Join(t.Dir, name)); err != nil {
			return fmt.Errorf("clear stale %s snapshot: %w", name, err)
		}
		progress(fmt.Sprintf("snapshot %s: booting the template once and saving its state", name))
		start := time.Now()
		if err := snapshotOne(ctx, slots, rt, t); err != nil {
			return fmt.Errorf("snapshot %s: %w", name, err)
		}
		if err := os.WriteFile(SnapshotReady(t, name), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
			return fmt.Errorf("snapshot %s: write marker: %w", name, err)
		}
		progress(fmt.Sprintf("snapshot %s: done in %.1fs", name, time.Since(start).Seconds()))
	}
	return nil
}

func snapshotOne(ctx context.Context, slots Slots, rt runtime.Runtime, t *runtime.Template) (err error) {
	slot, err := slots.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire slot for the template boot: %w", err)
	}
	defer func() {
		if rerr := slots.Release(context.WithoutCancel(ctx), slot); rerr != nil {
			err = errors.Join(err, fmt.Errorf("release slot: %w", rerr))
		}
	}()
	scratch, err := os.MkdirTemp(filepath.Dir(t.Dir), ".build-"+rt.Name()+"-")
	if err != nil {
		return fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(scratch)
	return rt.BuildSnapshot(ctx, warmed(t), slot, scratch)
}

// warmed returns t with a BeforeSnapshot that runs the template's own
// (if any) and then one commands.run('true') (runtime.WarmExec), so that
// every sandbox restored from the snapshot finds bash, its libraries and
// envd's process path already in memory: the first command after a
// create then costs what the second does.
func warmed(t *runtime.Template) *runtime.Template {
	w := *t
	before := t.BeforeSnapshot
	w.BeforeSnapshot = func(ctx context.Context, c *http.Client, envdURL string) error {
		if before != nil {
			if err := before(ctx, c, envdURL); err != nil {
				return err
			}
		}
		return runtime.WarmExec(ctx, c, envdURL)
	}
	return &w
}
