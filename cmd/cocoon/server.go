package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/cocoon-run/cocoon/internal/datadir"
	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/runtime"
	"github.com/cocoon-run/cocoon/internal/vmm"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/api"
	"github.com/cocoon-run/cocoon/internal/control/fleet"
	"github.com/cocoon-run/cocoon/internal/metrics"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/proxy"
	"github.com/cocoon-run/cocoon/internal/store"
	"github.com/cocoon-run/cocoon/internal/template/base"
)

// serverFlags configure the parts of `cocoon server`.
type serverFlags struct {
	listen      string
	proxyListen string
	nodeListen  string
	nodeURL     string
	db          string
	domain      string
	nodeID      string
	prewarm     int
	debug       bool
	metricsAddr string
	node        nodeFlags
	tls         tlsFlags
	fleet       fleetFlags
}

func (f *serverFlags) registerAPI(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", envOr("COCOON_LISTEN", "127.0.0.1:3000"), "address of the REST API (E2B_API_URL)")
	fl.StringVar(&f.db, "db", envOr("COCOON_DB", ""), "database: a postgres:// DSN, or sqlite:///path (default: SQLite in the data dir)")
	fl.StringVar(&f.domain, "domain", envOr("COCOON_DOMAIN", ""), "sandbox domain for host routing (<port>-<id>.<domain>)")
	if cmd.Flags().Lookup("tls-cert") == nil {
		f.tls.register(cmd)
	}
	f.registerMetrics(cmd)
}

func (f *serverFlags) registerProxy(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.proxyListen, "proxy-listen", envOr("COCOON_PROXY_LISTEN", "127.0.0.1:3001"), "address of the sandbox proxy (E2B_SANDBOX_URL)")
	f.registerMetrics(cmd)
	if cmd.Flags().Lookup("tls-cert") == nil {
		f.tls.register(cmd)
	}
}

func (f *serverFlags) registerNode(cmd *cobra.Command) {
	host, _ := os.Hostname()
	fl := cmd.Flags()
	fl.StringVar(&f.nodeID, "node-id", envOr("COCOON_NODE_ID", host), "name of this node")
	fl.IntVar(&f.prewarm, "prewarm", 4, "network slots kept ready for creates")
	f.registerMetrics(cmd)
	f.node.register(cmd)
}

func newServerCmd(g *globalFlags) *cobra.Command {
	f := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run api, orchestrator and proxy in one process (embedded SQLite, base template)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), g, f, true, true, true)
		},
	}
	f.registerAPI(cmd)
	f.registerProxy(cmd)
	f.registerNode(cmd)
	cmd.Flags().BoolVar(&f.debug, "debug", false, "debug logging")
	return cmd
}

func newAPICmd(g *globalFlags) *cobra.Command {
	f := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Run the REST control plane alone; it reaches the orchestrator over its RPC",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), g, f, true, false, false)
		},
	}
	f.registerAPI(cmd)
	cmd.Flags().StringVar(&f.nodeURL, "node-url", envOr("COCOON_NODE_URL", ""), "URL of the orchestrator (default: its unix socket in the data dir)")
	cmd.Flags().StringVar(&f.nodeID, "node-id", envOr("COCOON_NODE_ID", ""), "name of the node (default: the name it reports)")
	f.fleet.registerControl(cmd)
	cmd.Flags().BoolVar(&f.debug, "debug", false, "debug logging")
	return cmd
}

func newOrchestratorCmd(g *globalFlags) *cobra.Command {
	f := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "orchestrator",
		Short: "Run the node orchestrator alone, serving its authenticated RPC",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), g, f, false, true, false)
		},
	}
	f.registerNode(cmd)
	cmd.Flags().StringVar(&f.nodeListen, "node-listen", envOr("COCOON_NODE_LISTEN", ""), "TCP address of the node RPC (default: a unix socket in the data dir)")
	f.fleet.registerNode(cmd)
	cmd.Flags().BoolVar(&f.debug, "debug", false, "debug logging")
	return cmd
}

func newProxyCmd(g *globalFlags) *cobra.Command {
	f := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the sandbox proxy alone; it reads sandbox placement from the database",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServer(cmd.Context(), g, f, false, false, true)
		},
	}
	f.registerProxy(cmd)
	cmd.Flags().StringVar(&f.db, "db", envOr("COCOON_DB", ""), "database (as for `cocoon api`)")
	cmd.Flags().StringVar(&f.domain, "domain", envOr("COCOON_DOMAIN", ""), "sandbox domain for host routing")
	cmd.Flags().StringVar(&f.nodeURL, "node-url", envOr("COCOON_NODE_URL", ""), "URL of the orchestrator, for auto-resume (default: its unix socket)")
	f.fleet.registerControl(cmd)
	cmd.Flags().BoolVar(&f.debug, "debug", false, "debug logging")
	return cmd
}

// runServer runs the chosen parts until ctx ends, then shuts down gracefully.
// Sandboxes outlive the process: the next start re-adopts them.
func runServer(ctx context.Context, g *globalFlags, f *serverFlags, withAPI, withNode, withProxy bool) error {
	log := newLogger(os.Stderr, f.debug)
	slog.SetDefault(log)
	dataDir, err := filepath.Abs(g.dataDir)
	if err != nil {
		return err
	}
	// Private to Cocoon's user: the database, tokens, template trees with
	// setuid files, snapshots and logs live here (docs/security.md).
	if err := datadir.Secure(dataDir, log); err != nil {
		return err
	}
	nodeToken := os.Getenv("COCOON_NODE_TOKEN")
	if nodeToken == "" {
		if nodeToken, _, err = loadOrCreateSecret(filepath.Join(dataDir, "node.token")); err != nil {
			return err
		}
	}
	sock := filepath.Join(dataDir, "node.sock")
	group, ctx := errgroup.WithContext(ctx)
	var servers []*http.Server
	// TLS on the public listeners (api, proxy); the node RPC has its own.
	publicTLS, err := f.tls.config()
	if err != nil {
		return err
	}
	serve := func(name string, ln net.Listener, h http.Handler) {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		var tc *tls.Config
		if name == "api" || name == "proxy" {
			tc = publicTLS
		}
		servers = append(servers, srv)
		log.Info("listening", "part", name, "addr", ln.Addr().String(), "scheme", scheme(tc))
		group.Go(func() error {
			if err := serveListener(srv, ln, tc); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}

	// One registry per process; each part registers its collectors.
	reg := f.metricsRegistry()
	var tmplRuntimes []string
	if withNode {
		tdir, err := currentTemplate(dataDir, base.Name)
		if err != nil {
			return err
		}
		tmpl, err := base.Load(tdir)
		if err != nil {
			return err
		}
		n, err := openNode(ctx, dataDir, &f.node, tmpl, log)
		if err != nil {
			return err
		}
		for _, name := range n.names() {
			if hasSnapshot(tmpl, name) {
				tmplRuntimes = append(tmplRuntimes, name)
			}
		}
		// A snapshot this build's drivers can no longer restore (saved by an
		// older Cocoon) is saved again now; current ones are left alone.
		if err := snapshotTemplate(ctx, n, tmpl, tmplRuntimes, func(msg string) { log.Info("base template: " + msg) }); err != nil {
			return err
		}
		if !hasSnapshot(tmpl, n.def) {
			return fmt.Errorf("the base template has no %s snapshot: run `cocoon template build base --data-dir %s`", n.def, dataDir)
		}
		log.Info("runtime chosen", "default", n.def, "available", n.names(), "accel", n.accel, "why", n.reason)
		// Warm slots die with the process; slots in use stay for their
		// sandboxes, which the next start re-adopts.
		defer func() {
			if err := n.slots.Close(context.Background()); err != nil {
				log.Warn("close network slots", "err", err)
			}
		}()
		var orch *orchestrator.Orchestrator
		o, err := orchestrator.New(ctx, orchestrator.Config{
			NodeID: f.nodeID, DataDir: dataDir, Runtimes: n.runtimes, Default: n.def,
			Slots: n.slots, Logger: log, Accel: n.accel, Reason: n.reason,
			Metrics:       nodeMetrics(reg, dataDir, &orch),
			FetchTemplate: templateFetcher(&f.fleet, f.nodeID, nodeToken),
		})
		if err != nil {
			return err
		}
		orch = o
		// Prespawned processes of the warm pool die with the server.
		defer o.Close()
		if err := o.Warm(n.def, tdir); err != nil {
			log.Warn("warm pool", "err", err)
		}
		group.Go(func() error {
			if err := n.slots.Prewarm(ctx, f.prewarm); err != nil && ctx.Err() == nil {
				log.Warn("prewarm network slots", "err", err)
			}
			return nil
		})
		path, h, err := orchestrator.NewHandler(o, nodeToken)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle(path, h)
		tpath, th, err := orchestrator.NewTemplateHandler(o, nodeToken)
		if err != nil {
			return err
		}
		mux.Handle(tpath, th)
		var ln net.Listener
		if f.nodeListen != "" {
			ln, err = net.Listen("tcp", f.nodeListen)
		} else {
			_ = os.Remove(sock)
			ln, err = net.Listen("unix", sock)
			if err == nil {
				err = os.Chmod(sock, 0o600)
			}
		}
		if err != nil {
			return fmt.Errorf("node rpc listener: %w", err)
		}
		serve("orchestrator", ln, mux)
		if f.fleet.controlURL != "" {
			agent, err := nodeAgent(&f.fleet, f.nodeListen, dataDir, nodeToken, o, baseBuild(tmpl, tmplRuntimes))
			if err != nil {
				return err
			}
			group.Go(func() error { return agent.Run(ctx) })
		}
	}

	var (
		apiSrv   *api.Server
		registry *fleet.Registry
		px       *proxy.Proxy
		routes   *fleet.RouteWatch // a fleet's proxy without an api
	)
	if withAPI || withProxy {
		dsn := f.db
		if dsn == "" {
			dsn = "sqlite://" + filepath.Join(dataDir, "cocoon.db")
		}
		// Sandbox tokens and env vars are sealed with this key: a copy of
		// the database alone reveals none of them. Every api and proxy
		// sharing one database needs the same key file.
		key, err := store.LoadOrCreateKey(filepath.Join(dataDir, "secrets.key"))
		if err != nil {
			return err
		}
		st, err := store.Open(ctx, dsn, store.WithSecretsKey(key))
		if err != nil {
			return err
		}
		defer st.Close()
		var am *metrics.API
		am, st = apiMetrics(reg, st)
		adminToken := os.Getenv("COCOON_ADMIN_TOKEN")
		if adminToken == "" {
			var created bool
			adminToken, created, err = loadOrCreateSecret(filepath.Join(dataDir, "admin.token"))
			if err != nil {
				return err
			}
			if created {
				// The token itself never goes to the output or the logs.
				fmt.Fprintf(os.Stderr, "cocoon: generated the admin token (for `cocoon team` and `cocoon key`) into %s (mode 0600)\n", filepath.Join(dataDir, "admin.token"))
			}
		}
		if withAPI {
			// `cocoon api` alone registers the base template too when its
			// data dir holds the node's (one host, parts run separately);
			// on a host of its own it bootstraps the teams and key only.
			var tmpl *runtime.Template
			tdir, err := currentTemplate(dataDir, base.Name)
			if err == nil {
				tmpl, err = base.Load(tdir)
			}
			switch {
			case err != nil && withNode:
				return err
			case err != nil:
				log.Warn("no base template in the data dir: not registering it", "err", err)
			case !withNode:
				for _, name := range []string{vmm.Name, gvisor.Name} {
					if hasSnapshot(tmpl, name) {
						tmplRuntimes = append(tmplRuntimes, name)
					}
				}
			}
			if err := bootstrap(ctx, st, dataDir, scheme(publicTLS)+"://"+f.listen, scheme(publicTLS)+"://"+f.proxyListen, tmpl, tmplRuntimes, os.Stderr); err != nil {
				return err
			}
		}
		var nodes api.NodeSet
		if f.fleet.enabled {
			// The nodes that heartbeat (internal/control/fleet); the hooks
			// run from the first Refresh on, after apiSrv and px are set.
			registry = fleet.New(fleet.Config{Store: st, NodeToken: nodeToken, AdminToken: adminToken, Logger: log,
				OnNodeUp: func(id string) {
					if withAPI {
						apiSrv.WatchNode(ctx, id)
					} else if routes != nil {
						routes.Watch(ctx, id)
					}
				},
				OnLost: func(id, reason string) {
					if px != nil {
						px.Fail(id, reason)
					}
				},
				OnBase: func(ctx context.Context, b fleet.BaseBuild) error { return recordBase(ctx, st, b) },
			})
			nodes = registry
		} else {
			client := nodeClient(f.nodeURL, sock, nodeToken)
			nodeID := f.nodeID
			if nodeID == "" {
				nodeID, err = askNodeID(ctx, client)
				if err != nil {
					return err
				}
			}
			nodes = api.NewStaticNodes(map[string]orchestratorv1connect.OrchestratorServiceClient{nodeID: client})
		}
		apiSrv, err = api.New(api.Config{Domain: f.domain, AdminToken: adminToken, TemplateFilesDir: filepath.Join(dataDir, "template-files"), Metrics: am}, st,
			nodes, log)
		if err != nil {
			return err
		}
		if withAPI {
			ln, err := net.Listen("tcp", f.listen)
			if err != nil {
				return fmt.Errorf("api listener: %w", err)
			}
			h := apiSrv.Handler()
			if registry != nil {
				// Nodes known before the first reconcile.
				if err := registry.Refresh(ctx); err != nil {
					return err
				}
				mux := http.NewServeMux()
				mux.Handle(fleet.HeartbeatPath, registry.Handler())
				mux.Handle(fleet.TemplateHoldersPath, registry.Handler())
				mux.Handle(fleet.AdminNodesPath, registry.Handler())
				mux.Handle(fleet.AdminNodesPath+"/", registry.Handler())
				mux.Handle("/", h)
				h = mux
			}
			// The first answers already show sandboxes whose runtime is gone as dead.
			apiSrv.ReconcileAtStart(ctx)
			serve("api", ln, h)
			group.Go(func() error { return apiSrv.Run(ctx) })
		}
	}
	if withProxy {
		ln, err := net.Listen("tcp", f.proxyListen)
		if err != nil {
			return fmt.Errorf("proxy listener: %w", err)
		}
		pm := proxyMetrics(reg)
		var res proxy.Resolver = resolver{apiSrv}
		if registry != nil && !withAPI {
			// A fleet's proxy keeps routes in memory; the nodes' events
			// drop them (docs/fleet.md).
			cache := proxy.NewRouteCache(res, proxy.DefaultRouteTTL)
			res = cache
			routes = &fleet.RouteWatch{Registry: registry, Resync: cache.Clear, Logger: log,
				Died: func(id, reason string) { px.Fail(id, reason) }, Gone: func(id string) { px.Drop(id) }}
		}
		px = proxy.New(res, f.domain, log).Observe(pm)
		// A sandbox found dead fails its proxied requests at once.
		apiSrv.OnDeath(px.Fail)
		serve("proxy", ln, pm.Handler(px.Limit(proxy.DefaultMaxInFlight)))
	}
	if reg != nil {
		// Its own listener, without auth: loopback by default; to expose
		// it, bind it to a private interface (docs/decisions.md).
		ln, err := net.Listen("tcp", f.metricsAddr)
		switch {
		case err == nil:
			serve("metrics", ln, metricsHandler(reg))
		case f.metricsAddr == defaultMetricsAddr:
			// Another Cocoon on this host has the default: a warning,
			// not a failure (tests run several servers at once).
			log.Warn("metrics listener: metrics not served", "addr", f.metricsAddr, "err", err)
		default:
			return fmt.Errorf("metrics listener: %w", err)
		}
	}

	if registry != nil {
		group.Go(func() error { return registry.Run(ctx) })
	}
	group.Go(func() error {
		<-ctx.Done()
		log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range servers {
			_ = s.Shutdown(sctx)
		}
		return nil
	})
	err = group.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// resolver adapts the api's sandbox lookup to the proxy.
type resolver struct{ api *api.Server }

func (r resolver) Resolve(ctx context.Context, id string) (proxy.Target, error) {
	rt, err := r.api.Resolve(ctx, id)
	switch {
	case errors.Is(err, api.ErrSandboxNotFound):
		return proxy.Target{}, proxy.ErrNotFound
	case errors.Is(err, api.ErrSandboxPaused):
		return proxy.Target{}, proxy.ErrPaused
	}
	if dead := (*api.DeadError)(nil); errors.As(err, &dead) {
		return proxy.Target{}, &proxy.DeadError{ID: id, Reason: dead.Reason}
	}
	return proxy.Target{Addr: rt.Addr, Epoch: rt.Started.UnixNano(),
		TrafficToken: rt.TrafficToken, EnvdPort: orchestrator.EnvdPort, EnvdToken: rt.EnvdToken}, err
}

// nodeClient returns the node RPC client: over TCP when url is set, else
// over the orchestrator's unix socket.
func nodeClient(url, sock, token string) orchestratorv1connect.OrchestratorServiceClient {
	if url != "" {
		return nodeauth.NewClient(http.DefaultClient, strings.TrimRight(url, "/"), token)
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 32,
	}}
	return nodeauth.NewClient(hc, "http://node", token)
}

func askNodeID(ctx context.Context, c orchestratorv1connect.OrchestratorServiceClient) (string, error) {
	resp, err := c.Node(ctx, connectRequestNode())
	if err != nil {
		return "", fmt.Errorf("ask the orchestrator its node id (is it running?): %w", err)
	}
	return resp.Msg.GetNodeId(), nil
}
