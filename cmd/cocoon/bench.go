package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/bench"
)

// newBenchCmd is `cocoon bench`: the benchmark suite against a real server.
func newBenchCmd(g *globalFlags) *cobra.Command {
	cfg := bench.Config{}
	var only, runtimes string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure create, exec, compute, files, pause/resume and density per runtime, against runc and a fork+exec",
		Long: `Run the benchmark suite: for each runtime it starts a cocoon server of its
own (the data dir's base template must be built: cocoon template build base
--data-dir DIR), drives it through the REST API and the proxy like the E2B SDK,
and writes results.json, results.md and results.png into --out.
See bench/README.md for the method.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				cfg.Binary = exe
			}
			dd, err := filepath.Abs(g.dataDir)
			if err != nil {
				return err
			}
			cfg.DataDir = dd
			cfg.Runtimes = splitList(runtimes)
			if only != "" {
				cfg.Only = map[string]bool{}
				for _, p := range splitList(only) {
					if !contains(bench.Phases, p) {
						return fmt.Errorf("--only %s: want some of %s", p, strings.Join(bench.Phases, ","))
					}
					cfg.Only[p] = true
				}
			}
			if cfg.APIURL != "" && len(cfg.Runtimes) != 1 {
				return fmt.Errorf("--api-url: name the server's runtime with --runtimes (one)")
			}
			cfg.Log = cmd.ErrOrStderr()
			rep, err := bench.Run(cmd.Context(), cfg)
			if rep != nil {
				fmt.Fprint(cmd.OutOrStdout(), rep.Markdown())
				fmt.Fprintf(cmd.ErrOrStderr(), "results in %s\n", cfg.OutDir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&runtimes, "runtimes", "qemu,gvisor", "runtimes to measure, one server each")
	f.StringVar(&only, "only", "", "phases to run (default all): "+strings.Join(bench.Phases, ","))
	f.StringVar(&cfg.OutDir, "out", "bench/results", "directory for results.json, results.md, results.png")
	f.StringVar(&cfg.Binary, "cocoon", "", "cocoon binary to start servers with (default: this one)")
	f.StringVar(&cfg.Accel, "accel", "auto", "QEMU accelerator of the servers and the cold boot: auto, kvm, tcg")
	f.IntVar(&cfg.APIPort, "port", 3900, "API port of the started servers (the proxy gets port+1)")
	f.StringVar(&cfg.APIURL, "api-url", "", "use this running server instead of starting one (with --proxy-url, --api-key)")
	f.StringVar(&cfg.ProxyURL, "proxy-url", "", "proxy of the server given by --api-url")
	f.StringVar(&cfg.APIKey, "api-key", os.Getenv("E2B_API_KEY"), "API key for --api-url")
	f.StringSliceVar(&cfg.ServerArgs, "server-args", nil, "extra flags for the started servers (e.g. --debug, to log where each create spends its time)")
	f.StringVar(&cfg.Template, "template", "base", "template to create sandboxes from")
	f.StringVar(&cfg.CodeInterpreterTemplate, "code-interpreter-template", "code-interpreter-v1", "template of the codeinterp phase (cocoon template build code-interpreter)")
	f.IntVar(&cfg.Creates, "creates", 30, "sequential creates")
	f.IntVar(&cfg.ConcurrentCreates, "concurrent-creates", 40, "creates spread over --concurrency clients, with --concurrent-for 0")
	f.DurationVar(&cfg.ConcurrentFor, "concurrent-for", 30*time.Second, "how long the --concurrency clients keep creating (0: --concurrent-creates creates)")
	f.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent clients for the create rate")
	f.IntVar(&cfg.Execs, "execs", 50, "process.Start round trips of true")
	f.IntVar(&cfg.ComputeRuns, "compute-runs", 5, "runs of the Python loop (sandbox and host)")
	f.IntVar(&cfg.FileRuns, "file-runs", 8, "1 MiB write+read runs (100 MiB: runs/4+1)")
	f.IntVar(&cfg.PauseRuns, "pause-runs", 3, "pause+resume runs of a sandbox that dirtied 100 MiB")
	f.IntVar(&cfg.DensityBudgetMiB, "density-budget", 16384, "memory budget (MiB of sandbox PSS) for the density phase")
	f.IntVar(&cfg.DensityMax, "density-max", 200, "most idle sandboxes to start in the density phase")
	f.IntVar(&cfg.ColdBoots, "cold-boots", 2, "cold boots of the template's microVM")
	f.IntVar(&cfg.Floors, "floors", 20, "runs of the runc and fork+exec floors")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
