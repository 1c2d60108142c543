package main

import (
	"fmt"
	"log/slog"
	"os/exec"

	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/internal/datadir"
	"github.com/cocoon-run/cocoon/internal/gvisor"
)

// newSetupCmd is `cocoon setup`: what a node needs besides host packages.
// It makes the data dir private (0700), then installs gVisor's runsc,
// built from the Go module proxy at a pinned version into <data-dir>/bin.
func newSetupCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "setup",
		Short: "Install the node's runtimes into the data dir (runsc for gVisor) and report what this host can run",
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if err := datadir.Secure(g.dataDir, slog.Default()); err != nil {
				return err
			}
			fmt.Fprintf(out, "data:   %s (mode 0700)\n", g.dataDir)
			if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
				fmt.Fprintln(out, "qemu:   not installed (apt-get install -y qemu-system-x86 qemu-utils)")
			} else {
				fmt.Fprintln(out, "qemu:   installed")
			}
			fmt.Fprintf(out, "gvisor: building runsc %s if needed (a few minutes the first time)...\n", gvisor.Version)
			runsc, err := gvisor.Install(cmd.Context(), g.dataDir)
			if err != nil {
				return fmt.Errorf("install runsc: %w", err)
			}
			platform, err := gvisor.DetectPlatform(cmd.Context(), runsc)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "gvisor: %s (platform %s)\n", runsc, platform)
			if err := checkSandboxIDs("/etc"); err != nil {
				return err
			}
			for _, r := range sandboxIDs {
				fmt.Fprintf(out, "ids:    host uids/gids %d-%d for %s (no account holds them)\n", r.first, r.first+r.size-1, r.name)
			}
			return nil
		},
	}
}
