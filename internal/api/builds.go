package api

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	orchestratorv1 "github.com/cocoon-run/cocoon/api/gen/cocoon/orchestrator/v1"
	"github.com/cocoon-run/cocoon/internal/store"
	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/oci"
	"github.com/cocoon-run/cocoon/internal/template/steps"
)

// The SDK's Template builder flow (see docs/e2b-wire.md):
//
//	POST /v3/templates                                   → template + build (waiting)
//	GET  /templates/{tid}/files/{hash}                   → {present, url}
//	PUT  <url> (tar.gz of a COPY step's files)           → stored under TemplateFilesDir
//	POST /v2/templates/{tid}/builds/{bid}  (the steps)   → build runs in the background
//	GET  /templates/{tid}/builds/{bid}/status?logsOffset → status + log entries
//
// A build: resolve the parent (a template's latest ready build, or an OCI
// image imported by the node on top of the base), derive cache keys from
// the steps, ask the node for the finished template by key, and on a miss
// start a build sandbox from the parent, run the steps in it through envd
// and have the node export, snapshot and keep the result.

// defaultImage is the SDK's default base image; Cocoon's base template
// stands in for it.
const defaultImage = "e2bdev/base"

var templateName = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]{0,127}$`)

// buildTag is what a build tag may be (the part after ":" in "name:tag").
var buildTag = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

type newTemplateV3Request struct {
	Name     string   `json:"name"`
	Alias    string   `json:"alias"`
	Tags     []string `json:"tags"`
	CPUCount int      `json:"cpuCount"`
	MemoryMB int      `json:"memoryMB"`
}

type templateRequestReply struct {
	TemplateID string   `json:"templateID"`
	BuildID    string   `json:"buildID"`
	Public     bool     `json:"public"`
	Names      []string `json:"names"`
	Aliases    []string `json:"aliases"`
	Tags       []string `json:"tags"`
}

// createTemplateV3 registers a template (or a new build of an existing one
// of the team, by name) and returns the build to upload files for.
func (s *Server) createTemplateV3(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	team := principalFrom(ctx).teamID
	var req newTemplateV3Request
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	name := req.Name
	if name == "" {
		name = req.Alias
	}
	tags := req.Tags
	if n, tag, ok := strings.Cut(name, ":"); ok {
		name, tags = n, append(tags, tag)
	}
	if len(tags) == 0 {
		tags = []string{store.DefaultTag}
	}
	for _, tag := range tags {
		if !buildTag.MatchString(tag) {
			return errorf(http.StatusBadRequest, fmt.Sprintf("invalid tag %q: letters, digits, '.', '_', '-'", tag))
		}
	}
	if !templateName.MatchString(name) {
		return errorf(http.StatusBadRequest, fmt.Sprintf("invalid template name %q: lowercase letters, digits, '.', '_', '-', '/'", name))
	}
	// 0 keeps the template's (or the base's) value; api/openapi.yaml has the
	// minimums, the node's capacity the maximums.
	if c := req.CPUCount; c != 0 && (c < 1 || c > s.cfg.MaxCPUCount) {
		return errorf(http.StatusBadRequest, fmt.Sprintf("cpuCount must be 1 to %d, got %d", s.cfg.MaxCPUCount, c))
	}
	if m := req.MemoryMB; m != 0 && (m < 128 || m > s.cfg.MaxMemoryMB) {
		return errorf(http.StatusBadRequest, fmt.Sprintf("memoryMB must be 128 to %d, got %d", s.cfg.MaxMemoryMB, m))
	}
	t, err := s.store.ResolveTemplate(ctx, name, team)
	switch {
	case err == nil && t.TeamID != team:
		return errorf(http.StatusConflict, fmt.Sprintf("template name %q is taken", name))
	case err == nil:
		if req.CPUCount > 0 || req.MemoryMB > 0 {
			t.CPUCount, t.MemoryMB = orInt(req.CPUCount, t.CPUCount), orInt(req.MemoryMB, t.MemoryMB)
			if err := s.store.UpdateTemplate(ctx, t); err != nil {
				return fmt.Errorf("update template %s: %w", t.ID, err)
			}
		}
	case errors.Is(err, store.ErrNotFound):
		shape, err := s.store.GetTemplate(ctx, s.cfg.BaseTemplate)
		if err != nil {
			shape = store.Template{CPUCount: 2, MemoryMB: 512, DiskMB: 2048}
		}
		t = store.Template{
			ID: store.NewID(20), TeamID: team, Name: name, Aliases: []string{name},
			CPUCount: orInt(req.CPUCount, shape.CPUCount), MemoryMB: orInt(req.MemoryMB, shape.MemoryMB),
			DiskMB: shape.DiskMB, CreatedAt: s.now(),
		}
		if err := s.store.CreateTemplate(ctx, t); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return errorf(http.StatusConflict, fmt.Sprintf("template name %q is taken", name))
			}
			return fmt.Errorf("create template: %w", err)
		}
	default:
		return fmt.Errorf("resolve template %s: %w", name, err)
	}
	b := store.TemplateBuild{ID: store.NewID(20), TemplateID: t.ID, Status: store.BuildWaiting, Tags: tags, CreatedAt: s.now()}
	if err := s.store.CreateBuild(ctx, b); err != nil {
		return fmt.Errorf("create build: %w", err)
	}
	writeJSON(w, http.StatusAccepted, templateRequestReply{
		TemplateID: t.ID, BuildID: b.ID, Public: t.Public, Names: names(t), Aliases: t.Aliases, Tags: tags,
	})
	return nil
}

// ownTemplate returns a template of the caller's team; others are 404.
func (s *Server) ownTemplate(ctx context.Context, id string) (store.Template, error) {
	t, err := s.resolveTemplate(ctx, id)
	if err != nil {
		return t, err
	}
	if t.TeamID != principalFrom(ctx).teamID {
		return t, errorf(http.StatusNotFound, fmt.Sprintf("template %q not found", id))
	}
	return t, nil
}

var hexHash = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s *Server) filePath(tid, hash string) string {
	return filepath.Join(s.cfg.TemplateFilesDir, tid, hash+".tar")
}

// uploadToken signs (template, hash) so that the upload URL needs no API key.
func (s *Server) uploadToken(tid, hash string) string {
	m := hmac.New(sha256.New, s.uploadKey())
	m.Write([]byte(tid + "/" + hash))
	return hex.EncodeToString(m.Sum(nil))
}

var (
	uploadKeyOnce sync.Once
	uploadKeyVal  []byte
)

func (s *Server) uploadKey() []byte {
	uploadKeyOnce.Do(func() {
		uploadKeyVal = make([]byte, 32)
		_, _ = rand.Read(uploadKeyVal)
	})
	return uploadKeyVal
}

// templateFileLink answers whether a COPY archive is already there and, if
// not, where to PUT it.
func (s *Server) templateFileLink(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	t, err := s.ownTemplate(ctx, r.PathValue("templateID"))
	if err != nil {
		return err
	}
	hash := r.PathValue("hash")
	if !hexHash.MatchString(hash) {
		return errorf(http.StatusBadRequest, "hash must be a hex sha256")
	}
	if f, err := s.store.GetTemplateFile(ctx, t.ID, hash); err == nil && f.Uploaded {
		if _, err := os.Stat(f.Path); err == nil {
			writeJSON(w, http.StatusOK, map[string]any{"present": true})
			return nil
		}
	}
	scheme := "http"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	url := fmt.Sprintf("%s://%s/templates/%s/files/%s/upload?token=%s", scheme, r.Host, t.ID, hash, s.uploadToken(t.ID, hash))
	writeJSON(w, http.StatusCreated, map[string]any{"present": false, "url": url, "headers": map[string]string{}})
	return nil
}

// uploadTemplateFile stores a COPY archive (tar or tar.gz). It is checked
// (no absolute paths, "..", links leaving the target; the size limit) before
// it is recorded.
func (s *Server) uploadTemplateFile(w http.ResponseWriter, r *http.Request) error {
	tid, hash := r.PathValue("templateID"), r.PathValue("hash")
	if !hexHash.MatchString(hash) || !hmac.Equal([]byte(r.URL.Query().Get("token")), []byte(s.uploadToken(tid, hash))) {
		return errorf(http.StatusForbidden, "invalid upload link")
	}
	if r.ContentLength > s.cfg.MaxUploadBytes {
		return errorf(http.StatusRequestEntityTooLarge, fmt.Sprintf("upload larger than %d bytes", s.cfg.MaxUploadBytes))
	}
	dst := s.filePath(tid, hash)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".upload-*")
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(r.Body, s.cfg.MaxUploadBytes+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "upload: "+err.Error())
	}
	if n > s.cfg.MaxUploadBytes {
		return errorf(http.StatusRequestEntityTooLarge, fmt.Sprintf("upload larger than %d bytes", s.cfg.MaxUploadBytes))
	}
	if err := checkArchiveFile(tmp.Name(), 4*s.cfg.MaxUploadBytes); err != nil {
		return errorf(http.StatusBadRequest, "refused archive: "+err.Error())
	}
	// A stored archive is never replaced: a build keys its COPY step by the
	// digest of the file when it starts (keySpec) and reads the same path
	// later, so a second PUT in between would give the layer other content
	// than its key names. The first upload stands (it was checked).
	if err := os.Link(tmp.Name(), dst); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("upload: %w", err)
	}
	err = s.store.PutTemplateFile(r.Context(), store.TemplateFile{TemplateID: tid, SHA256: hash, Path: dst, Uploaded: true, CreatedAt: s.now()})
	if err != nil {
		return err
	}
	noContent(w)
	return nil
}

func checkArchiveFile(path string, maxBytes int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr, err := steps.Untar(f)
	if err != nil {
		return err
	}
	_, err = oci.CheckArchive(tr, maxBytes)
	return err
}

// startBuild takes the steps of a waiting build and runs it in the background.
func (s *Server) startBuild(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	t, err := s.ownTemplate(ctx, r.PathValue("templateID"))
	if err != nil {
		return err
	}
	b, err := s.store.GetBuild(ctx, r.PathValue("buildID"))
	if err != nil || b.TemplateID != t.ID {
		return errorf(http.StatusNotFound, fmt.Sprintf("build %q not found", r.PathValue("buildID")))
	}
	if b.Status != store.BuildWaiting {
		return errorf(http.StatusConflict, fmt.Sprintf("build %s is %s", b.ID, b.Status))
	}
	var spec steps.Spec
	if err := decodeBody(r, &spec); err != nil {
		return err
	}
	if err := spec.Validate(); err != nil {
		return errorf(http.StatusBadRequest, err.Error())
	}
	raw, _ := json.Marshal(redacted(spec))
	b.Status, b.Spec = store.BuildBuilding, raw
	if err := s.store.UpdateBuild(ctx, b); err != nil {
		return fmt.Errorf("start build: %w", err)
	}
	go s.runBuild(principalFrom(ctx).teamID, t, b, spec)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// redacted drops registry credentials before a spec is stored.
func redacted(s steps.Spec) steps.Spec {
	if s.FromImageRegistry != nil {
		s.FromImageRegistry = &steps.Registry{Type: s.FromImageRegistry.Type, Username: s.FromImageRegistry.Username}
	}
	return s
}

type buildLogJSON struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
	Step      string    `json:"step,omitempty"`
}

type buildStatusJSON struct {
	TemplateID string         `json:"templateID"`
	BuildID    string         `json:"buildID"`
	Status     string         `json:"status"`
	Logs       []string       `json:"logs"`
	LogEntries []buildLogJSON `json:"logEntries"`
	Reason     *buildReason   `json:"reason,omitempty"`
}

type buildReason struct {
	Message    string         `json:"message"`
	Step       string         `json:"step,omitempty"`
	LogEntries []buildLogJSON `json:"logEntries,omitempty"`
}

// buildStatus reports a build's status and its log from logsOffset on.
func (s *Server) buildStatus(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	t, err := s.resolveTemplate(ctx, r.PathValue("templateID"))
	if err != nil {
		return err
	}
	b, err := s.store.GetBuild(ctx, r.PathValue("buildID"))
	if err != nil || b.TemplateID != t.ID {
		return errorf(http.StatusNotFound, fmt.Sprintf("build %q not found", r.PathValue("buildID")))
	}
	offset, _ := strconv.Atoi(r.URL.Query().Get("logsOffset"))
	entries, err := s.store.BuildLogs(ctx, b.ID, max(offset, 0), 0)
	if err != nil {
		return err
	}
	out := buildStatusJSON{TemplateID: t.ID, BuildID: b.ID, Status: string(b.Status), Logs: []string{}, LogEntries: []buildLogJSON{}}
	for _, e := range entries {
		out.LogEntries = append(out.LogEntries, buildLogJSON{Timestamp: e.Timestamp.UTC(), Level: e.Level, Message: e.Message, Step: e.Step})
		out.Logs = append(out.Logs, e.Message)
	}
	if b.Status == store.BuildError {
		msg, step, _ := strings.Cut(b.Reason, "\x00")
		if step == "" {
			msg, step = b.Reason, ""
		}
		out.Reason = &buildReason{Message: msg, Step: step}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// buildRun is one build in progress.
type buildRun struct {
	s     *Server
	team  string
	tmpl  store.Template
	build store.TemplateBuild
	spec  steps.Spec
}

func (b *buildRun) log(step int, level, msg string) {
	st := ""
	if step > 0 {
		st = strconv.Itoa(step)
	}
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	e := store.BuildLogEntry{Timestamp: b.s.now(), Level: level, Message: msg, Step: st}
	if err := b.s.store.AppendBuildLog(context.Background(), b.build.ID, e); err != nil {
		b.s.logger.Warn("append build log", "build", b.build.ID, "err", err)
	}
}

// runBuild runs a build to ready or error.
func (s *Server) runBuild(team string, t store.Template, b store.TemplateBuild, spec steps.Spec) {
	// The build's time limit is a timer that cancels it, not a deadline in
	// ctx: a deadline travels to the node with each call, whose own copy can
	// fire first and come back as the node's DeadlineExceeded while ours has
	// not, so the reason depended on which fired first. The timer alone
	// decides whether the build timed out.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.AfterFunc(s.cfg.BuildTimeout, cancel)
	run := &buildRun{s: s, team: team, tmpl: t, build: b, spec: spec}
	start := s.now()
	dir, runtimes, err := run.do(ctx)
	timedOut := !timer.Stop()
	b.FinishedAt = s.now()
	if err != nil {
		var se *steps.StepError
		step := ""
		if errors.As(err, &se) {
			step = strconv.Itoa(se.Step)
		}
		if timedOut {
			// What the cancelled call says ("canceled: context canceled")
			// adds nothing; the step, if any, is kept below.
			err = fmt.Errorf("build timed out after %s", s.cfg.BuildTimeout)
		}
		run.log(0, "error", "build failed: "+err.Error())
		b.Status, b.Reason = store.BuildError, err.Error()
		if step != "" {
			b.Reason += "\x00" + step
		}
	} else {
		run.log(0, "info", fmt.Sprintf("build ready in %.1fs", s.now().Sub(start).Seconds()))
		b.Status, b.ArtifactDir, b.Runtimes, b.EnvdVersion = store.BuildReady, dir, runtimes, EnvdVersion
	}
	s.cfg.Metrics.Build(b.FinishedAt.Sub(start), err)
	if err := s.store.UpdateBuild(context.Background(), b); err != nil {
		s.logger.Error("record build result", "build", b.ID, "err", err)
	}
}

func (b *buildRun) do(ctx context.Context) (string, []string, error) {
	s, spec := b.s, b.spec
	nodeID, err := s.nodes.Pick(ctx, Placement{TemplateID: b.tmpl.ID})
	if err != nil {
		return "", nil, err
	}
	client, err := s.nodes.Client(nodeID)
	if err != nil {
		return "", nil, err
	}
	// The parent: a template's latest ready build, or an image on the base.
	from := spec.FromTemplate
	if from == "" && (spec.FromImage == "" || spec.FromImage == defaultImage) {
		from = s.cfg.BaseTemplate
	}
	var parent store.TemplateBuild
	var parentID string
	if from != "" {
		b.log(0, "info", "FROM template "+from)
		_, parent, err = s.store.LatestReadyBuild(ctx, from, b.team)
		if err != nil {
			return "", nil, fmt.Errorf("unknown base template %q: %w", from, err)
		}
		parentID = parent.ID
		// A parent's artifact dir is named by its content (base-<hash>,
		// custom/<cache key>), its build ID is random for a custom
		// template: key on the dir, so that an identical parent rebuilt
		// (a fresh database, another data dir) still hits the layer cache
		// (code-interpreter-deps: ≈ 13 min of apt under gVisor otherwise).
		if parent.ArtifactDir != "" {
			parentID = filepath.Base(parent.ArtifactDir)
		}
	} else {
		b.log(0, "info", "FROM image "+spec.FromImage)
		_, baseBuild, err := s.store.LatestReadyBuild(ctx, s.cfg.BaseTemplate, b.team)
		if err != nil {
			return "", nil, fmt.Errorf("base template: %w", err)
		}
		img := &orchestratorv1.OCIImage{Ref: spec.FromImage, Insecure: s.insecureRegistry(spec.FromImage)}
		user := ""
		if r := spec.FromImageRegistry; r != nil {
			img.Username, img.Password, user = r.Username, r.Password, r.Username
		}
		parentID = "image:" + spec.FromImage + ":" + user
		layer := cache.Key("image", "1", teamSalt(b.team), baseBuild.ID, spec.FromImage, user, forceSalt(spec, b.build.ID))
		dir, _, _, err := b.nodeBuild(ctx, client, &orchestratorv1.BuildTemplateRequest{
			CacheKey: cache.Key("image-template", layer), LayerKey: layer,
			Parent: &orchestratorv1.TemplateRef{Dir: baseBuild.ArtifactDir}, Source: &orchestratorv1.BuildTemplateRequest_Image{Image: img},
		})
		if err != nil {
			if connect.CodeOf(err) == connect.CodeNotFound {
				return "", nil, fmt.Errorf("unknown base image %q: %s", spec.FromImage, connectMsg(err))
			}
			return "", nil, fmt.Errorf("import image %s: %w", spec.FromImage, err)
		}
		parent = store.TemplateBuild{ID: layer, ArtifactDir: dir}
	}
	keyed, err := s.keySpec(ctx, b.tmpl.ID, spec)
	if err != nil {
		return "", nil, err
	}
	layer, final := steps.Keys(teamSalt(b.team)+parentID+forceSalt(spec, b.build.ID), keyed, b.tmpl.CPUCount, b.tmpl.MemoryMB)
	st := steps.Final(spec)
	req := &orchestratorv1.BuildTemplateRequest{
		CacheKey: final, LayerKey: layer, Parent: &orchestratorv1.TemplateRef{Dir: parent.ArtifactDir},
		StartCmd: spec.StartCmd, ReadyCmd: spec.ReadyCmd, Env: st.Env, Workdir: st.Workdir, User: st.User,
		ReadyTimeoutS: uint32(s.cfg.ReadyTimeout / time.Second),
		Vcpus:         uint32(b.tmpl.CPUCount), MemoryMb: uint32(b.tmpl.MemoryMB),
	}
	if len(spec.Steps) == 0 {
		req.Source = &orchestratorv1.BuildTemplateRequest_ParentRootfs{ParentRootfs: true}
		dir, rts, _, err := b.nodeBuild(ctx, client, req)
		return dir, rts, err
	}
	// Probe the cache: a hit returns the template, or re-snapshots the layer.
	dir, rts, cached, err := b.nodeBuild(ctx, client, req)
	if err == nil {
		if cached {
			b.log(0, "info", fmt.Sprintf("all %d steps cached", len(spec.Steps)))
		}
		return dir, rts, nil
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		return "", nil, err
	}
	sbx, err := b.buildSandbox(ctx, nodeID, client, parent)
	if err != nil {
		return "", nil, err
	}
	defer b.dropSandbox(nodeID, client, sbx)
	runner := &steps.Runner{
		Envd:         &steps.Envd{URL: "http://" + net.JoinHostPort(sbx.address, "49983"), Token: sbx.token},
		Log:          b.log,
		MaxCopyBytes: 4 * s.cfg.MaxUploadBytes,
		Archive: func(ctx context.Context, hash string) (io.ReadCloser, error) {
			f, err := s.store.GetTemplateFile(ctx, b.tmpl.ID, hash)
			if err != nil || !f.Uploaded {
				return nil, fmt.Errorf("the files of a COPY step were not uploaded (hash %s)", hash)
			}
			return os.Open(f.Path)
		},
	}
	if _, err := runner.Run(ctx, spec); err != nil {
		return "", nil, err
	}
	req.Source = &orchestratorv1.BuildTemplateRequest_SandboxId{SandboxId: sbx.id}
	dir, rts, _, err = b.nodeBuild(ctx, client, req)
	return dir, rts, err
}

func forceSalt(spec steps.Spec, buildID string) string {
	force := spec.Force
	for _, st := range spec.Steps {
		force = force || st.Force
	}
	if force {
		return "#force-" + buildID
	}
	return ""
}

// insecureRegistry allows plain HTTP for loopback registries.
func (s *Server) insecureRegistry(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// nodeBuild calls the node's BuildTemplate, logging its progress lines.
func (b *buildRun) nodeBuild(ctx context.Context, client interface {
	BuildTemplate(context.Context, *connect.Request[orchestratorv1.BuildTemplateRequest]) (*connect.ServerStreamForClient[orchestratorv1.BuildTemplateResponse], error)
}, req *orchestratorv1.BuildTemplateRequest) (string, []string, bool, error) {
	stream, err := client.BuildTemplate(ctx, connect.NewRequest(req))
	if err != nil {
		return "", nil, false, err
	}
	defer stream.Close()
	for stream.Receive() {
		m := stream.Msg()
		if m.Log != "" {
			b.log(0, "info", m.Log)
		}
		if m.Dir != "" {
			return m.Dir, m.Runtimes, m.Cached, nil
		}
	}
	if err := stream.Err(); err != nil {
		return "", nil, false, err
	}
	return "", nil, false, errors.New("the node ended the build without a result")
}

type buildSandbox struct {
	id, address, token string
}

// buildSandbox starts a sandbox from the parent build. It is recorded in
// the store like any sandbox (so reconciliation keeps it) and expires with
// the build.
func (b *buildRun) buildSandbox(ctx context.Context, nodeID string, client interface {
	Create(context.Context, *connect.Request[orchestratorv1.CreateRequest]) (*connect.Response[orchestratorv1.CreateResponse], error)
}, parent store.TemplateBuild) (buildSandbox, error) {
	s := b.s
	token, err := randomToken(32)
	if err != nil {
		return buildSandbox{}, err
	}
	now := s.now()
	sb := store.Sandbox{
		ID: store.NewSandboxID(), TeamID: b.team, NodeID: nodeID, TemplateID: b.tmpl.ID, BuildID: b.build.ID,
		State: store.StateCreating, CPUCount: b.tmpl.CPUCount, MemoryMB: b.tmpl.MemoryMB, DiskMB: b.tmpl.DiskMB,
		Metadata: map[string]string{"cocoon.build": b.build.ID}, EnvdAccessToken: token, EnvdVersion: EnvdVersion,
		StartedAt: now, EndAt: now.Add(s.cfg.BuildTimeout), OnTimeout: store.OnTimeoutKill, AllowInternetAccess: true,
	}
	if err := s.store.CreateSandbox(ctx, &sb); err != nil {
		return buildSandbox{}, fmt.Errorf("record build sandbox: %w", err)
	}
	b.log(0, "info", "starting build sandbox "+sb.ID)
	resp, err := client.Create(ctx, connect.NewRequest(&orchestratorv1.CreateRequest{
		SandboxId: sb.ID, Template: &orchestratorv1.TemplateRef{TemplateId: b.tmpl.ID, BuildId: parent.ID, Dir: parent.ArtifactDir},
		Vcpus: uint32(sb.CPUCount), EnvdAccessToken: token, Egress: &orchestratorv1.Egress{},
	}))
	if err != nil {
		s.failSandbox(context.WithoutCancel(ctx), sb.ID, "build sandbox: "+connectMsg(err))
		return buildSandbox{}, fmt.Errorf("start build sandbox: %w", err)
	}
	n := resp.Msg.GetSandbox()
	_, err = store.Modify(ctx, s.store, sb.ID, func(cur *store.Sandbox) error {
		cur.State, cur.Runtime, cur.NodeData = store.StateRunning, n.GetRuntime(), nodeData(n)
		return nil
	})
	if err != nil {
		return buildSandbox{}, err
	}
	return buildSandbox{id: sb.ID, address: n.GetAddress(), token: token}, nil
}

// dropSandbox kills the build sandbox (the node may have done it already).
func (b *buildRun) dropSandbox(nodeID string, client interface {
	Kill(context.Context, *connect.Request[orchestratorv1.KillRequest]) (*connect.Response[orchestratorv1.KillResponse], error)
}, sbx buildSandbox) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.Kill(ctx, connect.NewRequest(&orchestratorv1.KillRequest{SandboxId: sbx.id, DeleteSnapshot: true})); err != nil {
		b.s.logger.Warn("kill build sandbox", "sandbox", sbx.id, "err", err)
	}
	if _, err := b.s.store.SetSandboxState(ctx, sbx.id, nil, store.StateKilled, "build finished"); err != nil {
		b.s.logger.Warn("record build sandbox killed", "sandbox", sbx.id, "err", err)
	}
}

func orInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
