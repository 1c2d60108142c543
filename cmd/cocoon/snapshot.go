package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// snapshotReady is the marker written once a runtime's template snapshot is
// complete; a directory without it is a crashed build and is redone.
func snapshotReady(t *runtime.Template, rt string) string {
	return filepath.Join(t.Dir, rt+".ready")
}

// hasSnapshot tells whether t has a complete snapshot for runtime rt.
func hasSnapshot(t *runtime.Template, rt string) bool {
	_, err := os.Stat(snapshotReady(t, rt))
	return err == nil
}

// snapshotTemplate boots t once per runtime in names and saves its snapshot,
// skipping the runtimes that already have one.
func snapshotTemplate(ctx context.Context, n *node, t *runtime.Template, names []string, progress func(string)) error {
	for _, name := range names {
		rt, ok := n.runtimes[name]
		if !ok {
			return fmt.Errorf("runtime %q is not available on this node", name)
		}
		if hasSnapshot(t, name) {
			progress(fmt.Sprintf("snapshot %s: cached", name))
			continue
		}
		if err := os.RemoveAll(filepath.Join(t.Dir, name)); err != nil {
			return fmt.Errorf("clear stale %s snapshot: %w", name, err)
		}
		progress(fmt.Sprintf("snapshot %s: booting the template once and saving its state", name))
		start := time.Now()
		slot, err := n.slots.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("acquire slot for the template boot: %w", err)
		}
		scratch, err := os.MkdirTemp(filepath.Dir(t.Dir), ".build-"+name+"-")
		if err != nil {
			_ = n.slots.Release(context.WithoutCancel(ctx), slot)
			return err
		}
		err = rt.BuildSnapshot(ctx, t, slot, scratch)
		_ = os.RemoveAll(scratch)
		if rerr := n.slots.Release(context.WithoutCancel(ctx), slot); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("snapshot %s: %w", name, err)
		}
		if err := os.WriteFile(snapshotReady(t, name), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
			return err
		}
		progress(fmt.Sprintf("snapshot %s: done in %.1fs", name, time.Since(start).Seconds()))
	}
	return nil
}
