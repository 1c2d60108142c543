package process

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	pb "github.com/cocoon-run/cocoon/api/gen/process"
	"github.com/cocoon-run/cocoon/api/gen/process/processconnect"
	"github.com/cocoon-run/cocoon/internal/envd/session"
)

// env is one test server and a client speaking to it.
type env struct {
	svc    *Service
	url    string
	http   *http.Client
	client processconnect.ProcessClient
}

type transport struct {
	name string
	h2c  bool
	json bool
}

var transports = []transport{
	{name: "http1/json", json: true},
	{name: "http1/proto"},
	{name: "h2c/json", h2c: true, json: true},
	{name: "h2c/proto", h2c: true},
}

func newEnv(t testing.TB, tr transport, sess *session.Session, opts ...Option) *env {
	t.Helper()
	svc := New(sess, opts...)
	mux := http.NewServeMux()
	path, h := svc.Handler()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(mux)
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = protos
	srv.Start()

	ct := &http.Transport{}
	if tr.h2c {
		ct.Protocols = new(http.Protocols)
		ct.Protocols.SetUnencryptedHTTP2(true)
	}
	hc := &http.Client{Transport: ct}
	var copts []connect.ClientOption
	if tr.json {
		copts = append(copts, connect.WithProtoJSON())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := svc.Close(ctx); err != nil {
			t.Errorf("close service: %v", err)
		}
		srv.Close()
		ct.CloseIdleConnections()
	})
	return &env{svc: svc, url: srv.URL, http: hc, client: processconnect.NewProcessClient(hc, srv.URL, copts...)}
}

func defaultEnv(t testing.TB, opts ...Option) *env {
	return newEnv(t, transports[0], nil, opts...)
}

// result is what a process stream delivered.
type result struct {
	pid        uint32
	stdout     string
	stderr     string
	pty        string
	end        *pb.ProcessEvent_EndEvent
	keepalives int
	err        error
}

// next reads one event from a Start or Connect stream.
func next[T interface{ GetEvent() *pb.ProcessEvent }](s stream[T]) (*pb.ProcessEvent, error) {
	if !s.Receive() {
		if err := s.Err(); err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	return s.Msg().GetEvent(), nil
}

type stream[T any] interface {
	Receive() bool
	Msg() T
	Err() error
}

// collect reads a fresh stream to its end, checking the order start, data…, end.
func collect[T interface{ GetEvent() *pb.ProcessEvent }](t testing.TB, s stream[T]) result {
	t.Helper()
	return collectFrom(t, s, 0)
}

// collectRest reads the rest of a stream whose start event was read.
func collectRest[T interface{ GetEvent() *pb.ProcessEvent }](t testing.TB, s stream[T]) result {
	t.Helper()
	return collectFrom(t, s, 1)
}

func collectFrom[T interface{ GetEvent() *pb.ProcessEvent }](t testing.TB, s stream[T], seen int) result {
	t.Helper()
	var r result
	for i := seen; ; i++ {
		ev, err := next(s)
		if errors.Is(err, io.EOF) {
			if r.end == nil {
				t.Errorf("stream ended without an end event")
			}
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
		if r.end != nil {
			t.Errorf("event after end: %v", ev)
		}
		switch e := ev.GetEvent().(type) {
		case *pb.ProcessEvent_Start:
			if i != 0 {
				t.Errorf("start event at position %d", i)
			}
			r.pid = e.Start.GetPid()
		case *pb.ProcessEvent_Data:
			if i == 0 {
				t.Errorf("data before start")
			}
			r.stdout += string(e.Data.GetStdout())
			r.stderr += string(e.Data.GetStderr())
			r.pty += string(e.Data.GetPty())
		case *pb.ProcessEvent_End:
			r.end = e.End
		case *pb.ProcessEvent_Keepalive:
			r.keepalives++
		default:
			t.Errorf("unexpected event %v", ev)
		}
	}
}

func run(t testing.TB, e *env, req *pb.StartRequest) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := e.client.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer s.Close()
	return collect(t, s)
}

func cmd(name string, args ...string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: name, Args: args}}
}

// bashLogin is what the SDK's commands.run sends. HOME points to an empty
// directory so that the test machine's own profile is not measured.
func bashLogin(script string) *pb.StartRequest {
	req := cmd("/bin/bash", "-l", "-c", script)
	req.Process.Envs = map[string]string{"HOME": os.TempDir()}
	return req
}

func sh(script string) *pb.StartRequest { return cmd("/bin/sh", "-c", script) }

// startStream starts req and returns its stream after the start event.
func startStream(t testing.TB, e *env, ctx context.Context, req *pb.StartRequest) (*connect.ServerStreamForClient[pb.StartResponse], uint32) {
	t.Helper()
	s, err := e.client.Start(ctx, connect.NewRequest(req))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ev, err := next(s)
	if err != nil {
		t.Fatalf("first event: %v", err)
	}
	pid := ev.GetStart().GetPid()
	if pid == 0 {
		t.Fatalf("first event %v, want start with a pid", ev)
	}
	return s, pid
}

func pidSel(pid uint32) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
}

func tagSel(tag string) *pb.ProcessSelector {
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: tag}}
}

func strp(s string) *string { return &s }

func TestRunOverTransports(t *testing.T) {
	tests := []struct {
		name                 string
		req                  *pb.StartRequest
		wantOut, wantErr     string
		wantCode             int32
		wantStatus, wantFail string
	}{
		{name: "true", req: cmd("true"), wantStatus: "exit status 0"},
		{name: "output and exit code", req: sh("echo out; echo err >&2; exit 3"),
			wantOut: "out\n", wantErr: "err\n", wantCode: 3, wantStatus: "exit status 3", wantFail: "exit status 3"},
		{name: "args", req: cmd("printf", "%s|", "a b", "c"), wantOut: "a b|c|", wantStatus: "exit status 0"},
		{name: "bash login", req: bashLogin("echo hi"), wantOut: "hi\n", wantStatus: "exit status 0"},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			e := newEnv(t, tr, nil)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					r := run(t, e, tt.req)
					if r.err != nil {
						t.Fatalf("stream error: %v", r.err)
					}
					if r.pid == 0 {
						t.Errorf("no pid")
					}
					if r.stdout != tt.wantOut || r.stderr != tt.wantErr {
						t.Errorf("got stdout %q stderr %q, want %q %q", r.stdout, r.stderr, tt.wantOut, tt.wantErr)
					}
					if r.end.GetExitCode() != tt.wantCode || !r.end.GetExited() || r.end.GetStatus() != tt.wantStatus || r.end.GetError() != tt.wantFail {
						t.Errorf("got end %v, want code %d exited status %q error %q", r.end, tt.wantCode, tt.wantStatus, tt.wantFail)
					}
					if (tt.wantFail == "") != (r.end.Error == nil) {
						t.Errorf("end error set = %v, want %v", r.end.Error != nil, tt.wantFail != "")
					}
				})
			}
		})
	}
}

func TestH2CIsUsed(t *testing.T) {
	e := newEnv(t, transports[2], nil)
	resp, err := e.http.Post(e.url+processconnect.ProcessListProcedure, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
		t.Errorf("got %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
}

// Output must be forwarded as it is written, not when the process ends or
// a line is complete.
func TestOutputStreamsBeforeExit(t *testing.T) {
	for _, tr := range []transport{transports[0], transports[3]} {
		t.Run(tr.name, func(t *testing.T) {
			e := newEnv(t, tr, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, _ := startStream(t, e, ctx, sh("printf first; sleep 1.5; printf second"))
			began := time.Now()
			ev, err := next(s)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(ev.GetData().GetStdout()); got != "first" {
				t.Fatalf("got first event %v, want stdout \"first\"", ev)
			}
			if d := time.Since(began); d > time.Second {
				t.Errorf("first chunk took %v: it waited for the process", d)
			}
			r := collectRest(t, s)
			if r.stdout != "second" || r.end.GetExitCode() != 0 {
				t.Errorf("got rest %q end %v", r.stdout, r.end)
			}
		})
	}
}

func TestLargeOutputIsComplete(t *testing.T) {
	e := newEnv(t, transports[1], nil)
	r := run(t, e, sh("head -c 3000000 /dev/zero"))
	if len(r.stdout) != 3000000 || r.end.GetExitCode() != 0 {
		t.Errorf("got %d bytes, end %v; want 3000000 bytes, exit 0", len(r.stdout), r.end)
	}
}

func TestEnvAndCwd(t *testing.T) {
	sess := &session.Session{}
	sess.MergeEnvs(map[string]string{"FROM_SESSION": "s", "BOTH": "session"})
	e := newEnv(t, transports[0], sess)
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := os.MkdirTemp(home, "cwdtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sub) })
	rel := strings.TrimPrefix(sub, home+"/")

	tests := []struct {
		name string
		cwd  *string
		envs map[string]string
		want string
	}{
		{name: "defaults", want: "s session " + home + " " + home + "\n"},
		{name: "request overrides session", envs: map[string]string{"BOTH": "request"}, want: "s request " + home + " " + home + "\n"},
		{name: "absolute cwd", cwd: strp("/tmp"), want: "s session " + home + " /tmp\n"},
		{name: "relative cwd is under home", cwd: strp(rel), want: "s session " + home + " " + sub + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := sh(`echo "$FROM_SESSION $BOTH $HOME $(pwd)"`)
			req.Process.Cwd = tt.cwd
			req.Process.Envs = tt.envs
			r := run(t, e, req)
			if r.stdout != tt.want {
				t.Errorf("got %q, want %q (stderr %q)", r.stdout, tt.want, r.stderr)
			}
		})
	}

	t.Run("basic variables", func(t *testing.T) {
		r := run(t, e, sh(`echo "$USER $LOGNAME $PWD" && test -n "$PATH"`))
		me := os.Getenv("USER")
		if me == "" {
			me = "root"
		}
		if want := fmt.Sprintf("%s %s %s\n", me, me, home); r.stdout != want || r.end.GetExitCode() != 0 {
			t.Errorf("got %q exit %d, want %q", r.stdout, r.end.GetExitCode(), want)
		}
	})
}

func TestRunAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users (envd runs as root in a sandbox)")
	}
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := connect.NewRequest(sh(`echo "$(id -u):$(id -g) $USER"`))
	req.Msg.Process.Cwd = strp("/tmp") // nobody's home does not exist
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("nobody:")))
	s, err := e.client.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r := collect(t, s)
	if want := "65534:65534 nobody\n"; r.stdout != want {
		t.Errorf("got %q (stderr %q, err %v), want %q", r.stdout, r.stderr, r.err, want)
	}

	req = connect.NewRequest(cmd("true"))
	req.Header().Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("no-such-user-xyz:")))
	s, err = e.client.Start(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s); connect.CodeOf(r.err) != connect.CodeInvalidArgument {
		t.Errorf("unknown user: got %v, want invalid_argument", r.err)
	}
}

// TestConnectStdinFanOut attaches by pid and by tag, feeds stdin and closes
// it: every subscriber sees the echo and the end.
func TestConnectStdinFanOut(t *testing.T) {
	for _, tr := range []transport{transports[0], transports[3]} {
		t.Run(tr.name, func(t *testing.T) {
			e := newEnv(t, tr, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req := cmd("cat")
			req.Tag = strp("echoer")
			req.Stdin = proto.Bool(true)
			owner, pid := startStream(t, e, ctx, req)

			var subs []*connect.ServerStreamForClient[pb.ConnectResponse]
			for _, sel := range []*pb.ProcessSelector{pidSel(pid), tagSel("echoer")} {
				s, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: sel}))
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				ev, err := next(s)
				if err != nil || ev.GetStart().GetPid() != pid {
					t.Fatalf("connect %v: first event %v, %v; want start{%d}", sel, ev, err, pid)
				}
				subs = append(subs, s)
			}
			if _, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
				Process: pidSel(pid),
				Input:   &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("hello\n")}},
			})); err != nil {
				t.Fatal(err)
			}
			// Wait for the echo before closing, so that the subscribers are
			// known to receive it.
			ev, err := next(owner)
			if err != nil || string(ev.GetData().GetStdout()) != "hello\n" {
				t.Fatalf("owner got %v, %v; want hello", ev, err)
			}
			if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: tagSel("echoer")})); err != nil {
				t.Fatal(err)
			}
			if r := collectRest(t, owner); r.end.GetExitCode() != 0 || r.stdout != "" {
				t.Errorf("owner rest: %q end %v", r.stdout, r.end)
			}
			for i, s := range subs {
				r := collectRest(t, s)
				if r.stdout != "hello\n" || r.end.GetExitCode() != 0 || !r.end.GetExited() {
					t.Errorf("subscriber %d got %q end %v err %v", i, r.stdout, r.end, r.err)
				}
			}
		})
	}
}

func TestNoStdin(t *testing.T) {
	e := defaultEnv(t)
	// cat reads EOF at once when stdin is not requested.
	for _, stdin := range []*bool{nil, proto.Bool(false)} {
		req := cmd("cat")
		req.Stdin = stdin
		if r := run(t, e, req); r.end.GetExitCode() != 0 || r.stdout != "" {
			t.Errorf("stdin %v: got %q end %v", stdin, r.stdout, r.end)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, pid := startStream(t, e, ctx, cmd("sleep", "5"))
	_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
		Process: pidSel(pid),
		Input:   &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}},
	}))
	if got := connect.CodeOf(err); got != connect.CodeFailedPrecondition {
		t.Errorf("send input without stdin: got %v, want failed_precondition", err)
	}
}

func TestStreamInput(t *testing.T) {
	for _, tr := range []transport{transports[0], transports[3]} {
		t.Run(tr.name, func(t *testing.T) {
			e := newEnv(t, tr, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req := cmd("cat")
			req.Stdin = proto.Bool(true)
			s, pid := startStream(t, e, ctx, req)

			in := e.client.StreamInput(ctx)
			msgs := []*pb.StreamInputRequest{
				{Event: &pb.StreamInputRequest_Start{Start: &pb.StreamInputRequest_StartEvent{Process: pidSel(pid)}}},
				{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("ab")}}}}},
				{Event: &pb.StreamInputRequest_Keepalive{Keepalive: &pb.StreamInputRequest_KeepAlive{}}},
				{Event: &pb.StreamInputRequest_Data{Data: &pb.StreamInputRequest_DataEvent{Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("c\n")}}}}},
			}
			for _, m := range msgs {
				if err := in.Send(m); err != nil {
					t.Fatalf("send: %v", err)
				}
			}
			if _, err := in.CloseAndReceive(); err != nil {
				t.Fatalf("close input stream: %v", err)
			}
			if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); err != nil {
				t.Fatal(err)
			}
			if r := collectRest(t, s); r.stdout != "abc\n" || r.end.GetExitCode() != 0 {
				t.Errorf("got %q end %v", r.stdout, r.end)
			}

			// A stream that does not start with a selector is refused.
			bad := e.client.StreamInput(ctx)
			_ = bad.Send(msgs[1])
			if _, err := bad.CloseAndReceive(); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("stream without start: got %v, want invalid_argument", err)
			}
		})
	}
}

func TestListAndRemoval(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := cmd("sleep", "30")
	req.Tag = strp("sleeper")
	req.Process.Cwd = strp("/tmp")
	s, pid := startStream(t, e, ctx, req)

	list, err := e.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var found *pb.ProcessInfo
	for _, p := range list.Msg.GetProcesses() {
		if p.GetPid() == pid {
			found = p
		}
	}
	if found == nil || found.GetTag() != "sleeper" || found.GetConfig().GetCmd() != "sleep" ||
		strings.Join(found.GetConfig().GetArgs(), " ") != "30" || found.GetConfig().GetCwd() != "/tmp" {
		t.Fatalf("list: got %v, want pid %d tag sleeper sleep 30 in /tmp", list.Msg, pid)
	}

	if _, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	collectRest(t, s)
	list, err = e.client.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Msg.GetProcesses()); n != 0 {
		t.Errorf("after end: list has %d processes, want 0", n)
	}
}

func TestSignals(t *testing.T) {
	tests := []struct {
		sig  pb.Signal
		want *pb.ProcessEvent_EndEvent
	}{
		{pb.Signal_SIGNAL_SIGKILL, &pb.ProcessEvent_EndEvent{ExitCode: -1, Exited: false, Status: "signal: killed", Error: strp("signal: killed")}},
		{pb.Signal_SIGNAL_SIGTERM, &pb.ProcessEvent_EndEvent{ExitCode: -1, Exited: false, Status: "signal: terminated", Error: strp("signal: terminated")}},
	}
	for _, tr := range []transport{transports[0], transports[3]} {
		e := newEnv(t, tr, nil)
		for _, tt := range tests {
			t.Run(tr.name+"/"+tt.sig.String(), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				// The grandchild holds the output pipe: killing the group
				// must end the stream at once anyway.
				s, pid := startStream(t, e, ctx, cmd("/bin/sh", "-c", "sleep 30 & sleep 30; wait"))
				began := time.Now()
				if _, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: tt.sig})); err != nil {
					t.Fatal(err)
				}
				r := collectRest(t, s)
				if !proto.Equal(r.end, tt.want) {
					t.Errorf("got end %v, want %v", r.end, tt.want)
				}
				if d := time.Since(began); d > 3*time.Second {
					t.Errorf("end took %v", d)
				}
			})
		}
	}
}

func TestBackgroundChildDoesNotHoldEnd(t *testing.T) {
	e := defaultEnv(t)
	began := time.Now()
	r := run(t, e, sh("sleep 5 & echo started"))
	if r.stdout != "started\n" || r.end.GetExitCode() != 0 {
		t.Errorf("got %q end %v", r.stdout, r.end)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("run took %v: the background child held the stream", d)
	}
}

func TestPTY(t *testing.T) {
	for _, tr := range []transport{transports[0], transports[3]} {
		t.Run(tr.name, func(t *testing.T) {
			e := newEnv(t, tr, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req := sh("tty; stty size; echo err >&2; read x; echo got $x; stty size")
			req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}
			s, pid := startStream(t, e, ctx, req)

			var out strings.Builder
			readUntil := func(want string) {
				t.Helper()
				for !strings.Contains(out.String(), want) {
					ev, err := next(s)
					if err != nil {
						t.Fatalf("waiting for %q in %q: %v", want, out.String(), err)
					}
					if d := ev.GetData(); d != nil {
						if d.GetStdout() != nil || d.GetStderr() != nil {
							t.Errorf("pty process sent %v, want pty data only", d)
						}
						out.Write(d.GetPty())
					}
				}
			}
			readUntil("30 100")
			readUntil("err") // stderr goes to the terminal too
			if !strings.Contains(out.String(), "/dev/pts/") {
				t.Errorf("tty printed %q, want /dev/pts/N", out.String())
			}
			if _, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{
				Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 120, Rows: 40}},
			})); err != nil {
				t.Fatal(err)
			}
			if _, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{
				Process: pidSel(pid), Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("line\n")}},
			})); err != nil {
				t.Fatal(err)
			}
			r := collectRest(t, s)
			rest := out.String() + r.pty
			if !strings.Contains(rest, "got line") || !strings.Contains(rest, "40 120") || r.end.GetExitCode() != 0 {
				t.Errorf("got %q end %v, want the echo, the new size and exit 0", rest, r.end)
			}
		})
	}
}

func TestPTYKillAndResizeErrors(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := cmd("/bin/bash", "-i", "-l")
	req.Process.Envs = map[string]string{"TERM": "xterm-256color"}
	req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	s, pid := startStream(t, e, ctx, req)
	if _, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(pid), Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	if r := collectRest(t, s); r.end.GetStatus() != "signal: killed" {
		t.Errorf("got end %v, want signal: killed", r.end)
	}

	_, pid = startStream(t, e, ctx, cmd("sleep", "5"))
	_, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(pid), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 1, Rows: 1}}}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("resize without pty: got %v, want failed_precondition", err)
	}
}

func TestKeepalive(t *testing.T) {
	e := defaultEnv(t, WithKeepalive(50*time.Millisecond))
	r := run(t, e, cmd("sleep", "0.4"))
	if r.keepalives < 3 || r.end.GetExitCode() != 0 {
		t.Errorf("got %d keepalives, end %v; want at least 3", r.keepalives, r.end)
	}
}

// envelope frames a Connect streaming message.
func envelope(flags byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// rawStream posts a Connect streaming request by hand and returns the
// messages and the end-of-stream JSON.
func rawStream(t *testing.T, e *env, procedure string, hdr http.Header, body []byte) (msgs []json.RawMessage, end map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+procedure, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/connect+json")
	req.Header.Set("Connect-Protocol-Version", "1")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for {
		var head [5]byte
		if _, err := io.ReadFull(resp.Body, head[:]); err != nil {
			t.Fatalf("stream ended without end-of-stream envelope: %v", err)
		}
		payload := make([]byte, binary.BigEndian.Uint32(head[1:]))
		if _, err := io.ReadFull(resp.Body, payload); err != nil {
			t.Fatal(err)
		}
		if head[0]&2 != 0 {
			if err := json.Unmarshal(payload, &end); err != nil {
				t.Fatalf("end-of-stream %q: %v", payload, err)
			}
			return msgs, end
		}
		msgs = append(msgs, payload)
	}
}

func endCode(end map[string]any) string {
	e, _ := end["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// The stream's deadline (Connect-Timeout-Ms) ends the stream, not the process.
func TestDeadlineEndsStreamOnly(t *testing.T) {
	e := defaultEnv(t)
	body := envelope(0, []byte(`{"process":{"cmd":"/bin/sh","args":["-c","sleep 1.5; echo done"]},"tag":"deadline"}`))
	began := time.Now()
	msgs, end := rawStream(t, e, processconnect.ProcessStartProcedure, http.Header{"Connect-Timeout-Ms": {"300"}}, body)
	if d := time.Since(began); d > time.Second {
		t.Errorf("stream lasted %v past its 300 ms deadline", d)
	}
	if len(msgs) == 0 || !strings.Contains(string(msgs[0]), `"start"`) {
		t.Errorf("first message %s, want start", msgs)
	}
	if got := endCode(end); got != "deadline_exceeded" {
		t.Errorf("end-of-stream %v, want deadline_exceeded", end)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: tagSel("deadline")}))
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s); r.stdout != "done\n" || r.end.GetExitCode() != 0 {
		t.Errorf("reconnect got %q end %v err %v, want the process to finish", r.stdout, r.end, r.err)
	}
}

func TestClientDisconnectKeepsProcess(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	req := sh("sleep 0.5; echo done")
	req.Tag = strp("bg")
	startStream(t, e, ctx, req)
	cancel()
	time.Sleep(100 * time.Millisecond)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	s, err := e.client.Connect(ctx2, connect.NewRequest(&pb.ConnectRequest{Process: tagSel("bg")}))
	if err != nil {
		t.Fatal(err)
	}
	if r := collect(t, s); r.stdout != "done\n" {
		t.Errorf("got %q end %v err %v, want the process to survive its stream", r.stdout, r.end, r.err)
	}
}

func TestBadFrames(t *testing.T) {
	e := defaultEnv(t)
	t.Run("streams", func(t *testing.T) {
		tests := []struct {
			name string
			body []byte
		}{
			{"truncated envelope", envelope(0, []byte(`{"process":{"cmd":"true"}}`))[:12]},
			{"short header", []byte{0, 0}},
			{"bad json", envelope(0, []byte(`{"process":`))},
			{"wrong type", envelope(0, []byte(`{"process":{"cmd":7}}`))},
			{"empty", nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				msgs, end := rawStream(t, e, processconnect.ProcessStartProcedure, nil, tt.body)
				if len(msgs) != 0 || endCode(end) != "invalid_argument" {
					t.Errorf("got %d messages, end %v; want invalid_argument", len(msgs), end)
				}
			})
		}
	})
	t.Run("unary", func(t *testing.T) {
		tests := []struct {
			name, contentType string
			body              []byte
		}{
			{"bad json", "application/json", []byte(`{"process":`)},
			{"bad proto", "application/proto", []byte{0x0a, 0xff, 0xff}},
			{"unknown field type", "application/json", []byte(`{"process":{"pid":"x"}}`)},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				resp, err := e.http.Post(e.url+processconnect.ProcessSendInputProcedure, tt.contentType, bytes.NewReader(tt.body))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var body struct{ Code string }
				if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" {
					t.Errorf("got %d %q, want 400 invalid_argument", resp.StatusCode, body.Code)
				}
			})
		}
	})
}

func TestErrors(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	startCode := func(req *pb.StartRequest) error {
		s, err := e.client.Start(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		defer s.Close()
		for s.Receive() {
			return fmt.Errorf("got event %v", s.Msg())
		}
		return s.Err()
	}
	input := &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("x")}}
	tests := []struct {
		name string
		call func() error
		want connect.Code
	}{
		{"start without process", func() error { return startCode(&pb.StartRequest{}) }, connect.CodeInvalidArgument},
		{"start with empty cmd", func() error { return startCode(cmd("")) }, connect.CodeInvalidArgument},
		{"start unknown binary", func() error { return startCode(cmd("no-such-binary-xyz")) }, connect.CodeInvalidArgument},
		{"start unknown path", func() error { return startCode(cmd("/no/such/binary")) }, connect.CodeInvalidArgument},
		{"start in missing cwd", func() error {
			req := cmd("true")
			req.Process.Cwd = strp("/no/such/dir")
			return startCode(req)
		}, connect.CodeInvalidArgument},
		{"connect unknown pid", func() error {
			s, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: pidSel(1 << 30)}))
			if err != nil {
				return err
			}
			s.Receive()
			return s.Err()
		}, connect.CodeNotFound},
		{"connect without selector", func() error {
			s, err := e.client.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{}))
			if err != nil {
				return err
			}
			s.Receive()
			return s.Err()
		}, connect.CodeInvalidArgument},
		{"send input unknown pid", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: pidSel(1 << 30), Input: input}))
			return err
		}, connect.CodeNotFound},
		{"send input unknown tag", func() error {
			_, err := e.client.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: tagSel("nope"), Input: input}))
			return err
		}, connect.CodeNotFound},
		{"signal unknown pid", func() error {
			_, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(1 << 30), Signal: pb.Signal_SIGNAL_SIGKILL}))
			return err
		}, connect.CodeNotFound},
		{"signal unspecified", func() error {
			_, err := e.client.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{Process: pidSel(1)}))
			return err
		}, connect.CodeInvalidArgument},
		{"close stdin unknown pid", func() error {
			_, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(1 << 30)}))
			return err
		}, connect.CodeNotFound},
		{"update unknown pid", func() error {
			_, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(1 << 30), Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 1, Rows: 1}}}))
			return err
		}, connect.CodeNotFound},
		{"update without size", func() error {
			_, err := e.client.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: pidSel(1)}))
			return err
		}, connect.CodeInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := connect.CodeOf(tt.call()); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCloseKillsProcesses(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _ := startStream(t, e, ctx, cmd("sleep", "30"))
	if err := e.svc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if r := collectRest(t, s); r.end.GetStatus() != "signal: killed" {
		t.Errorf("got end %v, want signal: killed", r.end)
	}
	st, err := e.client.Start(ctx, connect.NewRequest(cmd("true")))
	if err == nil {
		st.Receive()
		err = st.Err()
	}
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("start after close: got %v, want unavailable", err)
	}
}

// A subscriber that does not read is dropped; the process is not blocked.
func TestSlowSubscriberIsDropped(t *testing.T) {
	p := &proc{subs: make(map[*subscriber]struct{}), ended: make(chan struct{})}
	slow := p.subscribe(false)
	fast := p.subscribe(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < subQueue+10; i++ {
			p.publish(&pb.ProcessEvent{})
			if i < subQueue+5 {
				<-fast.ch
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publish blocked on a slow subscriber")
	}
	select {
	case <-slow.kicked:
	default:
		t.Error("slow subscriber was not dropped")
	}
	select {
	case <-fast.kicked:
		t.Error("reading subscriber was dropped")
	default:
	}

	// A blocking subscriber holds the publisher only until it leaves.
	owner := p.subscribe(true)
	p.leave(fast)
	for range subQueue {
		p.publish(&pb.ProcessEvent{})
	}
	released := make(chan struct{})
	go func() { p.publish(&pb.ProcessEvent{}); close(released) }()
	select {
	case <-released:
		t.Fatal("publish did not wait for the blocking subscriber")
	case <-time.After(50 * time.Millisecond):
	}
	p.leave(owner)
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("publish still blocked after the subscriber left")
	}
}

func TestPTYBackgroundChildDoesNotHoldEnd(t *testing.T) {
	e := defaultEnv(t)
	// The child ignores SIGHUP, as under nohup: it outlives its shell and
	// keeps the terminal open, and only envd's drain deadline ends the run.
	req := sh("trap '' HUP; sleep 5 & echo hi")
	req.Pty = &pb.PTY{Size: &pb.PTY_Size{Cols: 80, Rows: 24}}
	began := time.Now()
	r := run(t, e, req)
	if !strings.Contains(r.pty, "hi") || r.end.GetExitCode() != 0 {
		t.Errorf("got %q end %v", r.pty, r.end)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("run took %v: the background child held the terminal", d)
	}
}

// Input to a process that does not read gives up with the request instead
// of pinning stdin forever.
func TestSendInputToStalledProcess(t *testing.T) {
	e := defaultEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := cmd("sleep", "30")
	req.Stdin = proto.Bool(true)
	_, pid := startStream(t, e, ctx, req)

	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	_, err := e.client.SendInput(short, connect.NewRequest(&pb.SendInputRequest{
		Process: pidSel(pid),
		Input:   &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: make([]byte, 1<<20)}},
	}))
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Errorf("got %v, want deadline_exceeded", err)
	}
	began := time.Now()
	if _, err := e.client.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: pidSel(pid)})); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("close stdin waited %v for the stalled write", d)
	}
}

// TestDefaultWorkdir: a template's WORKDIR (/init defaultWorkdir) is where a
// process starts unless it names a directory.
func TestDefaultWorkdir(t *testing.T) {
	sess := &session.Session{}
	sess.SetDefaultWorkdir("/tmp")
	e := newEnv(t, transports[0], sess)
	if got := run(t, e, sh("pwd")).stdout; got != "/tmp\n" {
		t.Errorf("no cwd: got %q, want /tmp", got)
	}
	req := sh("pwd")
	req.Process.Cwd = strp("/")
	if got := run(t, e, req).stdout; got != "/\n" {
		t.Errorf("cwd /: got %q, want /", got)
	}
}
