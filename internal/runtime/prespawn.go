package runtime

import (
	"context"

	"github.com/cocoon-run/cocoon/internal/network"
)

// Prespawner is implemented by runtimes that can start a sandbox's process
// before the sandbox is asked for, so that a create only has to load the
// template's state into it (the QEMU driver: a process started with
// -incoming defer). The process is bound to the network slot it was given.
type Prespawner interface {
	// Prespawn starts a process for a future restore of t's snapshot in
	// dir (which it creates) and slot.
	Prespawn(ctx context.Context, t *Template, slot *network.Slot, dir string) (Prespawned, error)
}

// Prespawned is a process waiting for a template's state.
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
