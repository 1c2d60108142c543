package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/nodeauth"
	"github.com/cocoon-run/cocoon/internal/template/base"
	"github.com/cocoon-run/cocoon/internal/template/cache"
	"github.com/cocoon-run/cocoon/internal/template/oci"
	"github.com/cocoon-run/cocoon/internal/template/rootfs"
)

// Custom templates across nodes (issue 14, docs/fleet.md). A custom
// template is named outside its node by its ref, "custom/<cache key>",
// relative to a node's template root: the store holds refs, not paths. A
// node asked for a ref it lacks fetches the template's artifact from a node
// that has it (Config.FetchTemplate: the root filesystem tree, kernel,
// initrd, manifest and the build's snapshot parameters, never a snapshot,
// which is the node's own) and snapshots it itself before the create goes
// on. Absolute paths (the base template, whose build every node makes
// itself; rows written before refs) are used as they are.

// customKind is the cache kind (directory under the template root) of
// custom templates; a ref is customKind + "/" + key.
const customKind = "custom"

// snapshotFile holds what a template's snapshot needs besides its files
// (start and ready commands, environment): a node that fetches the
// template takes the snapshot again with it.
const snapshotFile = "snapshot.json"

// artifactFiles are what a node sends of a custom template.
var artifactFiles = []string{base.ManifestFile, snapshotFile, base.KernelFile, base.InitrdFile, base.RootfsDir}

// snapshotParams is snapshotFile's content.
type snapshotParams struct {
	StartCmd      string            `json:"startCmd,omitempty"`
	ReadyCmd      string            `json:"readyCmd,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Workdir       string            `json:"workdir,omitempty"`
	User          string            `json:"user,omitempty"`
	ReadyTimeoutS int               `json:"readyTimeoutS,omitempty"`
}

func (s snapshotParams) build() BuildParams {
	return BuildParams{StartCmd: s.StartCmd, ReadyCmd: s.ReadyCmd, Env: s.Env, Workdir: s.Workdir, User: s.User,
		ReadyTimeout: time.Duration(s.ReadyTimeoutS) * time.Second}
}

func writeSnapshotParams(dir string, p BuildParams) error {
	b, err := json.Marshal(snapshotParams{StartCmd: p.StartCmd, ReadyCmd: p.ReadyCmd, Env: p.Env, Workdir: p.Workdir,
		User: p.User, ReadyTimeoutS: int(p.ReadyTimeout / time.Second)})
	if err != nil {
		return err
	}
	// The environment may hold a tenant's values: root only.
	return os.WriteFile(filepath.Join(dir, snapshotFile), b, 0o600)
}

// CustomRef is the ref of the custom template built under key.
func CustomRef(key string) string { return customKind + "/" + key }

// refKey returns the cache key of a custom template's ref.
func refKey(ref string) (string, bool) {
	key, ok := strings.CutPrefix(ref, customKind+"/")
	return key, ok && validKey(key)
}

// ResolveTemplate returns the directory of the template ref names on this
// node: an absolute path as it is; a custom template's ref under the
// template root, fetched (Config.FetchTemplate) and snapshotted first if
// the node lacks it. The first create of a template on a node pays for it
// (fetch + snapshot; see bench/README.md); others wait for that one.
func (o *Orchestrator) ResolveTemplate(ctx context.Context, ref string) (string, error) {
	if filepath.IsAbs(ref) {
		return ref, nil
	}
	key, ok := refKey(ref)
	if !ok {
		return "", fmt.Errorf("template ref %q: want an absolute path or %s/<key>: %w", ref, customKind, ErrNotFound)
	}
	dir := filepath.Join(o.templateRoot(), customKind, key)
	if o.snapshotted(dir) {
		return dir, nil
	}
	o.fetchMu.Lock()
	defer o.fetchMu.Unlock()
	if o.snapshotted(dir) {
		return dir, nil
	}
	if err := o.fetchTemplate(ctx, ref, key); err != nil {
		return "", fmt.Errorf("template %s: %w", ref, err)
	}
	return dir, nil
}

// snapshotted tells whether the template in dir has a snapshot for a
// runtime of this node (the one it was built for, or the default one it was
// fetched for); a node without runtimes has nothing to snapshot.
func (o *Orchestrator) snapshotted(dir string) bool {
	t, err := base.Load(dir)
	return err == nil && (len(o.cfg.Runtimes) == 0 || len(o.snapshotRuntimes(t)) > 0)
}

// fetchRuntimes are the runtimes a fetched template is snapshotted for:
// the node's default (a node that can run QEMU under TCG as well as gVisor
// would spend minutes on a snapshot no create asks for).
func (o *Orchestrator) fetchRuntimes() []string {
	if o.cfg.Default == "" {
		return nil
	}
	return []string{o.cfg.Default}
}

// fetchTemplate makes the custom template key on this node: its files from
// a node that has them (unless they are here already, e.g. built here for
// fewer runtimes), then its snapshots.
func (o *Orchestrator) fetchTemplate(ctx context.Context, ref, key string) error {
	start := time.Now()
	names := o.fetchRuntimes()
	dir, hit, err := cache.Ensure(ctx, o.templateRoot(), customKind, key, func(ctx context.Context, dir string) error {
		if o.cfg.FetchTemplate == nil {
			return fmt.Errorf("not on this node, and the node is in no fleet to fetch it from: %w", ErrNotFound)
		}
		rc, err := o.cfg.FetchTemplate(ctx, ref)
		if err != nil {
			return err
		}
		defer rc.Close()
		// The sending node is authenticated by the node token; its stream is
		// still unpacked as untrusted (no devices, no writes through links):
		// the tree came out of a tenant's build sandbox.
		if err := oci.Extract(rc, dir, oci.ExtractOptions{}); err != nil {
			return fmt.Errorf("unpack: %w", err)
		}
		t, err := base.Load(dir)
		if err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dir, snapshotFile)); err != nil {
			return fmt.Errorf("the artifact has no %s: %w", snapshotFile, err)
		}
		// The ext4 image is made again from the tree rather than sent (it is
		// a sparse file of the template's disk size); only microVMs boot it.
		if slices.ContainsFunc(names, func(n string) bool { return n != gvisor.Name }) {
			if err := rootfs.MakeExt4(ctx, t.RootfsDir, t.RootfsImage, t.DiskMB); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	fetched := time.Since(start)
	t, err := base.Load(dir)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, snapshotFile))
	if err != nil {
		return fmt.Errorf("snapshot parameters: %w", err)
	}
	var sp snapshotParams
	if err := json.Unmarshal(b, &sp); err != nil {
		return fmt.Errorf("snapshot parameters: %w", err)
	}
	progress := func(line string) { o.log.Info("template snapshot", "ref", ref, "step", line) }
	t.BeforeSnapshot = beforeSnapshot(sp.build(), progress)
	if err := SnapshotTemplate(ctx, o.cfg.Slots, o.cfg.Runtimes, t, names, progress); err != nil {
		return err
	}
	o.log.Info("template from another node", "ref", ref, "fetched", !hit, "fetch", fetched.Round(time.Millisecond),
		"total", time.Since(start).Round(time.Millisecond))
	return nil
}

// CustomTemplates lists the refs of the custom templates this node holds
// with snapshots, for its heartbeat: other nodes fetch them from here.
func (o *Orchestrator) CustomTemplates() []string {
	entries, _ := os.ReadDir(filepath.Join(o.templateRoot(), customKind))
	var refs []string
	for _, e := range entries {
		if !e.IsDir() || !validKey(e.Name()) {
			continue
		}
		dir := filepath.Join(o.templateRoot(), customKind, e.Name())
		if _, err := os.Stat(filepath.Join(dir, snapshotFile)); err == nil && o.snapshotted(dir) {
			refs = append(refs, CustomRef(e.Name()))
		}
	}
	return refs
}

// WriteTemplate writes the artifact of the custom template ref as a tar
// stream to w: what another node needs to snapshot it (artifactFiles).
// ErrNotFound if this node does not hold it.
func (o *Orchestrator) WriteTemplate(ctx context.Context, ref string, w io.Writer) error {
	key, ok := refKey(ref)
	if !ok {
		return fmt.Errorf("template ref %q: %w", ref, ErrNotFound)
	}
	dir := filepath.Join(o.templateRoot(), customKind, key)
	for _, f := range artifactFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return fmt.Errorf("template %s: %w", ref, ErrNotFound)
		}
	}
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "tar", append([]string{"--numeric-owner", "-cpf", "-", "-C", dir}, artifactFiles...)...)
	cmd.Stdout, cmd.Stderr = w, &limitWriter{w: &stderr, n: 4096}
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 1 {
			return nil // files changed while being read: the tree is not written to
		}
		return fmt.Errorf("tar template %s: %w: %s", ref, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// TemplatePath is where a node serves its custom templates' artifacts to
// other nodes: GET TemplatePath + ref, with the node token.
const TemplatePath = "/node/templates/"

// NewTemplateHandler serves WriteTemplate at TemplatePath, beside the node
// RPC and with its token (an empty token is refused as for the RPC).
func NewTemplateHandler(o *Orchestrator, token string) (string, http.Handler, error) {
	if token == "" {
		return "", nil, errors.New("template handler: empty node token")
	}
	return TemplatePath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !nodeauth.Valid(r.Header, token) {
			http.Error(w, "missing or wrong node token", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		ref := strings.TrimPrefix(r.URL.Path, TemplatePath)
		if _, ok := refKey(ref); !ok {
			http.Error(w, fmt.Sprintf("template %q not here", ref), http.StatusNotFound)
			return
		}
		// Headers go out with the first bytes: a missing template is found
		// before, a failure after cuts the stream (the receiver's tar reader
		// then fails instead of taking a short tree).
		w.Header().Set("Content-Type", "application/x-tar")
		err := o.WriteTemplate(r.Context(), ref, &headerOnWrite{w: w})
		switch {
		case errors.Is(err, ErrNotFound):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			o.log.Warn("serve template", "ref", ref, "err", err)
			panic(http.ErrAbortHandler)
		}
	}), nil
}

// headerOnWrite writes a 200 with the first bytes, so that an error found
// before any (a template not here) can still answer 404.
type headerOnWrite struct {
	w       http.ResponseWriter
	written bool
}

func (h *headerOnWrite) Write(p []byte) (int, error) {
	if !h.written {
		h.written = true
		h.w.WriteHeader(http.StatusOK)
	}
	return h.w.Write(p)
}
