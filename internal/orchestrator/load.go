package orchestrator

import (
	"context"
	"slices"
)

// Load is what a node's sandboxes hold, as its heartbeat reports it.
type Load struct {
	Sandboxes    int   // every sandbox the node has, paused ones included
	UsedVCPUs    int   // of the running ones
	UsedMemoryMB int64 // of the running ones
	// Builds are the template builds of its sandboxes, sorted, each once:
	// their artifacts are on this node.
	Builds []string
}

// Load sums what the node's sandboxes hold.
func (o *Orchestrator) Load(ctx context.Context) Load {
	var l Load
	for _, sb := range o.List(ctx) {
		l.Sandboxes++
		if sb.State == StateRunning {
			l.UsedVCPUs += sb.VCPUs
			l.UsedMemoryMB += int64(sb.MemoryMB)
		}
		if sb.BuildID != "" && !slices.Contains(l.Builds, sb.BuildID) {
			l.Builds = append(l.Builds, sb.BuildID)
		}
	}
	slices.Sort(l.Builds)
	return l
}
