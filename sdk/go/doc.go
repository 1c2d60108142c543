// Package cocoon is a Go client for Cocoon and any other E2B-compatible
// sandbox API: it speaks the same wire as E2B's official JavaScript and
// Python SDKs (REST to the API, Connect JSON to envd inside each sandbox)
// and depends on nothing but the standard library.
//
// # Connecting
//
// A Client reads the environment variables of the official SDKs:
//
//	export E2B_API_KEY=e2b_…                    # required
//	export E2B_API_URL=http://127.0.0.1:3000    # Cocoon's API (default https://api.e2b.app)
//	export E2B_SANDBOX_URL=http://127.0.0.1:3001 # Cocoon's sandbox proxy
//
// `cocoon server` writes these lines to <data dir>/sdk.env. Fields set in
// Config win over the environment.
//
//	c, err := cocoon.NewClient(cocoon.Config{})
//
// # A first sandbox
//
// Create starts a sandbox from a template ("base" by default) and returns
// a *Sandbox whose Commands, PTY and Files fields reach into it. Kill it
// when done (or let its Timeout do it):
//
//	sb, err := c.Create(ctx, cocoon.CreateOptions{Timeout: 5 * time.Minute})
//	defer sb.Kill(ctx)
//	res, err := sb.Commands.Run(ctx, "uname -a", nil)
//	fmt.Print(res.Stdout)
//
// # Commands
//
// Run runs a bash command line and waits; a non-zero exit returns a
// *CommandExitError carrying the result. Output can be streamed with
// RunOptions.OnStdout and OnStderr. Start returns a *CommandHandle at once
// for commands that run in the background: Wait, Kill, SendStdin. List
// shows what runs and Connect attaches to a running process again.
// Cancelling Run's context kills the command; cancelling Wait's does not.
//
// # Terminals
//
// PTY.Create opens an interactive shell in a pseudo-terminal; SendInput
// types into it, Resize changes its size, its output goes to
// PTYOptions.OnData.
//
// # Files
//
// Files reads and writes files as bytes (Read, Write) or streams
// (ReadStream, WriteStream), several at once (WriteMany), and lists
// (List with a depth), inspects (Stat, Exists), makes (MakeDir), moves
// (Rename) and removes (Remove) them. Watch delivers the changes under a
// directory on a channel.
//
// # Errors
//
// Errors are typed for errors.As: *NotFoundError (no such sandbox, file
// or process), *AuthError (the key was refused), *TimeoutError,
// *RateLimitError, *SandboxKilledError (the sandbox died, with the
// server's reason), *ConnectionError (the server is not there: it names
// the URL and the setting that sets it), *CommandExitError; all that come
// from a server reply also match *APIError. A cancelled context is
// reported as the context's error (errors.Is(err, context.Canceled)).
//
// Idempotent calls (reads, lists, kill, set timeout, file reads and
// writes) are retried on connection errors, 429 and 502/503/504
// (Config.MaxRetries).
//
// # Sandbox lifecycle
//
// Client.List pages through sandboxes (filter by metadata and state),
// Info describes one, SetTimeout extends its life, Pause keeps it without
// running it and Connect (or Resume) brings it back, Metrics and Logs
// report on it, Kill ends it.
package cocoon
