package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	cocoon "github.com/cocoon-run/cocoon/sdk/go"
)

// `cocoon sandbox …`: a client of any E2B-compatible API, built only on
// sdk/go (no server code): create, list, exec, shell, cp, … .

// sandboxFlags are the connection flags of every `sandbox` verb.
type sandboxFlags struct {
	apiURL, sandboxURL, apiKey string
	json                       bool
}

// client returns the SDK client the flags (then the E2B_* environment)
// describe.
func (f *sandboxFlags) client() (*cocoon.Client, error) {
	return cocoon.NewClient(cocoon.Config{APIKey: f.apiKey, APIURL: f.apiURL, SandboxURL: f.sandboxURL})
}

// connect returns sandbox id, resuming it when paused.
func (f *sandboxFlags) connect(ctx context.Context, id string) (*cocoon.Sandbox, error) {
	c, err := f.client()
	if err != nil {
		return nil, err
	}
	return c.Connect(ctx, id, 0)
}

// attached calls try with sandbox id attached without an API call, and
// again after a connect when that is what it needs (paused, or its envd
// wants the access token): exec's common case saves an API round trip
// (docs/decisions.md).
func (f *sandboxFlags) attached(ctx context.Context, id string, try func(*cocoon.Sandbox) error) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	err = try(c.Attach(id, ""))
	var auth *cocoon.AuthError
	var ae *cocoon.APIError
	if !errors.As(err, &auth) && !(errors.As(err, &ae) && ae.Status == http.StatusConflict) {
		return err
	}
	sb, err := c.Connect(ctx, id, 0)
	if err != nil {
		return err
	}
	return try(sb)
}

// print writes v as JSON with --json, else calls text.
func (f *sandboxFlags) print(w io.Writer, v any, text func()) error {
	if f.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text()
	return nil
}

// exitError ends the process with code, printing nothing more (exec and
// shell pass on the sandbox command's exit code).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// cliError rewrites SDK errors for a person at a terminal: they name the
// flags too.
func cliError(err error) error {
	var ce *cocoon.ConnectionError
	switch {
	case errors.As(err, &ce):
		flag := "--api-url"
		if strings.HasPrefix(ce.Setting, "E2B_SANDBOX_URL") {
			flag = "--sandbox-url"
		}
		set := "(set " + ce.Setting + ")"
		return errors.New(strings.Replace(err.Error(), set, "(set "+ce.Setting+" or "+flag+")", 1))
	case errors.Is(err, cocoon.ErrNoAPIKey):
		return errors.New("no API key: set E2B_API_KEY or pass --api-key (a local server writes them to <data-dir>/sdk.env: source it)")
	}
	return err
}

func newSandboxCmd() *cobra.Command {
	f := &sandboxFlags{}
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sb"},
		Short:   "Create, use and manage sandboxes on a Cocoon (or any E2B-compatible) server",
		Long: `Create, use and manage sandboxes on a Cocoon (or any E2B-compatible) server.
The server and key come from --api-url, --sandbox-url and --api-key or from
E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (source <data-dir>/sdk.env).`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.apiURL, "api-url", "", "the API's URL (default $E2B_API_URL)")
	pf.StringVar(&f.sandboxURL, "sandbox-url", "", "the sandbox proxy's URL (default $E2B_SANDBOX_URL)")
	pf.StringVar(&f.apiKey, "api-key", "", "API key (default $E2B_API_KEY)")
	pf.BoolVar(&f.json, "json", false, "print JSON")
	cmd.AddCommand(
		newSandboxCreateCmd(f), newSandboxListCmd(f), newSandboxInfoCmd(f), newSandboxExecCmd(f),
		newSandboxShellCmd(f), newSandboxCpCmd(f), newSandboxLsCmd(f), newSandboxLogsCmd(f),
		newSandboxMetricsCmd(f), newSandboxPauseCmd(f), newSandboxResumeCmd(f), newSandboxKillCmd(f),
	)
	for _, c := range cmd.Commands() {
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, args []string) error { return cliError(run(cmd, args)) }
	}
	return cmd
}

// pairs parses k=v flags.
func pairs(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=VALUE", kv)
		}
		m[k] = v
	}
	return m, nil
}

func newSandboxCreateCmd(f *sandboxFlags) *cobra.Command {
	var (
		template   string
		timeout    time.Duration
		md, envs   []string
		noInternet bool
		autoPause  bool
		secure     bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and print its ID",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			opts := cocoon.CreateOptions{Template: template, Timeout: timeout, AutoPause: autoPause, Secure: secure}
			if opts.Metadata, err = pairs(md); err != nil {
				return err
			}
			if opts.Envs, err = pairs(envs); err != nil {
				return err
			}
			if noInternet {
				no := false
				opts.AllowInternetAccess = &no
			}
			sb, err := c.Create(cmd.Context(), opts)
			if err != nil {
				return err
			}
			out := map[string]string{"sandboxID": sb.ID, "templateID": sb.TemplateID, "envdVersion": sb.EnvdVersion}
			return f.print(cmd.OutOrStdout(), out, func() { fmt.Fprintln(cmd.OutOrStdout(), sb.ID) })
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&template, "template", "t", "base", "template ID or name")
	fl.DurationVar(&timeout, "timeout", 5*time.Minute, "the sandbox is killed (or paused with --auto-pause) after this long")
	fl.StringArrayVarP(&md, "metadata", "m", nil, "metadata KEY=VALUE (repeatable)")
	fl.StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE of every command (repeatable)")
	fl.BoolVar(&noInternet, "no-internet", false, "cut the sandbox off the internet")
	fl.BoolVar(&autoPause, "auto-pause", false, "pause instead of kill at the timeout")
	fl.BoolVar(&secure, "secure", false, "envd requires the sandbox's access token (the CLI gets it by connecting)")
	return cmd
}

func newSandboxListCmd(f *sandboxFlags) *cobra.Command {
	var (
		md     []string
		states []string
		limit  int
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls-sandboxes"},
		Short:   "List sandboxes (every page)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			opts := cocoon.ListOptions{Limit: limit}
			if opts.Metadata, err = pairs(md); err != nil {
				return err
			}
			for _, s := range states {
				opts.States = append(opts.States, cocoon.State(s))
			}
			all := []cocoon.SandboxInfo{}
			for {
				page, err := c.List(cmd.Context(), opts)
				if err != nil {
					return err
				}
				all = append(all, page.Sandboxes...)
				if opts.NextToken = page.NextToken; opts.NextToken == "" {
					break
				}
			}
			return f.print(cmd.OutOrStdout(), all, func() {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SANDBOX ID\tTEMPLATE\tSTATE\tSTARTED\tENDS\tMETADATA")
				for _, s := range all {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.SandboxID, s.TemplateID, s.State,
						s.StartedAt.Local().Format(time.DateTime), s.EndAt.Local().Format(time.DateTime), kvString(s.Metadata))
				}
				tw.Flush()
			})
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&md, "metadata", "m", nil, "keep sandboxes with metadata KEY=VALUE (repeatable)")
	fl.StringSliceVar(&states, "state", nil, "keep sandboxes in these states (running, paused)")
	fl.IntVar(&limit, "limit", 0, "page size")
	return cmd
}

func kvString(m map[string]string) string {
	kv := make([]string, 0, len(m))
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func newSandboxInfoCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "info SANDBOX_ID",
		Short: "Describe a sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			info, err := c.Info(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), info, func() {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "sandbox\t%s\ntemplate\t%s\nstate\t%s\nstarted\t%s\nends\t%s\ncpus\t%d\nmemory\t%d MiB\ndisk\t%d MiB\nenvd\t%s\nmetadata\t%s\n",
					info.SandboxID, info.TemplateID, info.State, info.StartedAt.Local().Format(time.RFC3339),
					info.EndAt.Local().Format(time.RFC3339), info.CPUCount, info.MemoryMB, info.DiskSizeMB,
					info.EnvdVersion, kvString(info.Metadata))
				tw.Flush()
			})
		},
	}
}

func newSandboxExecCmd(f *sandboxFlags) *cobra.Command {
	var (
		cwd, user string
		envs      []string
		stdin     bool
		timeout   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec SANDBOX_ID -- COMMAND [ARG...]",
		Short: "Run a command in a sandbox, stream its output and exit with its exit code",
		Long: `Run a command in a sandbox with bash -c (the words are joined by spaces, as
ssh does), stream its output and exit with its exit code. With -i the
standard input is sent to the command.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts := &cocoon.RunOptions{Cwd: cwd, User: user, Stdin: stdin, Timeout: timeout,
				OnStdout: func(b []byte) { cmd.OutOrStdout().Write(b) },
				OnStderr: func(b []byte) { cmd.ErrOrStderr().Write(b) }}
			var err error
			if opts.Envs, err = pairs(envs); err != nil {
				return err
			}
			line := strings.Join(args[1:], " ")
			var h *cocoon.CommandHandle
			if err := f.attached(ctx, args[0], func(sb *cocoon.Sandbox) (err error) {
				h, err = sb.Commands.Start(ctx, line, opts)
				return err
			}); err != nil {
				return err
			}
			if stdin {
				go func() {
					buf := make([]byte, 64<<10)
					for {
						n, rerr := cmd.InOrStdin().Read(buf)
						if n > 0 {
							if h.SendStdin(ctx, buf[:n]) != nil {
								return
							}
						}
						if rerr != nil {
							h.CloseStdin(ctx)
							return
						}
					}
				}()
			}
			_, err = h.Wait(ctx)
			if ctx.Err() != nil { // interrupted: the command goes too
				kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				h.Kill(kctx)
				return &exitError{code: 130}
			}
			var exit *cocoon.CommandExitError
			if errors.As(err, &exit) {
				return &exitError{code: exitCode(exit)}
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cwd, "cwd", "", "working directory")
	fl.StringVarP(&user, "user", "u", "", "run as this user")
	fl.StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.BoolVarP(&stdin, "stdin", "i", false, "send the standard input to the command")
	fl.DurationVar(&timeout, "timeout", 0, "kill the command after this long")
	return cmd
}

func newSandboxShellCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "shell SANDBOX_ID",
		Short: "Open an interactive shell in a sandbox (a PTY; exit or Ctrl-D leaves it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sb, err := f.connect(ctx, args[0])
			if err != nil {
				return err
			}
			return shell(ctx, sb, os.Stdin, os.Stdout)
		},
	}
}

// shell connects the terminal of in and out to a PTY in sb: raw mode,
// input typed into the sandbox (Ctrl-C included), resize on SIGWINCH; it
// returns the shell's exit code as an *exitError.
func shell(ctx context.Context, sb *cocoon.Sandbox, in, out *os.File) error {
	cols, rows := 80, 24
	if w, h, err := term.GetSize(int(out.Fd())); err == nil {
		cols, rows = w, h
	}
	h, err := sb.PTY.Create(ctx, cocoon.PTYOptions{Cols: uint32(cols), Rows: uint32(rows), OnData: func(b []byte) { out.Write(b) }})
	if err != nil {
		return err
	}
	if term.IsTerminal(int(in.Fd())) {
		old, err := term.MakeRaw(int(in.Fd()))
		if err != nil {
			return err
		}
		defer term.Restore(int(in.Fd()), old)
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for range winch {
			if w, r, err := term.GetSize(int(out.Fd())); err == nil {
				sb.PTY.Resize(ctx, h.PID, uint32(w), uint32(r))
			}
		}
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 && sb.PTY.SendInput(ctx, h.PID, buf[:n]) != nil {
				return
			}
			if err != nil {
				return
			}
		}
	}()
	_, err = h.Wait(ctx)
	var exit *cocoon.CommandExitError
	if errors.As(err, &exit) {
		return &exitError{code: exitCode(exit)}
	}
	return err
}

// exitCode is the shell's exit code of a sandbox command: 137 for one a
// signal killed (envd reports -1).
func exitCode(e *cocoon.CommandExitError) int {
	if e.ExitCode < 0 {
		return 137
	}
	return e.ExitCode
}

// remotePath splits SANDBOX_ID:PATH; ok is false for a local path.
func remotePath(s string) (id, p string, ok bool) {
	id, p, ok = strings.Cut(s, ":")
	if !ok || id == "" || strings.ContainsAny(id, "/.") {
		return "", s, false
	}
	return id, p, true
}

func newSandboxCpCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between this machine and a sandbox (one side is SANDBOX_ID:PATH)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sid, src, srcRemote := remotePath(args[0])
			did, dst, dstRemote := remotePath(args[1])
			switch {
			case srcRemote == dstRemote:
				return errors.New("cp: exactly one of SRC and DST must be SANDBOX_ID:PATH")
			case dstRemote:
				sb, err := f.connect(ctx, did)
				if err != nil {
					return err
				}
				return sb.Files.CopyIn(ctx, src, dst)
			default:
				sb, err := f.connect(ctx, sid)
				if err != nil {
					return err
				}
				return sb.Files.CopyOut(ctx, src, dst)
			}
		},
	}
}

func newSandboxLsCmd(f *sandboxFlags) *cobra.Command {
	var depth int
	cmd := &cobra.Command{
		Use:   "ls SANDBOX_ID [PATH]",
		Short: "List a directory in a sandbox",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sb, err := f.connect(ctx, args[0])
			if err != nil {
				return err
			}
			p := "."
			if len(args) > 1 {
				p = args[1]
			}
			entries, err := sb.Files.List(ctx, p, depth)
			if err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), entries, func() {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 1, ' ', 0)
				for _, e := range entries {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", e.Permissions, e.Owner, e.Group, e.Size,
						e.ModifiedTime.Local().Format("Jan _2 15:04"), e.Path)
				}
				tw.Flush()
			})
		},
	}
	cmd.Flags().IntVarP(&depth, "depth", "d", 1, "levels to descend")
	return cmd
}

func newSandboxLogsCmd(f *sandboxFlags) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "logs SANDBOX_ID",
		Short: "Print a sandbox's logs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			logs, err := c.Logs(cmd.Context(), args[0], cocoon.LogsOptions{Limit: limit})
			if err != nil {
				return err
			}
			if logs == nil {
				logs = []cocoon.LogEntry{}
			}
			return f.print(cmd.OutOrStdout(), logs, func() {
				for _, l := range logs {
					fmt.Fprintf(cmd.OutOrStdout(), "%s %-5s %s %s\n", l.Timestamp.Local().Format(time.RFC3339), l.Level, l.Message, kvString(l.Fields))
				}
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many entries")
	return cmd
}

func newSandboxMetricsCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics SANDBOX_ID",
		Short: "Print a sandbox's resource use samples",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			ms, err := c.Metrics(cmd.Context(), args[0], cocoon.MetricsOptions{})
			if err != nil {
				return err
			}
			if ms == nil {
				ms = []cocoon.Metric{}
			}
			return f.print(cmd.OutOrStdout(), ms, func() {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TIME\tCPUS\tCPU %\tMEM USED\tMEM TOTAL\tDISK USED\tDISK TOTAL")
				for _, m := range ms {
					fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d MiB\t%d MiB\t%d MiB\t%d MiB\n", m.Timestamp.Local().Format(time.TimeOnly),
						m.CPUCount, m.CPUUsedPct, m.MemUsed>>20, m.MemTotal>>20, m.DiskUsed>>20, m.DiskTotal>>20)
				}
				tw.Flush()
			})
		},
	}
}

// stateReply is what pause, resume and kill print with --json.
type stateReply struct {
	SandboxID string `json:"sandboxID"`
	State     string `json:"state"`
}

func newSandboxPauseCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "pause SANDBOX_ID",
		Short: "Pause a sandbox (resume brings it back as it was)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			if err := c.Pause(cmd.Context(), args[0]); err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), stateReply{args[0], string(cocoon.StatePaused)}, func() {})
		},
	}
}

func newSandboxResumeCmd(f *sandboxFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "resume SANDBOX_ID",
		Short: "Resume a paused sandbox",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			if _, err := c.Resume(cmd.Context(), args[0], timeout); err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), stateReply{args[0], string(cocoon.StateRunning)}, func() {})
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "keep it running at least this long from now")
	return cmd
}

func newSandboxKillCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "kill SANDBOX_ID...",
		Short: "Kill sandboxes",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			killed := []stateReply{}
			var errs []error
			for _, id := range args {
				if err := c.Kill(cmd.Context(), id); err != nil {
					errs = append(errs, err)
					continue
				}
				killed = append(killed, stateReply{id, "killed"})
			}
			if err := f.print(cmd.OutOrStdout(), killed, func() {}); err != nil {
				return err
			}
			return errors.Join(errs...)
		},
	}
}
