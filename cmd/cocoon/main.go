// Command cocoon is Cocoon's one binary: the all-in-one server, its parts
// (api, orchestrator, proxy) run separately, and the CLI verbs that manage
// templates, teams and keys.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// globalFlags are shared by every subcommand.
type globalFlags struct {
	dataDir string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		var exit *exitError
		if errors.As(err, &exit) { // a sandbox command's exit code, passed on
			stop()
			os.Exit(exit.code)
		}
		fmt.Fprintln(os.Stderr, "cocoon:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "cocoon",
		Short:         "Run untrusted code in microVM and gVisor sandboxes behind an E2B-compatible API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("COCOON_DATA_DIR")
	if def == "" {
		def = "/var/lib/cocoon"
	}
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", def, "directory holding all of Cocoon's state (also COCOON_DATA_DIR)")
	root.AddCommand(
		newVersionCmd(),
		newSetupCmd(g),
		newTemplateCmd(g),
		newServerCmd(g),
		newAPICmd(g),
		newOrchestratorCmd(g),
		newProxyCmd(g),
		newTeamCmd(g),
		newKeyCmd(g),
		newNodeCmd(g),
		newBenchCmd(g),
		newSandboxCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print Cocoon's version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "cocoon", version)
		},
	}
}

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"
