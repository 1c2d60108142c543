package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cocoon-run/cocoon/internal/control/fleet"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/store"
)

// fleetFlags make the parts of `cocoon api|proxy|orchestrator` a fleet:
// nodes heartbeat to the api, which places on the nodes it has heard of.
type fleetFlags struct {
	enabled      bool   // api, proxy: nodes from the registry, not --node-url
	controlURL   string // orchestrator: the api to heartbeat to
	advertiseURL string // orchestrator: its node RPC as the api reaches it
}

func (f *fleetFlags) registerControl(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.enabled, "fleet", envOr("COCOON_FLEET", "") == "1",
		"place on the orchestrator nodes that heartbeat to the api (the node registry) instead of one --node-url (also COCOON_FLEET=1)")
}

func (f *fleetFlags) registerNode(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.controlURL, "control-url", envOr("COCOON_CONTROL_URL", ""),
		"URL of the api to heartbeat to, joining its fleet (needs --node-listen and the api's node token)")
	cmd.Flags().StringVar(&f.advertiseURL, "advertise-url", envOr("COCOON_ADVERTISE_URL", ""),
		"URL of this node's RPC as the api reaches it (default: http://<--node-listen>)")
}

// advertised returns the node RPC's URL for the registry.
func (f *fleetFlags) advertised(nodeListen string) (string, error) {
	if f.advertiseURL != "" {
		return strings.TrimRight(f.advertiseURL, "/"), nil
	}
	if nodeListen == "" {
		return "", fmt.Errorf("--control-url needs --node-listen (a TCP address the api can reach)")
	}
	if strings.HasPrefix(nodeListen, ":") || strings.HasPrefix(nodeListen, "0.0.0.0:") || strings.HasPrefix(nodeListen, "[::]:") {
		return "", fmt.Errorf("--node-listen %s listens on every address: pass --advertise-url with the one the api reaches", nodeListen)
	}
	return "http://" + nodeListen, nil
}

// nodeAgent heartbeats o to the control plane.
func nodeAgent(f *fleetFlags, nodeListen, dataDir, token string, o *orchestrator.Orchestrator, base *fleet.BaseBuild) (*fleet.Agent, error) {
	self, err := f.advertised(nodeListen)
	if err != nil {
		return nil, err
	}
	vcpus, memMB, diskMB, err := fleet.HostCapacity(dataDir)
	if err != nil {
		return nil, err
	}
	return fleet.NewAgent(fleet.AgentConfig{
		ControlURL: f.controlURL, NodeToken: token,
		Beat: func(ctx context.Context) (fleet.Heartbeat, error) {
			load := o.Load(ctx)
			hb := fleet.Heartbeat{ID: o.NodeID(), URL: self, Runtimes: o.Runtimes(),
				VCPUs: vcpus, MemoryMB: memMB, DiskMB: diskMB, Warm: o.WarmSize(), Base: base,
				Sandboxes: load.Sandboxes, UsedVCPUs: load.UsedVCPUs, UsedMemoryMB: load.UsedMemoryMB,
				Templates: append(load.Builds, o.CustomTemplates()...)}
			// The base build's artifacts are here too.
			if base != nil && !slices.Contains(hb.Templates, base.BuildID) {
				hb.Templates = append(hb.Templates, base.BuildID)
				slices.Sort(hb.Templates)
			}
			return hb, nil
		},
	}), nil
}

// templateFetcher fetches the custom templates a node lacks from the nodes
// the control plane names (docs/fleet.md); nil outside a fleet.
func templateFetcher(f *fleetFlags, nodeID, token string) func(context.Context, string) (io.ReadCloser, error) {
	if f.controlURL == "" {
		return nil
	}
	tf := &fleet.TemplateFetcher{ControlURL: f.controlURL, NodeToken: token, NodeID: nodeID,
		ArtifactPath: orchestrator.TemplatePath, HTTPClient: &http.Client{}}
	return tf.FetchTemplate
}

// baseBuild describes tmpl, the node's base template, for the registry.
func baseBuild(tmpl *runtime.Template, runtimes []string) *fleet.BaseBuild {
	return &fleet.BaseBuild{BuildID: tmpl.ID, Dir: tmpl.Dir, Runtimes: runtimes,
		VCPUs: tmpl.VCPUs, MemoryMB: tmpl.MemoryMB, DiskMB: tmpl.DiskMB}
}

// recordBase records a node's base build unless the store has it ready:
// the first node's runtimes stand (nodes of one fleet run the same ones).
func recordBase(ctx context.Context, st store.Store, b fleet.BaseBuild) error {
	if cur, err := st.GetBuild(ctx, b.BuildID); err == nil && cur.Status == store.BuildReady {
		return nil
	}
	tmpl := &runtime.Template{ID: b.BuildID, Dir: b.Dir, VCPUs: b.VCPUs, MemoryMB: b.MemoryMB, DiskMB: b.DiskMB}
	return registerTemplate(ctx, st, tmpl, b.Runtimes)
}

// newNodeCmd is `cocoon node list|drain|undrain`.
func newNodeCmd(g *globalFlags) *cobra.Command {
	a := &adminFlags{}
	cmd := &cobra.Command{Use: "node", Short: "See and drain the fleet's orchestrator nodes (needs the admin token)"}
	a.register(cmd)
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the registered nodes with their state, capacity and load",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(g, a)
			if err != nil {
				return err
			}
			var nodes []fleet.NodeJSON
			if err := c.do(cmd.Context(), http.MethodGet, fleet.AdminNodesPath, nil, &nodes); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tURL\tRUNTIMES\tSANDBOXES\tVCPUS\tMEMORY MiB\tHEARTBEAT")
			for _, n := range nodes {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d/%d\t%d/%d\t%s ago\n", n.ID, n.State, n.URL, strings.Join(n.Runtimes, ","),
					n.Sandboxes, n.UsedVCPUs, n.VCPUs, n.UsedMemoryMB, n.MemoryMB, time.Since(n.HeartbeatAt).Round(time.Second))
			}
			return tw.Flush()
		},
	})
	for _, verb := range []struct{ use, short string }{
		{"drain", "Stop placing new sandboxes on a node; its sandboxes run on until they end"},
		{"undrain", "Place new sandboxes on a drained node again"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   verb.use + " NODE_ID",
			Short: verb.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := newAdminClient(g, a)
				if err != nil {
					return err
				}
				var n fleet.NodeJSON
				if err := c.do(cmd.Context(), http.MethodPost, fleet.AdminNodesPath+"/"+url.PathEscape(args[0])+"/"+verb.use, nil, &n); err != nil {
					return err
				}
				fmt.Fprintf(os.Stdout, "node %s: %s (%d sandboxes)\n", n.ID, n.State, n.Sandboxes)
				return nil
			},
		})
	}
	return cmd
}
