// Package store is Cocoon's persistence: teams, API keys, sandboxes, templates
// and their builds, and sandbox metrics, kept in SQLite (embedded, the default
// for one node) or PostgreSQL (shared by many nodes).
//
// Both backends run the same SQL through database/sql; the dialects differ only
// in placeholder syntax and connection setup. Times are stored as BIGINT unix
// microseconds (UTC), maps and lists as JSON TEXT, so the schema is portable and
// one set of migrations (migrations/NNNN_name.sql, applied by Open in one
// transaction and recorded in schema_migrations) serves both.
//
// Values read back are normalised: times are UTC at microsecond precision
// (zero stays zero), nil maps and lists come back empty but non-nil, and an
// empty json.RawMessage comes back nil.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors returned by every Store method; test with errors.Is.
var (
	// ErrNotFound means the row does not exist (or is not visible to the team).
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means a compare-and-set lost (version or state moved) or a
	// unique key (ID, alias, key hash) is already taken.
	ErrConflict = errors.New("store: conflict")
	// ErrBadToken means a list page token is malformed.
	ErrBadToken = errors.New("store: invalid page token")
)

// Store is Cocoon's persistent state. Implementations are safe for concurrent
// use by many goroutines and, for PostgreSQL, by many processes.
type Store interface {
	// Close releases the database connections.
	Close() error

	// The fleet's orchestrator nodes (nodes.go).
	NodeRegistry

	// Lifecycle events and webhooks (events.go).
	EventStore

	// Teams.
	CreateTeam(ctx context.Context, t Team) error
	GetTeam(ctx context.Context, id string) (Team, error)
	ListTeams(ctx context.Context) ([]Team, error)

	// API keys. Only the SHA-256 of a key is stored (see HashAPIKey).
	CreateAPIKey(ctx context.Context, k APIKey) error
	// APIKeyByHash finds a key by HashAPIKey(plaintext); ErrNotFound if none.
	APIKeyByHash(ctx context.Context, hash string) (APIKey, error)
	ListAPIKeys(ctx context.Context, teamID string) ([]APIKey, error)
	// TouchAPIKey records a use of the key.
	TouchAPIKey(ctx context.Context, id string, at time.Time) error
	DeleteAPIKey(ctx context.Context, teamID, id string) error

	// Sandboxes. Rows are never deleted: a killed sandbox keeps its row (state
	// killed) as a tombstone so its ID is never handed out again.
	//
	// CreateSandbox inserts sb with Version 1 and sets sb.Version and
	// sb.UpdatedAt; ErrConflict if the ID was ever used.
	CreateSandbox(ctx context.Context, sb *Sandbox) error
	// GetSandbox returns a sandbox of any team: callers serving a team must
	// compare TeamID themselves (and answer 404 on mismatch).
	GetSandbox(ctx context.Context, id string) (Sandbox, error)
	// UpdateSandbox writes every mutable field of sb if the stored row still has
	// sb.Version, then increments sb.Version and sets sb.UpdatedAt.
	// ErrConflict if the version moved, ErrNotFound if there is no such row.
	// ID and TeamID are never changed. See also Modify.
	UpdateSandbox(ctx context.Context, sb *Sandbox) error
	// SetSandboxState moves a sandbox to state `to` (with reason, for dead and
	// error) only if its current state is one of from (any state if from is
	// empty), and returns the updated row. ErrConflict if the state is not in
	// from, ErrNotFound if there is no such row.
	SetSandboxState(ctx context.Context, id string, from []SandboxState, to SandboxState, reason string) (Sandbox, error)
	// ListSandboxes returns one page, newest StartedAt first, and the token of
	// the next page ("" when this is the last one).
	ListSandboxes(ctx context.Context, f SandboxFilter) (page []Sandbox, next string, err error)
	// ListExpired returns running sandboxes whose EndAt is at or before now,
	// for the lifecycle loop to kill or pause according to OnTimeout.
	ListExpired(ctx context.Context, now time.Time) ([]Sandbox, error)
	// CountSandboxes counts the sandboxes of every team by state, killed
	// tombstones included (for the cocoon_sandboxes gauge).
	CountSandboxes(ctx context.Context) (map[SandboxState]int, error)

	// Templates. A template is visible to its team, and to everyone if Public.
	// Aliases are globally unique; CreateTemplate returns ErrConflict if an ID
	// or alias is taken. Put the SDK's template name in Aliases to resolve it.
	CreateTemplate(ctx context.Context, t Template) error
	// GetTemplate returns a template by ID, of any team.
	GetTemplate(ctx context.Context, id string) (Template, error)
	// ResolveTemplate finds a template by ID or alias that teamID may use
	// (owned or public); ErrNotFound otherwise.
	ResolveTemplate(ctx context.Context, ref, teamID string) (Template, error)
	// ListTemplates returns the templates owned by teamID, newest first.
	ListTemplates(ctx context.Context, teamID string) ([]Template, error)
	// UpdateTemplate replaces name, aliases, public and the resource shape.
	UpdateTemplate(ctx context.Context, t Template) error
	// DeleteTemplate deletes a template with its aliases, builds, build logs
	// and file records.
	DeleteTemplate(ctx context.Context, id string) error

	// Template builds.
	CreateBuild(ctx context.Context, b TemplateBuild) error
	GetBuild(ctx context.Context, id string) (TemplateBuild, error)
	ListBuilds(ctx context.Context, templateID string) ([]TemplateBuild, error)
	// UpdateBuild writes status, reason, runtimes, artifact dir, spec, envd
	// version and finished time.
	UpdateBuild(ctx context.Context, b TemplateBuild) error
	// LatestReadyBuild resolves ref ("<template>" or "<template>:<tag>")
	// like ResolveTemplate and returns its most
	// recently finished ready build; ErrNotFound if it has none.
	LatestReadyBuild(ctx context.Context, ref, teamID string) (Template, TemplateBuild, error)
	// AppendBuildLog appends entries to a build's log, numbering them (Seq)
	// from 0 in order of arrival.
	AppendBuildLog(ctx context.Context, buildID string, entries ...BuildLogEntry) error
	// BuildLogs returns the entries with Seq >= offset, in order; limit <= 0
	// means all. The SDK's logsOffset is exactly this offset.
	BuildLogs(ctx context.Context, buildID string, offset, limit int) ([]BuildLogEntry, error)

	// Template files: the SDK's COPY steps upload a tar.gz per content hash.
	// PutTemplateFile inserts or replaces the record for (TemplateID, SHA256).
	PutTemplateFile(ctx context.Context, f TemplateFile) error
	GetTemplateFile(ctx context.Context, templateID, sha256 string) (TemplateFile, error)

	// Sandbox metrics.
	// InsertMetrics stores samples; a sample for an existing (sandbox, ts) is
	// ignored.
	InsertMetrics(ctx context.Context, ms ...Metric) error
	// Metrics returns a sandbox's samples with start <= Timestamp <= end,
	// oldest first. A zero start or end leaves that side open.
	Metrics(ctx context.Context, sandboxID string, start, end time.Time) ([]Metric, error)
	// PruneMetrics deletes samples older than before and reports how many.
	PruneMetrics(ctx context.Context, before time.Time) (int64, error)
}

// Team owns API keys, sandboxes and templates.
type Team struct {
	ID        string
	Name      string
	CreatedAt time.Time
}

// APIKey is a team's credential. The plaintext is shown once at creation and
// only its SHA-256 (Hash, hex) is kept: keys are 160+ random bits, so a fast
// unsalted hash is enough and allows lookup by hash.
type APIKey struct {
	ID         string
	TeamID     string
	Name       string
	Hash       string // hex SHA-256 of the plaintext key, see HashAPIKey
	Prefix     string // first characters of the key, for display
	CreatedAt  time.Time
	LastUsedAt time.Time // zero if never used
}

// SandboxState is the lifecycle state of a sandbox.
type SandboxState string

// Sandbox states. Killed, dead and error are final.
const (
	StateCreating SandboxState = "creating"
	StateRunning  SandboxState = "running"
	StatePausing  SandboxState = "pausing"
	StatePaused   SandboxState = "paused"
	StateResuming SandboxState = "resuming"
	StateKilled   SandboxState = "killed"
	StateDead     SandboxState = "dead"  // the VM died on its own; see StateReason
	StateError    SandboxState = "error" // a lifecycle operation failed; see StateReason
)

// TimeoutAction is what the lifecycle loop does when a sandbox expires.
type TimeoutAction string

// Timeout actions.
const (
	OnTimeoutKill  TimeoutAction = "kill"
	OnTimeoutPause TimeoutAction = "pause"
)

// Sandbox is one sandbox's record.
type Sandbox struct {
	ID         string // lowercase alphanumeric, see NewSandboxID
	TeamID     string
	NodeID     string // node whose orchestrator owns it ("" while paused elsewhere)
	TemplateID string
	BuildID    string
	Alias      string // template alias the sandbox was created from
	Runtime    string // "qemu" or "gvisor"

	State       SandboxState
	StateReason string // why dead/error

	CPUCount int
	MemoryMB int
	DiskMB   int

	Metadata map[string]string
	EnvVars  map[string]string

	EnvdAccessToken    string
	TrafficAccessToken string
	EnvdVersion        string

	StartedAt  time.Time
	EndAt      time.Time // expiry deadline
	OnTimeout  TimeoutAction
	AutoResume bool

	AllowInternetAccess bool
	AllowOut            []string
	DenyOut             []string
	// RequireTrafficToken: created with network.allowPublicTraffic = false;
	// the proxy demands TrafficAccessToken on every port.
	RequireTrafficToken bool

	// NodeData is free-form JSON owned by the node (slot, host address...).
	NodeData json.RawMessage
	// SnapshotURI locates the pause snapshot in the snapshot store.
	SnapshotURI string

	UpdatedAt time.Time
	Version   int64 // optimistic concurrency, see UpdateSandbox
}

// SandboxFilter selects sandboxes for ListSandboxes. Empty fields match all.
type SandboxFilter struct {
	TeamID   string
	NodeID   string
	States   []SandboxState
	Metadata map[string]string // every pair must be present in Metadata
	Limit    int               // page size; <= 0 means 100
	Next     string            // token from a previous page
}

// Template is a buildable sandbox image with a resource shape.
type Template struct {
	ID        string
	TeamID    string
	Name      string
	Aliases   []string
	Public    bool
	CPUCount  int
	MemoryMB  int
	DiskMB    int
	CreatedAt time.Time
}

// BuildStatus is the status of a template build, as the SDK polls it.
type BuildStatus string

// Build statuses.
const (
	BuildWaiting  BuildStatus = "waiting"
	BuildBuilding BuildStatus = "building"
	BuildReady    BuildStatus = "ready"
	BuildError    BuildStatus = "error"
)

// TemplateBuild is one build of a template.
type TemplateBuild struct {
	ID         string
	TemplateID string
	Status     BuildStatus
	Reason     string
	Runtimes   []string // runtimes the artifacts exist for ("qemu", "gvisor")
	// Tags name the build: "<template>:<tag>" resolves to the newest ready
	// build with the tag ("default" and no tag: the newest ready build).
	Tags        []string
	ArtifactDir string
	// Spec is the build request as JSON (fromImage/fromTemplate, startCmd,
	// readyCmd, steps...).
	Spec        json.RawMessage
	EnvdVersion string
	CreatedAt   time.Time
	FinishedAt  time.Time // zero until ready or error
}

// BuildLogEntry is one line of a build's log.
type BuildLogEntry struct {
	Seq       int // assigned by AppendBuildLog
	Timestamp time.Time
	Level     string
	Message   string
	Step      string
}

// TemplateFile records an uploaded COPY archive of a template by content hash.
type TemplateFile struct {
	TemplateID string
	SHA256     string
	Path       string // where the archive is (or will be) stored
	Uploaded   bool
	CreatedAt  time.Time
}

// Metric is one resource sample of a sandbox.
type Metric struct {
	SandboxID  string
	Timestamp  time.Time
	CPUCount   int
	CPUUsedPct float64
	MemUsed    int64 // bytes
	MemTotal   int64
	MemCache   int64
	DiskUsed   int64
	DiskTotal  int64
}
