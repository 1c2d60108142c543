package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/network"
	"github.com/cocoon-run/cocoon/internal/store"
)

// Wire types: field names follow the SDK's schema exactly.

type newSandboxRequest struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int              `json:"timeout"`
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
	AutoPause  *bool             `json:"autoPause"`
	AutoResume *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	AllowInternetAccess *bool `json:"allow_internet_access"`
	Network             *struct {
		AllowOut           []string `json:"allowOut"`
		DenyOut            []string `json:"denyOut"`
		AllowPublicTraffic *bool    `json:"allowPublicTraffic"`
	} `json:"network"`
	Secure    *bool `json:"secure"`
	Lifecycle *struct {
		OnTimeout  string `json:"onTimeout"`
		AutoResume *bool  `json:"autoResume"`
	} `json:"lifecycle"`
}

type sandboxJSON struct {
	SandboxID          string  `json:"sandboxID"`
	TemplateID         string  `json:"templateID"`
	Alias              string  `json:"alias,omitempty"`
	ClientID           string  `json:"clientID"`
	EnvdVersion        string  `json:"envdVersion"`
	EnvdAccessToken    string  `json:"envdAccessToken,omitempty"`
	TrafficAccessToken *string `json:"trafficAccessToken"`
	Domain             *string `json:"domain"`
}

type networkJSON struct {
	AllowOut []string `json:"allowOut,omitempty"`
	DenyOut  []string `json:"denyOut,omitempty"`
	// AllowPublicTraffic false: the proxy demands the traffic access token.
	AllowPublicTraffic *bool `json:"allowPublicTraffic,omitempty"`
}

type lifecycleJSON struct {
	AutoResume bool   `json:"autoResume"`
	OnTimeout  string `json:"onTimeout"`
}

type listedSandboxJSON struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	ClientID    string            `json:"clientID"`
	EnvdVersion string            `json:"envdVersion"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       string            `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	Metadata    map[string]string `json:"metadata"`
}

type sandboxDetailJSON struct {
	listedSandboxJSON
	EnvdAccessToken     string         `json:"envdAccessToken,omitempty"`
	Domain              *string        `json:"domain"`
	AllowInternetAccess *bool          `json:"allowInternetAccess"`
	Network             *networkJSON   `json:"network,omitempty"`
	Lifecycle           *lifecycleJSON `json:"lifecycle"`
}

// clientID is deprecated in E2B and constant in practice.
const clientID = "cocoon"

// publicState maps a stored state to what the SDK understands, and reports
// whether the sandbox is still visible at all (killed/dead/error are gone).
func publicState(st store.SandboxState) (string, bool) {
	switch st {
	case store.StateCreating, store.StateRunning, store.StateResuming:
		return "running", true
	case store.StatePausing, store.StatePaused:
		return "paused", true
	}
	return "", false
}

func (s *Server) domain() *string {
	if s.cfg.Domain == "" {
		return nil
	}
	d := s.cfg.Domain
	return &d
}

func (s *Server) sandboxReply(sb store.Sandbox) sandboxJSON {
	traffic := sb.TrafficAccessToken
	return sandboxJSON{
		SandboxID:          sb.ID,
		TemplateID:         sb.TemplateID,
		Alias:              sb.Alias,
		ClientID:           clientID,
		EnvdVersion:        EnvdVersion,
		EnvdAccessToken:    sb.EnvdAccessToken,
		TrafficAccessToken: &traffic,
		Domain:             s.domain(),
	}
}

func listed(sb store.Sandbox) listedSandboxJSON {
	state, _ := publicState(sb.State)
	md := sb.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return listedSandboxJSON{
		SandboxID:   sb.ID,
		TemplateID:  sb.TemplateID,
		Alias:       sb.Alias,
		ClientID:    clientID,
		EnvdVersion: EnvdVersion,
		StartedAt:   sb.StartedAt.UTC(),
		EndAt:       sb.EndAt.UTC(),
		State:       state,
		CPUCount:    sb.CPUCount,
		MemoryMB:    sb.MemoryMB,
		DiskSizeMB:  sb.DiskMB,
		Metadata:    md,
	}
}

// decodeBody decodes an optional JSON body into v. Unknown fields are
// tolerated (the SDK sends extras); validation already rejected wrong types.
func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return errorf(http.StatusBadRequest, "read request body: "+err.Error())
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errorf(http.StatusBadRequest, "invalid JSON body: "+err.Error())
	}
	return nil
}

// timeoutFrom turns a requested timeout in seconds into a duration: absent
// means the default, longer than the maximum is clamped, negative is a 400
// (api/openapi.yaml: minimum 0).
func (s *Server) timeoutFrom(name string, secs *int) (time.Duration, error) {
	if secs == nil {
		return s.cfg.DefaultTimeout, nil
	}
	if *secs < 0 {
		return 0, errorf(http.StatusBadRequest, fmt.Sprintf("%s must be 0 or more seconds, got %d", name, *secs))
	}
	d := time.Duration(*secs) * time.Second
	return min(d, s.cfg.MaxTimeout), nil
}

// lookup returns a sandbox of the caller's team that is still visible;
// anything else is 404, so teams cannot probe each other's IDs.
func (s *Server) lookup(ctx context.Context, id string) (store.Sandbox, error) {
	sb, err := s.store.GetSandbox(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return sb, notFound(id)
	}
	if err != nil {
		return sb, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	if sb.TeamID != principalFrom(ctx).teamID {
		return sb, notFound(id)
	}
	if _, ok := publicState(sb.State); !ok {
		return sb, notFound(id)
	}
	return sb, nil
}

func notFound(id string) error {
	return errorf(http.StatusNotFound, fmt.Sprintf("sandbox %q not found", id))
}

// nodeErr maps an orchestrator error to a client-facing one.
func nodeErr(op string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeResourceExhausted, connect.CodeUnavailable:
		return errorf(http.StatusServiceUnavailable, fmt.Sprintf("%s: node unavailable: %s", op, connectMsg(err)))
	case connect.CodeDeadlineExceeded:
		return errorf(http.StatusGatewayTimeout, op+": node timed out")
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		return errorf(http.StatusBadRequest, fmt.Sprintf("%s: %s", op, connectMsg(err)))
	}
	return fmt.Errorf("%s: %w", op, err)
}

func connectMsg(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

func (s *Server) nodeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.NodeTimeout)
}

func egress(sb store.Sandbox) *orchestratorv1.Egress {
	return &orchestratorv1.Egress{Disabled: !sb.AllowInternetAccess, AllowOut: sb.AllowOut, DenyOut: sb.DenyOut}
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) (err error) {
	ctx := r.Context()
	team := principalFrom(ctx).teamID
	start := time.Now()
	var sb store.Sandbox
	defer func() {
		if sb.ID != "" { // recorded: the template is resolved
			s.cfg.Metrics.Operation("create", sb.Runtime, sb.TemplateID, start, err)
		}
	}()
	var req newSandboxRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.TemplateID == "" {
		return errorf(http.StatusBadRequest, "templateID is required")
	}
	// On create, 0 means the default like an absent timeout (api/openapi.yaml);
	// it used to expire the sandbox at once.
	if req.Timeout != nil && *req.Timeout == 0 {
		req.Timeout = nil
	}
	timeout, err := s.timeoutFrom("timeout", req.Timeout)
	if err != nil {
		return err
	}
	if n := req.Network; n != nil {
		// Checked before anything is recorded: the node refused bad rules
		// only after the row was written, which stayed in state error.
		if err := network.CheckEgress(network.Egress{AllowOut: n.AllowOut, DenyOut: n.DenyOut}); err != nil {
			return errorf(http.StatusBadRequest, "invalid network rules: "+err.Error())
		}
	}
	tpl, build, err := s.store.LatestReadyBuild(ctx, req.TemplateID, team)
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, fmt.Sprintf("template %q not found or not built", req.TemplateID))
	}
	if err != nil {
		return fmt.Errorf("resolve template %s: %w", req.TemplateID, err)
	}
	onTimeout := store.OnTimeoutKill
	if req.AutoPause != nil && *req.AutoPause {
		onTimeout = store.OnTimeoutPause
	}
	autoResume := req.AutoResume != nil && req.AutoResume.Enabled
	if lc := req.Lifecycle; lc != nil {
		if lc.OnTimeout == string(store.OnTimeoutPause) {
			onTimeout = store.OnTimeoutPause
		}
		if lc.AutoResume != nil {
			autoResume = *lc.AutoResume
		}
	}
	if autoResume && onTimeout != store.OnTimeoutPause {
		return errorf(http.StatusBadRequest, "autoResume requires autoPause (onTimeout: pause)")
	}
	envdToken, err := randomToken(32)
	if err != nil {
		return err
	}
	trafficToken, err := randomToken(32)
	if err != nil {
		return err
	}
	place := Placement{TemplateID: tpl.ID, BuildID: build.ID,
		VCPUs: uint32(tpl.CPUCount), MemoryMB: uint32(tpl.MemoryMB), DiskMB: uint32(tpl.DiskMB)}
	nodeID, err := s.nodes.Pick(ctx, place)
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "no node can take the sandbox: "+err.Error())
	}
	now := s.now()
	alias := ""
	if req.TemplateID != tpl.ID {
		alias = req.TemplateID
	} else if len(tpl.Aliases) > 0 {
		alias = tpl.Aliases[0]
	}
	sb = store.Sandbox{
		TeamID:              team,
		NodeID:              nodeID,
		TemplateID:          tpl.ID,
		BuildID:             build.ID,
		Alias:               alias,
		State:               store.StateCreating,
		CPUCount:            tpl.CPUCount,
		MemoryMB:            tpl.MemoryMB,
		DiskMB:              tpl.DiskMB,
		Metadata:            req.Metadata,
		EnvVars:             req.EnvVars,
		EnvdAccessToken:     envdToken,
		TrafficAccessToken:  trafficToken,
		EnvdVersion:         EnvdVersion,
		StartedAt:           now,
		EndAt:               now.Add(timeout),
		OnTimeout:           onTimeout,
		AutoResume:          autoResume,
		AllowInternetAccess: req.AllowInternetAccess == nil || *req.AllowInternetAccess,
	}
	if req.Network != nil {
		sb.RequireTrafficToken = req.Network.AllowPublicTraffic != nil && !*req.Network.AllowPublicTraffic
		sb.AllowOut, sb.DenyOut = req.Network.AllowOut, req.Network.DenyOut
	}
	// IDs are never reused: the store keeps tombstones and refuses a used ID.
	for attempt := 0; ; attempt++ {
		sb.ID = store.NewSandboxID()
		err = s.store.CreateSandbox(ctx, &sb)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrConflict) || attempt == 3 {
			return fmt.Errorf("record sandbox: %w", err)
		}
	}
	unlock := s.locks.lock(sb.ID)
	defer unlock()

	nctx, cancel := s.nodeCtx(ctx)
	defer cancel()
	var resp *connect.Response[orchestratorv1.CreateResponse]
	for {
		client, cerr := s.nodes.Client(nodeID)
		if cerr != nil {
			s.failSandbox(ctx, sb.ID, "node: "+cerr.Error())
			return fmt.Errorf("create sandbox: %w", cerr)
		}
		resp, err = client.Create(nctx, connect.NewRequest(&orchestratorv1.CreateRequest{
			SandboxId:       sb.ID,
			Template:        &orchestratorv1.TemplateRef{TemplateId: tpl.ID, BuildId: build.ID, Dir: build.ArtifactDir},
			Vcpus:           uint32(sb.CPUCount),
			MemoryMb:        uint32(sb.MemoryMB),
			EnvVars:         sb.EnvVars,
			EnvdAccessToken: sb.EnvdAccessToken,
			Egress:          egress(sb),
		}))
		// A node that refused the connection never saw the request (it
		// died, and the fleet has not marked it lost yet): place again,
		// elsewhere, at most twice.
		if err == nil || len(place.Avoid) == 2 || !errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		place.Avoid = append(place.Avoid, nodeID)
		next, perr := s.nodes.Pick(ctx, place)
		if perr != nil {
			break
		}
		s.logger.WarnContext(ctx, "node refused the create; placing again", "sandbox", sb.ID, "node", nodeID, "next", next)
		if _, merr := store.Modify(ctx, s.store, sb.ID, func(cur *store.Sandbox) error {
			cur.NodeID = next
			return nil
		}); merr != nil {
			break
		}
		nodeID = next
	}
	if err != nil {
		s.failSandbox(context.WithoutCancel(ctx), sb.ID, "create: "+connectMsg(err))
		return nodeErr("create sandbox", err)
	}
	sb, err = store.Modify(context.WithoutCancel(ctx), s.store, sb.ID, func(cur *store.Sandbox) error {
		if cur.State != store.StateCreating {
			return errorf(http.StatusConflict, fmt.Sprintf("sandbox %s changed state to %s during create", cur.ID, cur.State))
		}
		cur.State = store.StateRunning
		if n := resp.Msg.GetSandbox(); n != nil {
			cur.Runtime = n.GetRuntime()
			cur.NodeData = nodeData(n)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record created sandbox: %w", err)
	}
	s.logger.InfoContext(ctx, "sandbox created", "sandbox", sb.ID, "team", team, "template", tpl.ID, "node", nodeID)
	s.emit(ctx, sb, store.EventCreated, "")
	writeJSON(w, http.StatusCreated, s.sandboxReply(sb))
	return nil
}

// failSandbox marks a sandbox whose create failed, best effort.
func (s *Server) failSandbox(ctx context.Context, id, reason string) {
	if _, err := s.store.SetSandboxState(ctx, id, nil, store.StateError, reason); err != nil {
		s.logger.WarnContext(ctx, "mark sandbox failed", "sandbox", id, "err", err)
	}
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) error {
	sb, err := s.lookup(r.Context(), r.PathValue("sandboxID"))
	if err != nil {
		return err
	}
	d := sandboxDetailJSON{
		listedSandboxJSON: listed(sb),
		EnvdAccessToken:   sb.EnvdAccessToken,
		Domain:            s.domain(),
		Lifecycle:         &lifecycleJSON{AutoResume: sb.AutoResume, OnTimeout: string(sb.OnTimeout)},
	}
	if d.Lifecycle.OnTimeout == "" {
		d.Lifecycle.OnTimeout = string(store.OnTimeoutKill)
	}
	allow := sb.AllowInternetAccess
	d.AllowInternetAccess = &allow
	if len(sb.AllowOut) > 0 || len(sb.DenyOut) > 0 || sb.RequireTrafficToken {
		d.Network = &networkJSON{AllowOut: sb.AllowOut, DenyOut: sb.DenyOut}
		if sb.RequireTrafficToken {
			d.Network.AllowPublicTraffic = new(bool)
		}
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

// parseMetadataQuery decodes the SDK's metadata filter. The SDK URL-encodes
// keys and values, joins them as a query string, and the whole string is
// encoded once more as the parameter value.
func parseMetadataQuery(raw string) (map[string]string, error) {
	if raw == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid metadata filter: "+err.Error())
	}
	out := make(map[string]string, len(q))
	for k, vs := range q {
		if len(vs) == 0 {
			continue
		}
		out[unescape(k)] = unescape(vs[len(vs)-1])
	}
	return out, nil
}

func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// statesFor expands public state names to stored states.
func statesFor(public []string) []store.SandboxState {
	var out []store.SandboxState
	for _, p := range public {
		switch p {
		case "running":
			out = append(out, store.StateCreating, store.StateRunning, store.StateResuming)
		case "paused":
			out = append(out, store.StatePausing, store.StatePaused)
		}
	}
	return out
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	md, err := parseMetadataQuery(q.Get("metadata"))
	if err != nil {
		return err
	}
	var states []string
	for _, v := range q["state"] {
		for p := range strings.SplitSeq(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				states = append(states, p)
			}
		}
	}
	if len(states) == 0 {
		states = []string{"running", "paused"}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 {
			return errorf(http.StatusBadRequest, "invalid limit")
		}
	}
	page, next, err := s.store.ListSandboxes(r.Context(), store.SandboxFilter{
		TeamID:   principalFrom(r.Context()).teamID,
		States:   statesFor(states),
		Metadata: md,
		Limit:    limit,
		Next:     q.Get("nextToken"),
	})
	if errors.Is(err, store.ErrBadToken) {
		return errorf(http.StatusBadRequest, "invalid nextToken: pass the X-Next-Token of a previous page")
	}
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	out := make([]listedSandboxJSON, 0, len(page))
	for _, sb := range page {
		out = append(out, listed(sb))
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// listSandboxesV1 is the legacy list: running sandboxes only, unpaged.
func (s *Server) listSandboxesV1(w http.ResponseWriter, r *http.Request) error {
	md, err := parseMetadataQuery(r.URL.Query().Get("metadata"))
	if err != nil {
		return err
	}
	out := []listedSandboxJSON{}
	f := store.SandboxFilter{
		TeamID:   principalFrom(r.Context()).teamID,
		States:   statesFor([]string{"running"}),
		Metadata: md,
		Limit:    500,
	}
	for {
		page, next, err := s.store.ListSandboxes(r.Context(), f)
		if err != nil {
			return fmt.Errorf("list sandboxes: %w", err)
		}
		for _, sb := range page {
			out = append(out, listed(sb))
		}
		if next == "" {
			break
		}
		f.Next = next
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) killSandbox(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("sandboxID")
	unlock := s.locks.lock(id)
	defer unlock()
	sb, err := s.lookup(r.Context(), id)
	if err != nil {
		return err
	}
	if err := s.kill(r.Context(), sb, store.StateKilled, ""); err != nil {
		return err
	}
	s.logger.InfoContext(r.Context(), "sandbox killed", "sandbox", id)
	noContent(w)
	return nil
}

// kill stops sb on its node (deleting any pause snapshot) and records the
// final state. The caller holds the sandbox's lock.
func (s *Server) kill(ctx context.Context, sb store.Sandbox, final store.SandboxState, reason string) (err error) {
	defer func(start time.Time) { s.cfg.Metrics.Operation("kill", sb.Runtime, sb.TemplateID, start, err) }(time.Now())
	nodeID := sb.NodeID
	if nodeID == "" {
		// Paused before snapshots stayed on their node (docs/decisions.md):
		// any node can delete the snapshot.
		if ids := s.nodes.IDs(); len(ids) > 0 {
			nodeID = ids[0]
		}
	}
	if nodeID != "" {
		client, err := s.nodes.Client(nodeID)
		if err != nil {
			return fmt.Errorf("kill sandbox %s: %w", sb.ID, err)
		}
		nctx, cancel := s.nodeCtx(ctx)
		defer cancel()
		if _, err := client.Kill(nctx, connect.NewRequest(&orchestratorv1.KillRequest{SandboxId: sb.ID, DeleteSnapshot: true})); err != nil {
			return nodeErr("kill sandbox", err)
		}
	}
	if _, err := s.store.SetSandboxState(context.WithoutCancel(ctx), sb.ID, nil, final, reason); err != nil {
		return fmt.Errorf("record killed sandbox %s: %w", sb.ID, err)
	}
	if reason == "" {
		reason = "request"
	}
	s.emit(ctx, sb, store.EventKilled, reason)
	return nil
}

type timeoutRequest struct {
	Timeout *int `json:"timeout"`
}

func (s *Server) setTimeout(w http.ResponseWriter, r *http.Request) error {
	var req timeoutRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if req.Timeout == nil {
		return errorf(http.StatusBadRequest, "timeout is required")
	}
	d, err := s.timeoutFrom("timeout", req.Timeout)
	if err != nil {
		return err
	}
	return s.moveDeadline(w, r, func(end time.Time) time.Time { return s.now().Add(d) })
}

func (s *Server) refresh(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		Duration *int `json:"duration"`
	}
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	d, err := s.timeoutFrom("duration", req.Duration)
	if err != nil {
		return err
	}
	// A refresh only ever extends the deadline.
	return s.moveDeadline(w, r, func(end time.Time) time.Time {
		if t := s.now().Add(d); t.After(end) {
			return t
		}
		return end
	})
}

func (s *Server) moveDeadline(w http.ResponseWriter, r *http.Request, next func(time.Time) time.Time) error {
	id := r.PathValue("sandboxID")
	unlock := s.locks.lock(id)
	defer unlock()
	if _, err := s.lookup(r.Context(), id); err != nil {
		return err
	}
	sb, err := store.Modify(r.Context(), s.store, id, func(sb *store.Sandbox) error {
		if _, ok := publicState(sb.State); !ok {
			return notFound(id)
		}
		sb.EndAt = next(sb.EndAt)
		return nil
	})
	if err != nil {
		return fmt.Errorf("set sandbox timeout: %w", err)
	}
	s.emit(r.Context(), sb, store.EventUpdated, "")
	noContent(w)
	return nil
}

func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("sandboxID")
	unlock := s.locks.lock(id)
	defer unlock()
	sb, err := s.lookup(r.Context(), id)
	if err != nil {
		return err
	}
	if err := s.pause(r.Context(), sb); err != nil {
		return err
	}
	noContent(w)
	return nil
}

// pause saves a running sandbox to the snapshot store and frees its node.
// The caller holds the sandbox's lock.
func (s *Server) pause(ctx context.Context, sb store.Sandbox) (err error) {
	defer func(start time.Time) { s.cfg.Metrics.Operation("pause", sb.Runtime, sb.TemplateID, start, err) }(time.Now())
	switch sb.State {
	case store.StatePaused, store.StatePausing:
		return errorf(http.StatusConflict, fmt.Sprintf("sandbox %q is already paused", sb.ID))
	case store.StateRunning:
	default:
		return errorf(http.StatusConflict, fmt.Sprintf("sandbox %q is %s", sb.ID, sb.State))
	}
	if _, err := s.store.SetSandboxState(ctx, sb.ID, []store.SandboxState{store.StateRunning}, store.StatePausing, ""); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return errorf(http.StatusConflict, fmt.Sprintf("sandbox %q changed state", sb.ID))
		}
		return fmt.Errorf("mark sandbox pausing: %w", err)
	}
	revert := func() {
		if _, err := s.store.SetSandboxState(context.WithoutCancel(ctx), sb.ID, []store.SandboxState{store.StatePausing}, store.StateRunning, ""); err != nil {
			s.logger.WarnContext(ctx, "revert pausing", "sandbox", sb.ID, "err", err)
		}
	}
	client, err := s.nodes.Client(sb.NodeID)
	if err != nil {
		revert()
		return fmt.Errorf("pause sandbox %s: %w", sb.ID, err)
	}
	nctx, cancel := s.nodeCtx(ctx)
	defer cancel()
	resp, err := client.Pause(nctx, connect.NewRequest(&orchestratorv1.PauseRequest{SandboxId: sb.ID}))
	if err != nil {
		revert()
		return nodeErr("pause sandbox", err)
	}
	_, err = store.Modify(context.WithoutCancel(ctx), s.store, sb.ID, func(cur *store.Sandbox) error {
		cur.State = store.StatePaused
		cur.SnapshotURI = resp.Msg.GetSandbox().GetSnapshot()
		return nil
	})
	if err != nil {
		return fmt.Errorf("record paused sandbox: %w", err)
	}
	s.logger.InfoContext(ctx, "sandbox paused", "sandbox", sb.ID)
	s.emit(ctx, sb, store.EventPaused, "")
	return nil
}

type connectRequest struct {
	Timeout   *int  `json:"timeout"`
	AutoPause *bool `json:"autoPause"`
}

// connectSandbox returns a running sandbox (200), extending but never
// shortening its deadline, or resumes a paused one (201).
func (s *Server) connectSandbox(w http.ResponseWriter, r *http.Request) error {
	return s.connectOrResume(w, r, false)
}

// resumeSandbox is the legacy resume: 409 if the sandbox is running.
func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request) error {
	return s.connectOrResume(w, r, true)
}

func (s *Server) connectOrResume(w http.ResponseWriter, r *http.Request, legacy bool) error {
	var req connectRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	ctx := r.Context()
	id := r.PathValue("sandboxID")
	unlock := s.locks.lock(id)
	defer unlock()
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	d, err := s.timeoutFrom("timeout", req.Timeout)
	if err != nil {
		return err
	}
	switch sb.State {
	case store.StatePaused:
	case store.StatePausing:
		return errorf(http.StatusConflict, fmt.Sprintf("sandbox %q is being paused", id))
	default: // running, or transitional states that end up running
		if legacy {
			return errorf(http.StatusConflict, fmt.Sprintf("sandbox %q is already running", id))
		}
		sb, err = store.Modify(ctx, s.store, id, func(cur *store.Sandbox) error {
			if t := s.now().Add(d); t.After(cur.EndAt) {
				cur.EndAt = t
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("extend sandbox: %w", err)
		}
		writeJSON(w, http.StatusOK, s.sandboxReply(sb))
		return nil
	}
	if legacy && req.AutoPause != nil {
		sb.OnTimeout = store.OnTimeoutKill
		if *req.AutoPause {
			sb.OnTimeout = store.OnTimeoutPause
		}
	}
	sb, err = s.resume(ctx, sb, d)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.sandboxReply(sb))
	return nil
}

// resume restores a paused sandbox on the node that holds its snapshot
// (docs/decisions.md: snapshots stay on their node; a draining node still
// resumes its own). A row paused before that rule has no node: one is
// chosen now. The caller holds the sandbox's lock. sb.OnTimeout is written
// as given.
func (s *Server) resume(ctx context.Context, sb store.Sandbox, timeout time.Duration) (_ store.Sandbox, err error) {
	defer func(start time.Time, rt, tpl string) { s.cfg.Metrics.Operation("resume", rt, tpl, start, err) }(time.Now(), sb.Runtime, sb.TemplateID)
	build, err := s.store.GetBuild(ctx, sb.BuildID)
	if err != nil {
		return sb, fmt.Errorf("get build %s of sandbox %s: %w", sb.BuildID, sb.ID, err)
	}
	nodeID := sb.NodeID
	if nodeID == "" {
		nodeID, err = s.nodes.Pick(ctx, Placement{TemplateID: sb.TemplateID, BuildID: sb.BuildID, Runtime: sb.Runtime,
			VCPUs: uint32(sb.CPUCount), MemoryMB: uint32(sb.MemoryMB), DiskMB: uint32(sb.DiskMB)})
		if err != nil {
			return sb, errorf(http.StatusServiceUnavailable, "no node can take the sandbox: "+err.Error())
		}
	}
	client, err := s.nodes.Client(nodeID)
	if err != nil {
		return sb, fmt.Errorf("resume sandbox %s: %w", sb.ID, err)
	}
	onTimeout := sb.OnTimeout
	if _, err := s.store.SetSandboxState(ctx, sb.ID, []store.SandboxState{store.StatePaused}, store.StateResuming, ""); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return sb, errorf(http.StatusConflict, fmt.Sprintf("sandbox %q changed state", sb.ID))
		}
		return sb, fmt.Errorf("mark sandbox resuming: %w", err)
	}
	nctx, cancel := s.nodeCtx(ctx)
	defer cancel()
	resp, err := client.Resume(nctx, connect.NewRequest(&orchestratorv1.ResumeRequest{
		SandboxId:       sb.ID,
		Template:        &orchestratorv1.TemplateRef{TemplateId: sb.TemplateID, BuildId: sb.BuildID, Dir: build.ArtifactDir},
		Runtime:         sb.Runtime,
		Snapshot:        sb.SnapshotURI,
		Vcpus:           uint32(sb.CPUCount),
		MemoryMb:        uint32(sb.MemoryMB),
		EnvVars:         sb.EnvVars,
		EnvdAccessToken: sb.EnvdAccessToken,
		Egress:          egress(sb),
	}))
	if err != nil {
		if _, rerr := s.store.SetSandboxState(context.WithoutCancel(ctx), sb.ID, []store.SandboxState{store.StateResuming}, store.StatePaused, ""); rerr != nil {
			s.logger.WarnContext(ctx, "revert resuming", "sandbox", sb.ID, "err", rerr)
		}
		return sb, nodeErr("resume sandbox", err)
	}
	now := s.now()
	sb, err = store.Modify(context.WithoutCancel(ctx), s.store, sb.ID, func(cur *store.Sandbox) error {
		cur.State = store.StateRunning
		cur.NodeID = nodeID
		cur.StartedAt = now
		cur.EndAt = now.Add(timeout)
		cur.OnTimeout = onTimeout
		if n := resp.Msg.GetSandbox(); n != nil && n.GetRuntime() != "" {
			cur.Runtime = n.GetRuntime()
			cur.NodeData = nodeData(n)
		}
		return nil
	})
	if err != nil {
		return sb, fmt.Errorf("record resumed sandbox: %w", err)
	}
	s.logger.InfoContext(ctx, "sandbox resumed", "sandbox", sb.ID, "node", nodeID)
	s.emit(ctx, sb, store.EventResumed, "")
	return sb, nil
}

// NodeData is what the store keeps of a sandbox's place on its node.
type NodeData struct {
	// Address is where the node reaches the sandbox's ports.
	Address string `json:"address"`
}

func nodeData(n *orchestratorv1.Sandbox) json.RawMessage {
	b, _ := json.Marshal(NodeData{Address: n.GetAddress()})
	return b
}

// Errors of Resolve, for the sandbox proxy.
var (
	ErrSandboxNotFound = errors.New("sandbox not found")
	ErrSandboxPaused   = errors.New("sandbox is paused")
	// ErrSandboxDead comes wrapped in a *DeadError that says why.
	ErrSandboxDead = errors.New("sandbox is dead")
)

// DeadError is Resolve's error for a sandbox whose runtime died.
type DeadError struct{ Reason string }

func (e *DeadError) Error() string { return "sandbox is dead: " + e.Reason }
func (e *DeadError) Unwrap() error { return ErrSandboxDead }

// Route is what the sandbox proxy needs to reach a running sandbox.
type Route struct {
	// Addr is the sandbox's node address; Started the time it last
	// started (which changes on every resume).
	Addr    string
	Started time.Time
	// TrafficToken is set when the sandbox demands its traffic access
	// token (created with network.allowPublicTraffic = false); EnvdToken
	// is envd's access token.
	TrafficToken, EnvdToken string
}

// Resolve returns the Route of a running sandbox for the sandbox proxy. A paused sandbox created with auto-resume is resumed first, with
// the default timeout; any other paused sandbox gives ErrSandboxPaused.
func (s *Server) Resolve(ctx context.Context, id string) (Route, error) {
	sb, err := s.store.GetSandbox(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Route{}, ErrSandboxNotFound
	}
	if err != nil {
		return Route{}, err
	}
	switch sb.State {
	case store.StateRunning:
	case store.StatePaused, store.StatePausing, store.StateResuming:
		if !sb.AutoResume {
			return Route{}, ErrSandboxPaused
		}
		unlock := s.locks.lock(id)
		sb, err = s.store.GetSandbox(ctx, id)
		if err == nil && sb.State == store.StatePaused {
			sb, err = s.resume(ctx, sb, s.cfg.DefaultTimeout)
		}
		unlock()
		if err != nil {
			return Route{}, fmt.Errorf("auto-resume: %w", err)
		}
		if sb.State != store.StateRunning {
			return Route{}, ErrSandboxPaused
		}
	case store.StateDead:
		return Route{}, &DeadError{Reason: sb.StateReason}
	default:
		return Route{}, ErrSandboxNotFound
	}
	var nd NodeData
	if err := json.Unmarshal(sb.NodeData, &nd); err != nil || nd.Address == "" {
		return Route{}, fmt.Errorf("sandbox %s has no known address", id)
	}
	rt := Route{Addr: nd.Address, Started: sb.StartedAt, EnvdToken: sb.EnvdAccessToken}
	if sb.RequireTrafficToken {
		rt.TrafficToken = sb.TrafficAccessToken
	}
	return rt, nil
}
