package runtime

import (
	"context"

	"github.com/cocoon-run/cocoon/internal/network"
)

// Prespawner is implemented by runtimes that can start a sandbox before it
// is asked for, so that a create only has to claim it and send its /init
// (QEMU: a process with the template's state loaded, or waiting for it with
// -incoming defer; gVisor: a container restored from the template's
// checkpoint). It is bound to the network slot it was given.
type Prespawner interface {
	// Prespawn starts a process for a future restore of t's snapshot in
	// dir (which it creates) and slot.
	Prespawn(ctx context.Context, t *Template, slot *network.Slot, dir string) (Prespawned, error)
}

// Prespawned is a sandbox-to-be waiting in the warm pool.
type Prespawned interface {
	// Claim turns the process into the sandbox spec (spec.Slot must be the
	// slot it was spawned in): its directory becomes spec.Dir, the state is
	// loaded and the guest runs. After a failed Claim the process is gone.
	Claim(ctx context.Context, spec Spec) (Instance, error)
	// Discard kills the process and removes its directory.
	Discard(ctx context.Context) error
	// Done is closed when the process exits.
	Done() <-chan struct{}
}

// Named is implemented by instances the runtime knows under another name
// than the sandbox ID they were claimed for: a pooled gVisor container
// keeps the ID it was restored under. The orchestrator records the name so
// that it can adopt the instance after a restart.
type Named interface {
	RuntimeID() string
}
