package orchestrator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	orchv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/orchestrator"
	"github.com/cocoon-run/cocoon/internal/runtime"
)

// cocoonBin builds bin/cocoon once per test binary.
func (e *env) cocoonBin(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(e.tmpDir, "cocoon")
	if exists(bin) {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := goBuild(ctx, bin, "./cmd/cocoon"); err != nil {
		tb.Fatal(err)
	}
	return bin
}

// orchProc is a `cocoon orchestrator` process.
type orchProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	client orchestratorv1connect.OrchestratorServiceClient
}

// startOrchestrator runs `cocoon orchestrator` on data dir d and waits
// until its RPC answers.
func (e *env) startOrchestrator(tb testing.TB, d, rt string) *orchProc {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.OpenFile(filepath.Join(d, "orchestrator.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(e.cocoonBin(tb), "orchestrator", "--data-dir", d,
		"--net-prefix", crashNetPrefix, "--net-pool", crashNetPool, "--node-listen", addr,
		"--runtime", rt, "--accel", "tcg", "--install-runsc=false", "--node-id", "otest-crash")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &orchProc{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	tb.Cleanup(func() { p.kill(syscall.SIGKILL) })
	deadline := time.Now().Add(3 * time.Minute)
	for {
		select {
		case <-p.exited:
			tb.Fatalf("cocoon orchestrator exited at start: %s", runtime.TailLog(filepath.Join(d, "orchestrator.log"), 20))
		default:
		}
		if tok, err := os.ReadFile(filepath.Join(d, "node.token")); err == nil && p.client == nil {
			p.client = nodeauth.NewClient(http.DefaultClient, "http://"+addr, strings.TrimSpace(string(tok)))
		}
		if p.client != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := p.client.Node(ctx, connect.NewRequest(&orchv1.NodeRequest{}))
			cancel()
			if err == nil {
				return p
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("cocoon orchestrator did not answer: %s", runtime.TailLog(filepath.Join(d, "orchestrator.log"), 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitWarm waits until the orchestrator's warm pool has a sandbox ready.
func (p *orchProc) waitWarm(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		n, err := p.client.Node(ctx, connect.NewRequest(&orchv1.NodeRequest{}))
		cancel()
		if err == nil && n.Msg.Warm > 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the warm pool stayed empty (last error %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill signals the process and waits for it to exit.
func (p *orchProc) kill(sig syscall.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// crashDataDir makes a fresh data dir <test data>/otest/<name> for a
// `cocoon orchestrator` of runtime rt: the suite's base template as its
// current one and, for gVisor, the suite's runsc.
func (e *env) crashDataDir(tb testing.TB, name, rt string) string {
	tb.Helper()
	d := filepath.Join(e.dataDir, "otest", name)
	if err := os.RemoveAll(d); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d, "templates", "base"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "templates", "base", "current"), []byte(e.tmpl.Dir+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	if rt == gvisor.Name {
		if err := os.MkdirAll(filepath.Join(d, "bin"), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Symlink(e.runsc, filepath.Join(d, "bin", "runsc")); err != nil {
			tb.Fatal(err)
		}
		if b, err := os.ReadFile(e.runsc + ".platform"); err == nil {
			_ = os.WriteFile(filepath.Join(d, "bin", "runsc.platform"), b, 0o644)
		}
	}
	return d
}

// TestCrashRecovery runs the orchestrator as its own process, kills it
// with SIGKILL and checks that the next one re-adopts the sandboxes its
// records name and removes the ones no record owns, and that in the end
// nothing is left: no runtime process, namespace or sandbox file.
func TestCrashRecovery(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		ctx := context.Background()
		d := e.crashDataDir(t, "crash-"+rt, rt)

		// 1. Two sandboxes through the RPC, each taken from the warm pool
		// (which the orchestrator fills at start).
		p := e.startOrchestrator(t, d, rt)
		var sbs []*orchv1.Sandbox
		for range 2 {
			p.waitWarm(t)
			resp, err := p.client.Create(ctx, connect.NewRequest(&orchv1.CreateRequest{
				SandboxId: newID("oc"), Runtime: rt, EnvdAccessToken: testToken,
				Template: &orchv1.TemplateRef{Dir: e.tmpl.Dir, TemplateId: "base", BuildId: e.tmpl.ID},
			}))
			if err != nil {
				t.Fatalf("create through the RPC: %v", err)
			}
			sbs = append(sbs, resp.Msg.Sandbox)
			mustRun(t, resp.Msg.Sandbox.Address, "echo before-crash > /home/user/mark")
		}
		owned, unowned := sbs[0], sbs[1]

		// 2. kill -9; the next orchestrator re-adopts both.
		p.kill(syscall.SIGKILL)
		p = e.startOrchestrator(t, d, rt)
		list, err := p.client.List(ctx, connect.NewRequest(&orchv1.ListRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(list.Msg.Sandboxes); got != 2 {
			t.Errorf("List after restart: %d sandboxes, want 2", got)
		}
		for _, sb := range sbs {
			got, err := p.client.Get(ctx, connect.NewRequest(&orchv1.GetRequest{SandboxId: sb.SandboxId}))
			if err != nil {
				t.Fatalf("Get %s after restart: %v", sb.SandboxId, err)
			}
			if got.Msg.Sandbox.State != orchv1.State_STATE_RUNNING {
				t.Errorf("%s after restart: %s, want running", sb.SandboxId, got.Msg.Sandbox.State)
			}
			if out := mustRun(t, sb.Address, "cat /home/user/mark"); out != "before-crash" {
				t.Errorf("%s after restart reads %q", sb.SandboxId, out)
			}
		}

		// 3. kill -9 again and forget one sandbox: the next start removes it.
		p.kill(syscall.SIGKILL)
		rec := filepath.Join(d, "node", "sandboxes", unowned.SandboxId+".json")
		var record orchestrator.Sandbox
		b, err := os.ReadFile(rec)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &record); err != nil || record.Slot == nil {
			t.Fatalf("record of %s: %v (slot %v)", unowned.SandboxId, err, record.Slot)
		}
		if rt == gvisor.Name && record.RuntimeID == "" {
			t.Errorf("record of %s has no runtimeID: the sandbox did not come from the warm pool", unowned.SandboxId)
		}
		// A pooled gVisor container keeps the name it was restored under.
		name := unowned.SandboxId
		if record.RuntimeID != "" {
			name = record.RuntimeID
		}
		unownedDir := filepath.Join(d, "sandboxes", name)
		if procs := runtimeProcs(unownedDir); len(procs) == 0 {
			t.Fatalf("no runtime process of %s before the restart", unowned.SandboxId)
		}
		// The restarted orchestrator may build a new slot under the same
		// name (its warm pool takes the lowest free index), and namespace
		// inode numbers are reused: mark this namespace with a veth pair
		// and the veth by its ifindex, and check those are gone.
		if out, err := exec.Command("ip", "-n", record.Slot.Netns, "link", "add", "leakmark", "type", "veth", "peer", "name", "leakmark2").CombinedOutput(); err != nil {
			t.Fatalf("mark namespace %s: %v: %s", record.Slot.Netns, err, out)
		}
		vethIndex := 0
		if ifc, err := net.InterfaceByName(record.Slot.VethHost); err == nil {
			vethIndex = ifc.Index
		}
		if err := os.Remove(rec); err != nil {
			t.Fatal(err)
		}
		p = e.startOrchestrator(t, d, rt)
		if left := waitGone(unownedDir, 5*time.Second); len(left) != 0 {
			t.Errorf("runtime processes %v of the unowned sandbox survived the restart", left)
		}
		// Directories go in the startup sweep, in the background.
		for deadline := time.Now().Add(30 * time.Second); exists(unownedDir); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("the unowned sandbox's directory %s survived the restart's sweep", unownedDir)
				break
			}
		}
		if exists(record.Slot.NetnsPath) {
			if err := exec.Command("ip", "-n", record.Slot.Netns, "link", "show", "leakmark").Run(); err == nil {
				t.Errorf("the unowned sandbox's namespace %s survived the restart", record.Slot.Netns)
			}
		}
		if ifc, err := net.InterfaceByName(record.Slot.VethHost); err == nil && ifc.Index == vethIndex {
			t.Errorf("the unowned sandbox's host veth %s survived the restart", record.Slot.VethHost)
		}
		if _, err := p.client.Get(ctx, connect.NewRequest(&orchv1.GetRequest{SandboxId: unowned.SandboxId})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("Get of the unowned sandbox: %v, want not found", err)
		}
		if out := mustRun(t, owned.Address, "cat /home/user/mark && uptime"); !strings.HasPrefix(out, "before-crash") {
			t.Errorf("the owned sandbox after the second restart reads %q", out)
		}

		// 4. Kill everything, stop the orchestrator: nothing is left.
		for _, sb := range sbs {
			if _, err := p.client.Kill(ctx, connect.NewRequest(&orchv1.KillRequest{SandboxId: sb.SandboxId, DeleteSnapshot: true})); err != nil {
				t.Errorf("kill %s: %v", sb.SandboxId, err)
			}
		}
		p.kill(syscall.SIGTERM)
		if left := procsMentioning(d); len(left) != 0 {
			var cmds []string
			for _, pid := range left {
				c, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
				cmds = append(cmds, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(c), "\x00", " ")))
			}
			t.Errorf("processes mentioning %s are left: %s", d, strings.Join(cmds, "\n"))
		}
		if ns := netnsWithPrefix(crashNetPrefix); len(ns) != 0 {
			t.Errorf("namespaces left: %v", ns)
		}
		ents, err := os.ReadDir(filepath.Join(d, "sandboxes"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if len(ents) != 0 {
			t.Errorf("files left under %s/sandboxes: %d entries", d, len(ents))
		}
		if err := os.RemoveAll(d); err != nil {
			t.Error(err)
		}
	})
}

// TestRPCAuth: the node RPC answers only calls that carry its token.
func TestRPCAuth(t *testing.T) {
	e := need(t)
	o := e.newOrchestrator(t)
	if _, _, err := orchestrator.NewHandler(o, ""); err == nil {
		t.Error("NewHandler with an empty token succeeded, want an error")
	}
	path, h, err := orchestrator.NewHandler(o, "right-token")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	tests := []struct {
		name   string
		client orchestratorv1connect.OrchestratorServiceClient
		want   connect.Code
	}{
		{"no token", orchestratorv1connect.NewOrchestratorServiceClient(srv.Client(), srv.URL), connect.CodeUnauthenticated},
		{"wrong token", nodeauth.NewClient(srv.Client(), srv.URL, "wrong-token"), connect.CodeUnauthenticated},
		{"empty token", nodeauth.NewClient(srv.Client(), srv.URL, ""), connect.CodeUnauthenticated},
		{"prefix of the token", nodeauth.NewClient(srv.Client(), srv.URL, "right"), connect.CodeUnauthenticated},
		{"right token", nodeauth.NewClient(srv.Client(), srv.URL, "right-token"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, err := tt.client.Node(ctx, connect.NewRequest(&orchv1.NodeRequest{}))
			if got := connect.CodeOf(err); err != nil && got != tt.want || err == nil && tt.want != 0 {
				t.Errorf("Node: %v (code %v), want code %v", err, got, tt.want)
			}
			_, err = tt.client.Kill(ctx, connect.NewRequest(&orchv1.KillRequest{SandboxId: "nosuch"}))
			if got := connect.CodeOf(err); err != nil && got != tt.want || err == nil && tt.want != 0 {
				t.Errorf("Kill: %v (code %v), want code %v", err, got, tt.want)
			}
			// A streaming call goes through the handler-side check too.
			stream, err := tt.client.Logs(ctx, connect.NewRequest(&orchv1.LogsRequest{SandboxId: "nosuch"}))
			if err == nil {
				for stream.Receive() {
				}
				err = stream.Err()
				stream.Close()
			}
			if tt.want == connect.CodeUnauthenticated && connect.CodeOf(err) != tt.want {
				t.Errorf("Logs: %v, want code %v", err, tt.want)
			}
		})
	}
}

// TestCrashDuringPause: kill -9 of the orchestrator while it pauses a
// sandbox holding 100 MiB of files, then a restart: the sandbox is either
// paused (the save was whole: resuming it gives its files back) or still
// running (rolled back), never lost; and once it is killed nothing is left
// (no snapshot owned by nothing, no sandbox directory, no process).
func TestCrashDuringPause(t *testing.T) {
	e := need(t)
	e.each(t, func(t *testing.T, rt string) {
		ctx := context.Background()
		d := e.crashDataDir(t, "pausecrash-"+rt, rt)
		p := e.startOrchestrator(t, d, rt)
		p.waitWarm(t)
		id := newID("op")
		tmpl := &orchv1.TemplateRef{Dir: e.tmpl.Dir, TemplateId: "base", BuildId: e.tmpl.ID}
		resp, err := p.client.Create(ctx, connect.NewRequest(&orchv1.CreateRequest{
			SandboxId: id, Runtime: rt, EnvdAccessToken: testToken, Template: tmpl,
		}))
		if err != nil {
			t.Fatal(err)
		}
		sum := mustRun(t, resp.Msg.Sandbox.Address,
			"head -c 100M /dev/urandom > /home/user/big && echo kept > /home/user/mark && sha256sum /home/user/big | cut -d' ' -f1")

		go func() { _, _ = p.client.Pause(ctx, connect.NewRequest(&orchv1.PauseRequest{SandboxId: id})) }()
		// Kill once the save is under way: gVisor's checkpoint takes its
		// lock when it starts; QEMU migrates as soon as the intent is down.
		record := filepath.Join(d, "node", "sandboxes", id+".json")
		started := func() bool {
			if rt == gvisor.Name {
				return exists(filepath.Join(d, "snapshots", id, "state", "checkpoint.lock"))
			}
			b, err := os.ReadFile(record)
			return err == nil && strings.Contains(string(b), `"pausing": true`)
		}
		deadline := time.Now().Add(time.Minute)
		for !started() {
			if time.Now().After(deadline) {
				t.Fatal("the pause did not start within a minute")
			}
			time.Sleep(5 * time.Millisecond)
		}
		p.kill(syscall.SIGKILL)

		t0 := time.Now()
		p = e.startOrchestrator(t, d, rt)
		t.Logf("%s: orchestrator answering %v after the restart", rt, time.Since(t0).Round(time.Millisecond))
		got, err := p.client.Get(ctx, connect.NewRequest(&orchv1.GetRequest{SandboxId: id}))
		if err != nil {
			t.Fatalf("the sandbox is lost after a crash during its pause: %v (log: %s)", err, runtime.TailLog(filepath.Join(d, "orchestrator.log"), 20))
		}
		addr := got.Msg.Sandbox.Address
		switch st := got.Msg.Sandbox.State; st {
		case orchv1.State_STATE_PAUSED:
			t.Logf("%s: the interrupted pause was completed", rt)
			if exists(record) {
				t.Errorf("a paused sandbox still has its running record %s", record)
			}
			res, err := p.client.Resume(ctx, connect.NewRequest(&orchv1.ResumeRequest{
				SandboxId: id, Runtime: rt, EnvdAccessToken: testToken, Template: tmpl,
				Snapshot: got.Msg.Sandbox.Snapshot,
			}))
			if err != nil {
				t.Fatalf("resume after the completed pause: %v", err)
			}
			addr = res.Msg.Sandbox.Address
		case orchv1.State_STATE_RUNNING:
			t.Logf("%s: the interrupted pause was rolled back", rt)
			if exists(filepath.Join(d, "snapshots", id)) {
				t.Errorf("a rolled-back pause left its snapshot dir")
			}
		default:
			t.Fatalf("after a crash during its pause the sandbox is %s (%s), want paused or running", st, got.Msg.Sandbox.Detail)
		}
		if out := mustRun(t, addr, "cat /home/user/mark && sha256sum /home/user/big | cut -d' ' -f1"); out != "kept\n"+sum {
			t.Errorf("files after the restart: %q, want %q", out, "kept\n"+sum)
		}

		if _, err := p.client.Kill(ctx, connect.NewRequest(&orchv1.KillRequest{SandboxId: id, DeleteSnapshot: true})); err != nil {
			t.Fatal(err)
		}
		p.kill(syscall.SIGTERM)
		for _, sub := range []string{"sandboxes", "snapshots", filepath.Join("node", "sandboxes")} {
			ents, _ := os.ReadDir(filepath.Join(d, sub))
			if len(ents) != 0 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("left under %s: %v", sub, names)
			}
		}
		if left := procsMentioning(d); len(left) != 0 {
			t.Errorf("processes mentioning %s are left: %v", d, left)
		}
		if err := os.RemoveAll(d); err != nil {
			t.Error(err)
		}
	})
}
