package api

import (
	"context"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
)

// fakeNode is an in-memory orchestrator: the boundary of this package.
type fakeNode struct {
	orchestratorv1connect.UnimplementedOrchestratorServiceHandler
	token string

	mu        sync.Mutex
	sandboxes map[string]*orchestratorv1.Sandbox
	calls     []string // "Method sandboxID"
	badAuth   int
	failNext  map[string]error // method -> error for the next call
	afterList func()           // runs after List built its answer, before it returns
}

func newFakeNode(token string) *fakeNode {
	return &fakeNode{token: token, sandboxes: map[string]*orchestratorv1.Sandbox{}, failNext: map[string]error{}}
}

func (f *fakeNode) check(h interface{ Get(string) string }, method, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, method+" "+id)
	if h.Get("Authorization") != "Bearer "+f.token {
		f.badAuth++
		return connect.NewError(connect.CodeUnauthenticated, nil)
	}
	if err := f.failNext[method]; err != nil {
		delete(f.failNext, method)
		return err
	}
	return nil
}

func (f *fakeNode) state(id string) orchestratorv1.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sb, ok := f.sandboxes[id]; ok {
		return sb.GetState()
	}
	return orchestratorv1.State_STATE_UNSPECIFIED
}

func (f *fakeNode) put(sb *orchestratorv1.Sandbox) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes[sb.GetSandboxId()] = sb
}

func (f *fakeNode) drop(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sandboxes, id)
}

func (f *fakeNode) Create(_ context.Context, req *connect.Request[orchestratorv1.CreateRequest]) (*connect.Response[orchestratorv1.CreateResponse], error) {
	if err := f.check(req.Header(), "Create", req.Msg.GetSandboxId()); err != nil {
		return nil, err
	}
	sb := &orchestratorv1.Sandbox{
		SandboxId: req.Msg.GetSandboxId(), State: orchestratorv1.State_STATE_RUNNING, Runtime: "gvisor",
		StartedAt: timestamppb.Now(), Vcpus: req.Msg.GetVcpus(), MemoryMb: req.Msg.GetMemoryMb(),
		TemplateId: req.Msg.GetTemplate().GetTemplateId(), BuildId: req.Msg.GetTemplate().GetBuildId(),
	}
	f.put(sb)
	return connect.NewResponse(&orchestratorv1.CreateResponse{Sandbox: sb}), nil
}

func (f *fakeNode) List(_ context.Context, req *connect.Request[orchestratorv1.ListRequest]) (*connect.Response[orchestratorv1.ListResponse], error) {
	if err := f.check(req.Header(), "List", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	out := &orchestratorv1.ListResponse{}
	for _, sb := range f.sandboxes {
		// As a node does: running, paused (its snapshot dir) and dead.
		out.Sandboxes = append(out.Sandboxes, sb)
	}
	after := f.afterList
	f.mu.Unlock()
	if after != nil {
		after()
	}
	return connect.NewResponse(out), nil
}

func (f *fakeNode) Pause(_ context.Context, req *connect.Request[orchestratorv1.PauseRequest]) (*connect.Response[orchestratorv1.PauseResponse], error) {
	id := req.Msg.GetSandboxId()
	if err := f.check(req.Header(), "Pause", id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sandboxes[id]
	if !ok || sb.GetState() != orchestratorv1.State_STATE_RUNNING {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	sb.State = orchestratorv1.State_STATE_PAUSED
	sb.Snapshot = "snap://" + id
	return connect.NewResponse(&orchestratorv1.PauseResponse{Sandbox: sb}), nil
}

func (f *fakeNode) Resume(_ context.Context, req *connect.Request[orchestratorv1.ResumeRequest]) (*connect.Response[orchestratorv1.ResumeResponse], error) {
	id := req.Msg.GetSandboxId()
	if err := f.check(req.Header(), "Resume", id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	sb, ok := f.sandboxes[id]
	if !ok || sb.GetState() != orchestratorv1.State_STATE_PAUSED || req.Msg.GetSnapshot() != "snap://"+id {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	sb.State = orchestratorv1.State_STATE_RUNNING
	return connect.NewResponse(&orchestratorv1.ResumeResponse{Sandbox: sb}), nil
}

func (f *fakeNode) Kill(_ context.Context, req *connect.Request[orchestratorv1.KillRequest]) (*connect.Response[orchestratorv1.KillResponse], error) {
	id := req.Msg.GetSandboxId()
	if err := f.check(req.Header(), "Kill", id); err != nil {
		return nil, err
	}
	f.drop(id)
	return connect.NewResponse(&orchestratorv1.KillResponse{}), nil
}

func (f *fakeNode) Metrics(_ context.Context, req *connect.Request[orchestratorv1.MetricsRequest]) (*connect.Response[orchestratorv1.MetricsResponse], error) {
	id := req.Msg.GetSandboxId()
	if err := f.check(req.Header(), "Metrics", id); err != nil {
		return nil, err
	}
	if f.state(id) != orchestratorv1.State_STATE_RUNNING {
		return nil, connect.NewError(connect.CodeNotFound, nil)
	}
	return connect.NewResponse(&orchestratorv1.MetricsResponse{
		Timestamp: timestamppb.New(time.Now()), CpuCount: 2, CpuUsedPct: 12.5,
		MemUsed: 100 << 20, MemTotal: 512 << 20, DiskUsed: 1 << 30, DiskTotal: 4 << 30,
	}), nil
}

func (f *fakeNode) Logs(_ context.Context, req *connect.Request[orchestratorv1.LogsRequest], stream *connect.ServerStream[orchestratorv1.LogsResponse]) error {
	id := req.Msg.GetSandboxId()
	if err := f.check(req.Header(), "Logs", id); err != nil {
		return err
	}
	return stream.Send(&orchestratorv1.LogsResponse{Lines: []string{
		"2025-01-02T03:04:05Z booting", "envd ready",
		`2025-01-02T03:04:06Z {"time":"2025-01-02T03:04:06.5Z","level":"WARN","msg":"disk low","logger":"processSvc","pid":7}`,
		`2025-01-02T03:04:07Z time=2025-01-02T03:04:07Z level=ERROR msg="an older envd"`,
	}})
}
