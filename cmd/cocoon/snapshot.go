package main

import (
	"context"

	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// hasSnapshot tells whether t has a complete snapshot for runtime rt.
func hasSnapshot(t *runtime.Template, rt string) bool {
	return orchestrator.HasSnapshot(t, rt)
}

// snapshotTemplate boots t once per runtime in names and saves its snapshot,
// skipping the runtimes that already have one.
func snapshotTemplate(ctx context.Context, n *node, t *runtime.Template, names []string, progress func(string)) error {
	return orchestrator.SnapshotTemplate(ctx, n.slots, n.runtimes, t, names, progress)
}
