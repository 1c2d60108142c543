package cocoon

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to an E2B-compatible API. It is safe for concurrent use.
type Client struct {
	cfg Config
}

// NewClient returns a Client for cfg; cfg's zero fields are read from the
// environment (see Config).
func NewClient(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Client{cfg: cfg}, nil
}

// Config returns the client's effective configuration.
func (c *Client) Config() Config { return c.cfg }

// State is the state of a sandbox.
type State string

// The states of a sandbox.
const (
	StateRunning State = "running"
	StatePaused  State = "paused"
)

// NetworkConfig restricts a sandbox's outbound traffic.
type NetworkConfig struct {
	// AllowOut and DenyOut are CIDRs or IPs; AllowOut wins over DenyOut.
	AllowOut []string `json:"allowOut,omitempty"`
	DenyOut  []string `json:"denyOut,omitempty"`
	// AllowPublicTraffic false makes the sandbox's ports require the
	// traffic access token.
	AllowPublicTraffic *bool `json:"allowPublicTraffic,omitempty"`
}

// CreateOptions are the options of Client.Create.
type CreateOptions struct {
	// Template is the template's ID or name; default "base".
	Template string
	// Timeout is how long the sandbox lives unless extended (SetTimeout);
	// 0 means the server's default (300 s on E2B).
	Timeout time.Duration
	// Metadata is returned by Info and List and filters List.
	Metadata map[string]string
	// Envs are environment variables of every command in the sandbox.
	Envs map[string]string
	// AllowInternetAccess false cuts the sandbox off the internet.
	AllowInternetAccess *bool
	// Network restricts outbound traffic.
	Network *NetworkConfig
	// AutoPause pauses the sandbox instead of killing it on timeout.
	AutoPause bool
	// Secure makes envd require the access token returned at create.
	Secure bool
}

// newSandboxRequest is the body of POST /v2/sandboxes.
type newSandboxRequest struct {
	TemplateID          string            `json:"templateID"`
	Timeout             int               `json:"timeout,omitempty"`
	Metadata            map[string]string `json:"metadata,omitempty"`
	EnvVars             map[string]string `json:"envVars,omitempty"`
	AutoPause           bool              `json:"autoPause,omitempty"`
	AllowInternetAccess *bool             `json:"allow_internet_access,omitempty"`
	Network             *NetworkConfig    `json:"network,omitempty"`
	Secure              bool              `json:"secure,omitempty"`
}

// sandboxReply is the API's answer to a create or a connect.
type sandboxReply struct {
	SandboxID          string `json:"sandboxID"`
	TemplateID         string `json:"templateID"`
	Alias              string `json:"alias"`
	ClientID           string `json:"clientID"`
	EnvdVersion        string `json:"envdVersion"`
	EnvdAccessToken    string `json:"envdAccessToken"`
	TrafficAccessToken string `json:"trafficAccessToken"`
	Domain             string `json:"domain"`
}

// debugSandboxID is the ID of Config.Debug's sandbox (the official SDKs').
const debugSandboxID = "debug_sandbox_id"

// Sandbox is a running sandbox: its commands, PTYs and files.
type Sandbox struct {
	// ID is the sandbox's ID.
	ID string
	// TemplateID is the template it was created from.
	TemplateID string
	// EnvdVersion is the version of envd inside it.
	EnvdVersion string
	// TrafficAccessToken authorizes requests to its ports when its
	// traffic is private.
	TrafficAccessToken string

	// Commands runs processes; PTY opens terminals; Files reads and
	// writes its filesystem.
	Commands *Commands
	PTY      *PTY
	Files    *Filesystem

	client      *Client
	accessToken string
	domain      string
}

func (c *Client) newSandbox(r sandboxReply) *Sandbox {
	s := &Sandbox{
		ID: r.SandboxID, TemplateID: r.TemplateID, EnvdVersion: r.EnvdVersion,
		TrafficAccessToken: r.TrafficAccessToken,
		client:             c, accessToken: r.EnvdAccessToken, domain: r.Domain,
	}
	s.Commands = &Commands{s: s}
	s.PTY = &PTY{s: s}
	s.Files = &Filesystem{s: s}
	return s
}

// Create starts a sandbox.
func (c *Client) Create(ctx context.Context, opts CreateOptions) (*Sandbox, error) {
	req := newSandboxRequest{
		TemplateID: opts.Template, Timeout: seconds(opts.Timeout),
		Metadata: opts.Metadata, EnvVars: opts.Envs, AutoPause: opts.AutoPause,
		AllowInternetAccess: opts.AllowInternetAccess, Network: opts.Network, Secure: opts.Secure,
	}
	if req.TemplateID == "" {
		req.TemplateID = "base"
	}
	if c.cfg.Debug {
		return c.newSandbox(sandboxReply{SandboxID: debugSandboxID, TemplateID: req.TemplateID}), nil
	}
	var r sandboxReply
	if _, err := c.api(ctx, http.MethodPost, "/v2/sandboxes", nil, req, &r); err != nil {
		return nil, fmt.Errorf("create sandbox from %q: %w", req.TemplateID, err)
	}
	return c.newSandbox(r), nil
}

// Connect returns the running sandbox id, resuming it first when it is
// paused. A timeout > 0 extends its life to at least that from now.
func (c *Client) Connect(ctx context.Context, id string, timeout time.Duration) (*Sandbox, error) {
	if c.cfg.Debug {
		return c.newSandbox(sandboxReply{SandboxID: id}), nil
	}
	var r sandboxReply
	body := map[string]int{}
	if t := seconds(timeout); t > 0 {
		body["timeout"] = t
	}
	if _, err := c.api(ctx, http.MethodPost, "/v2/sandboxes/"+url.PathEscape(id)+"/connect", nil, body, &r); err != nil {
		return nil, fmt.Errorf("connect to sandbox %s: %w", id, err)
	}
	return c.newSandbox(r), nil
}

// Attach returns a handle to the running sandbox id without an API call:
// the cheapest way to reach one whose ID is known. Calls through it fail
// with an *AuthError when the sandbox requires its envd access token
// (created with Secure; Connect returns it) and with an *APIError of
// Status 409 when it is paused (Connect resumes it).
func (c *Client) Attach(id, envdAccessToken string) *Sandbox {
	return c.newSandbox(sandboxReply{SandboxID: id, EnvdAccessToken: envdAccessToken})
}

// Resume resumes the paused sandbox id (a running one is left as it is).
func (c *Client) Resume(ctx context.Context, id string, timeout time.Duration) (*Sandbox, error) {
	return c.Connect(ctx, id, timeout)
}

// SandboxInfo describes a sandbox (Info, List).
type SandboxInfo struct {
	SandboxID   string            `json:"sandboxID"`
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	ClientID    string            `json:"clientID"`
	EnvdVersion string            `json:"envdVersion"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	State       State             `json:"state"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int               `json:"diskSizeMB"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

// Info describes sandbox id.
func (c *Client) Info(ctx context.Context, id string) (*SandboxInfo, error) {
	var info SandboxInfo
	if _, err := c.api(ctx, http.MethodGet, "/sandboxes/"+url.PathEscape(id), nil, nil, &info); err != nil {
		return nil, fmt.Errorf("info of sandbox %s: %w", id, err)
	}
	return &info, nil
}

// ListOptions filter and page List.
type ListOptions struct {
	// Metadata keeps the sandboxes whose metadata has all these pairs.
	Metadata map[string]string
	// States keeps the sandboxes in these states; default running and
	// paused.
	States []State
	// Limit is the page size (server default 100, at most 1000).
	Limit int
	// NextToken is SandboxPage.NextToken of the previous page.
	NextToken string
}

// SandboxPage is one page of List.
type SandboxPage struct {
	Sandboxes []SandboxInfo `json:"sandboxes"`
	// NextToken fetches the next page; empty on the last.
	NextToken string `json:"nextToken,omitempty"`
}

// List returns one page of the team's sandboxes.
func (c *Client) List(ctx context.Context, opts ListOptions) (*SandboxPage, error) {
	q := url.Values{}
	if len(opts.Metadata) > 0 {
		md := url.Values{}
		for k, v := range opts.Metadata {
			md.Set(k, v)
		}
		q.Set("metadata", md.Encode())
	}
	states := opts.States
	if len(states) == 0 {
		states = []State{StateRunning, StatePaused}
	}
	ss := make([]string, len(states))
	for i, s := range states {
		ss[i] = string(s)
	}
	q.Set("state", strings.Join(ss, ","))
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.NextToken != "" {
		q.Set("nextToken", opts.NextToken)
	}
	page := &SandboxPage{}
	h, err := c.api(ctx, http.MethodGet, "/v2/sandboxes", q, nil, &page.Sandboxes)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	page.NextToken = h.Get("X-Next-Token")
	return page, nil
}

// Kill kills sandbox id; a NotFoundError when there is none.
func (c *Client) Kill(ctx context.Context, id string) error {
	if c.cfg.Debug {
		return nil
	}
	if _, err := c.api(ctx, http.MethodDelete, "/sandboxes/"+url.PathEscape(id), nil, nil, nil); err != nil {
		return fmt.Errorf("kill sandbox %s: %w", id, err)
	}
	return nil
}

// SetTimeout makes sandbox id end timeout from now.
func (c *Client) SetTimeout(ctx context.Context, id string, timeout time.Duration) error {
	body := map[string]int{"timeout": seconds(timeout)}
	if _, err := c.api(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/timeout", nil, body, nil); err != nil {
		return fmt.Errorf("set timeout of sandbox %s: %w", id, err)
	}
	return nil
}

// Pause pauses sandbox id (its memory and disk are kept; Resume or
// Connect brings it back). An APIError with Status 409 when it is paused
// already.
func (c *Client) Pause(ctx context.Context, id string) error {
	if _, err := c.api(ctx, http.MethodPost, "/sandboxes/"+url.PathEscape(id)+"/pause", nil, nil, nil); err != nil {
		return fmt.Errorf("pause sandbox %s: %w", id, err)
	}
	return nil
}

// Metric is one sample of a sandbox's resource use.
type Metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// MetricsOptions bound Metrics; zero times are unbounded.
type MetricsOptions struct {
	Start, End time.Time
}

// Metrics returns sandbox id's samples, oldest first.
func (c *Client) Metrics(ctx context.Context, id string, opts MetricsOptions) ([]Metric, error) {
	q := url.Values{}
	if !opts.Start.IsZero() {
		q.Set("start", strconv.FormatInt(opts.Start.Unix(), 10))
	}
	if !opts.End.IsZero() {
		q.Set("end", strconv.FormatInt(opts.End.Unix(), 10))
	}
	var m []Metric
	if _, err := c.api(ctx, http.MethodGet, "/sandboxes/"+url.PathEscape(id)+"/metrics", q, nil, &m); err != nil {
		return nil, fmt.Errorf("metrics of sandbox %s: %w", id, err)
	}
	return m, nil
}

// LogEntry is one line of a sandbox's logs.
type LogEntry struct {
	Timestamp time.Time         `json:"timestamp"`
	Level     string            `json:"level"`
	Message   string            `json:"message"`
	Fields    map[string]string `json:"fields,omitempty"`
}

// LogsOptions bound Logs.
type LogsOptions struct {
	// Start leaves out entries before it.
	Start time.Time
	// Limit is the most entries returned (0: the server's default).
	Limit int
}

// Logs returns sandbox id's logs, oldest first.
func (c *Client) Logs(ctx context.Context, id string, opts LogsOptions) ([]LogEntry, error) {
	q := url.Values{}
	if !opts.Start.IsZero() {
		q.Set("start", strconv.FormatInt(opts.Start.UnixMilli(), 10))
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var r struct {
		LogEntries []LogEntry `json:"logEntries"`
	}
	if _, err := c.api(ctx, http.MethodGet, "/sandboxes/"+url.PathEscape(id)+"/logs", q, nil, &r); err != nil {
		return nil, fmt.Errorf("logs of sandbox %s: %w", id, err)
	}
	return r.LogEntries, nil
}

// Kill kills the sandbox.
func (s *Sandbox) Kill(ctx context.Context) error { return s.client.Kill(ctx, s.ID) }

// Info describes the sandbox.
func (s *Sandbox) Info(ctx context.Context) (*SandboxInfo, error) { return s.client.Info(ctx, s.ID) }

// SetTimeout makes the sandbox end timeout from now.
func (s *Sandbox) SetTimeout(ctx context.Context, timeout time.Duration) error {
	return s.client.SetTimeout(ctx, s.ID, timeout)
}

// Pause pauses the sandbox; Client.Resume or Client.Connect resumes it.
func (s *Sandbox) Pause(ctx context.Context) error { return s.client.Pause(ctx, s.ID) }

// Metrics returns the sandbox's samples.
func (s *Sandbox) Metrics(ctx context.Context, opts MetricsOptions) ([]Metric, error) {
	return s.client.Metrics(ctx, s.ID, opts)
}

// Logs returns the sandbox's logs.
func (s *Sandbox) Logs(ctx context.Context, opts LogsOptions) ([]LogEntry, error) {
	return s.client.Logs(ctx, s.ID, opts)
}

// seconds rounds d up to whole seconds.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}
