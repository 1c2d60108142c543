package orchestrator

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1/orchestratorv1connect"
	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/template/oci"
)

// Service exposes an Orchestrator as the node RPC.
type Service struct {
	o *Orchestrator
}

var _ orchestratorv1connect.OrchestratorServiceHandler = (*Service)(nil)

// NewHandler returns the node RPC handler and its mount path. Every call
// must carry `Authorization: Bearer <token>`; an empty token is refused so
// that the RPC is never served unauthenticated by mistake.
func NewHandler(o *Orchestrator, token string) (string, http.Handler, error) {
	if token == "" {
		return "", nil, errors.New("orchestrator rpc: empty node token")
	}
	path, h := orchestratorv1connect.NewOrchestratorServiceHandler(&Service{o: o},
		connect.WithInterceptors(nodeauth.Server(token)))
	return path, h, nil
}

func toProto(sb Sandbox) *orchv1.Sandbox {
	st := orchv1.State_STATE_UNSPECIFIED
	switch sb.State {
	case StateRunning:
		st = orchv1.State_STATE_RUNNING
	case StatePaused:
		st = orchv1.State_STATE_PAUSED
	case StateDead:
		st = orchv1.State_STATE_DEAD
	}
	return &orchv1.Sandbox{
		SandboxId:  sb.ID,
		State:      st,
		Runtime:    sb.Runtime,
		Address:    sb.Address,
		StartedAt:  timestamppb.New(sb.StartedAt),
		Detail:     sb.Detail,
		Snapshot:   sb.Snapshot,
		Vcpus:      uint32(sb.VCPUs),
		MemoryMb:   uint32(sb.MemoryMB),
		TemplateId: sb.TemplateID,
		BuildId:    sb.BuildID,
	}
}

// rpcError maps orchestrator errors to Connect codes.
func rpcError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, ErrState):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, os.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

func egressFrom(e *orchv1.Egress) network.Egress {
	if e == nil {
		return network.Egress{}
	}
	return network.Egress{Disabled: e.Disabled, AllowOut: e.AllowOut, DenyOut: e.DenyOut}
}

// startRequest is what CreateRequest and ResumeRequest have in common.
type startRequest interface {
	GetSandboxId() string
	GetTemplate() *orchv1.TemplateRef
	GetRuntime() string
	GetVcpus() uint32
	GetMemoryMb() uint32
	GetEnvVars() map[string]string
	GetEnvdAccessToken() string
	GetEgress() *orchv1.Egress
	GetHostname() string
}

// startParams resolves the request's template (fetching a custom template
// this node lacks, see ResolveTemplate).
func (s *Service) startParams(ctx context.Context, m startRequest) (CreateParams, error) {
	t := m.GetTemplate()
	if t.GetDir() == "" {
		return CreateParams{}, connect.NewError(connect.CodeInvalidArgument, errors.New("template dir is required"))
	}
	dir, err := s.o.ResolveTemplate(ctx, t.GetDir())
	if err != nil {
		return CreateParams{}, rpcError(err)
	}
	return CreateParams{
		ID: m.GetSandboxId(), TemplateDir: dir, TemplateID: t.GetTemplateId(), BuildID: t.GetBuildId(),
		Runtime: m.GetRuntime(), VCPUs: int(m.GetVcpus()), MemoryMB: int(m.GetMemoryMb()), EnvVars: m.GetEnvVars(),
		AccessToken: m.GetEnvdAccessToken(), Egress: egressFrom(m.GetEgress()), Hostname: m.GetHostname(),
	}, nil
}

func (s *Service) Create(ctx context.Context, req *connect.Request[orchv1.CreateRequest]) (*connect.Response[orchv1.CreateResponse], error) {
	p, err := s.startParams(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := s.o.Create(ctx, p)
	s.o.cfg.Metrics.Operation("create", s.runtimeOf(sb.Runtime, p.Runtime), p.TemplateID, start, err)
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&orchv1.CreateResponse{Sandbox: toProto(sb)}), nil
}

// runtimeOf is the runtime label of an operation: what the node ran, else
// what was asked, else the node's default.
func (s *Service) runtimeOf(ran, asked string) string {
	if ran != "" {
		return ran
	}
	if asked != "" {
		return asked
	}
	return s.o.cfg.Default
}

func (s *Service) Get(ctx context.Context, req *connect.Request[orchv1.GetRequest]) (*connect.Response[orchv1.GetResponse], error) {
	sb, err := s.o.Get(ctx, req.Msg.SandboxId)
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&orchv1.GetResponse{Sandbox: toProto(sb)}), nil
}

func (s *Service) List(ctx context.Context, _ *connect.Request[orchv1.ListRequest]) (*connect.Response[orchv1.ListResponse], error) {
	list := s.o.List(ctx)
	out := make([]*orchv1.Sandbox, 0, len(list))
	for _, sb := range list {
		out = append(out, toProto(sb))
	}
	return connect.NewResponse(&orchv1.ListResponse{Sandboxes: out}), nil
}

func (s *Service) Pause(ctx context.Context, req *connect.Request[orchv1.PauseRequest]) (*connect.Response[orchv1.PauseResponse], error) {
	start := time.Now()
	sb, err := s.o.Pause(ctx, req.Msg.SandboxId)
	s.o.cfg.Metrics.Operation("pause", sb.Runtime, sb.TemplateID, start, err)
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&orchv1.PauseResponse{Sandbox: toProto(sb)}), nil
}

func (s *Service) Resume(ctx context.Context, req *connect.Request[orchv1.ResumeRequest]) (*connect.Response[orchv1.ResumeResponse], error) {
	p, err := s.startParams(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	p.Snapshot = req.Msg.GetSnapshot()
	start := time.Now()
	sb, err := s.o.Resume(ctx, p)
	s.o.cfg.Metrics.Operation("resume", s.runtimeOf(sb.Runtime, p.Runtime), p.TemplateID, start, err)
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&orchv1.ResumeResponse{Sandbox: toProto(sb)}), nil
}

func (s *Service) Kill(ctx context.Context, req *connect.Request[orchv1.KillRequest]) (*connect.Response[orchv1.KillResponse], error) {
	start := time.Now()
	var rt, tpl string
	if sb, err := s.o.Get(ctx, req.Msg.SandboxId); err == nil {
		rt, tpl = sb.Runtime, sb.TemplateID
	}
	err := s.o.Kill(ctx, req.Msg.SandboxId, req.Msg.DeleteSnapshot)
	s.o.cfg.Metrics.Operation("kill", rt, tpl, start, err)
	if err != nil {
		return nil, rpcError(err)
	}
	return connect.NewResponse(&orchv1.KillResponse{}), nil
}

func (s *Service) Logs(ctx context.Context, req *connect.Request[orchv1.LogsRequest], stream *connect.ServerStream[orchv1.LogsResponse]) error {
	sb, err := s.o.Get(ctx, req.Msg.SandboxId)
	if err != nil {
		return rpcError(err)
	}
	if sb.Console == "" {
		return nil
	}
	f, err := os.Open(sb.Console)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // paused or gone: its console went with it
		}
		return rpcError(err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := stream.Send(&orchv1.LogsResponse{Lines: batch})
		batch = nil
		return err
	}
	for {
		line, err := r.ReadString('\n')
		if line != "" && strings.HasSuffix(line, "\n") {
			batch = append(batch, strings.TrimRight(line, "\r\n"))
			if len(batch) >= 256 {
				if err := flush(); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return rpcError(err)
		}
		if ferr := flush(); ferr != nil {
			return ferr
		}
		if !req.Msg.Follow {
			if line != "" {
				return stream.Send(&orchv1.LogsResponse{Lines: []string{line}})
			}
			return nil
		}
		// Follow: keep the partial line and wait for more.
		if line != "" {
			r = bufio.NewReader(io.MultiReader(strings.NewReader(line), f))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *Service) Metrics(ctx context.Context, req *connect.Request[orchv1.MetricsRequest]) (*connect.Response[orchv1.MetricsResponse], error) {
	m, err := s.o.Metrics(ctx, req.Msg.SandboxId)
	if err != nil {
		return nil, rpcError(err)
	}
	ts := time.Now()
	if m.Timestamp > 0 {
		ts = time.Unix(m.Timestamp, 0)
	}
	return connect.NewResponse(&orchv1.MetricsResponse{
		Timestamp: timestamppb.New(ts), CpuCount: m.CPUCount, CpuUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}), nil
}

func (s *Service) Node(ctx context.Context, _ *connect.Request[orchv1.NodeRequest]) (*connect.Response[orchv1.NodeResponse], error) {
	n := 0
	for _, sb := range s.o.List(ctx) {
		if sb.State == StateRunning {
			n++
		}
	}
	return connect.NewResponse(&orchv1.NodeResponse{
		NodeId: s.o.NodeID(), Runtimes: s.o.Runtimes(), DefaultRuntime: s.o.DefaultRuntime(),
		Sandboxes: uint32(n), Warm: uint32(s.o.WarmSize()), Accel: s.o.cfg.Accel, Reason: s.o.cfg.Reason,
	}), nil
}

func (s *Service) BuildTemplate(ctx context.Context, req *connect.Request[orchv1.BuildTemplateRequest], stream *connect.ServerStream[orchv1.BuildTemplateResponse]) error {
	m := req.Msg
	if m.Parent == nil || m.Parent.Dir == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("parent template dir is required"))
	}
	p := BuildParams{
		CacheKey: m.CacheKey, LayerKey: m.LayerKey, ParentDir: m.Parent.Dir,
		SandboxID: m.GetSandboxId(), ParentRootfs: m.GetParentRootfs(),
		StartCmd: m.StartCmd, ReadyCmd: m.ReadyCmd, Env: m.Env, Workdir: m.Workdir, User: m.User,
		ReadyTimeout: time.Duration(m.ReadyTimeoutS) * time.Second,
		VCPUs:        int(m.Vcpus), MemoryMB: int(m.MemoryMb), DiskMB: int(m.DiskMb),
	}
	if img := m.GetImage(); img != nil {
		p.Image = &oci.Ref{Image: img.Ref, Username: img.Username, Password: img.Password, Insecure: img.Insecure}
	}
	var sendErr error
	res, err := s.o.BuildTemplate(ctx, p, func(line string) {
		if sendErr == nil {
			sendErr = stream.Send(&orchv1.BuildTemplateResponse{Log: line})
		}
	})
	if err != nil {
		if errors.Is(err, oci.ErrUnknownImage) {
			return connect.NewError(connect.CodeNotFound, err)
		}
		return rpcError(err)
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&orchv1.BuildTemplateResponse{Dir: res.Dir, Runtimes: res.Runtimes, Cached: res.Cached})
}

// Watch streams the node's sandbox events (deaths) until the client goes.
func (s *Service) Watch(ctx context.Context, _ *connect.Request[orchv1.WatchRequest], stream *connect.ServerStream[orchv1.WatchResponse]) error {
	ch, stop := s.o.Subscribe()
	defer stop()
	// The headers go out now, so that the client knows it is subscribed.
	if err := stream.Send(&orchv1.WatchResponse{}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case sb := <-ch:
			if err := stream.Send(&orchv1.WatchResponse{Sandbox: toProto(sb)}); err != nil {
				return err
			}
		}
	}
}
