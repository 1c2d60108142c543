package fleet

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cocoon-run/cocoon/internal/store"
)

// Paths served by Handler.
const (
	HeartbeatPath  = "/nodes/heartbeat"
	AdminNodesPath = "/admin/nodes"
)

// Heartbeat is what a node sends every HeartbeatInterval.
type Heartbeat struct {
	ID           string   `json:"id"`
	URL          string   `json:"url"` // base URL of its node RPC
	Runtimes     []string `json:"runtimes"`
	VCPUs        int      `json:"vcpus"`
	MemoryMB     int64    `json:"memoryMB"`
	DiskMB       int64    `json:"diskMB"`
	UsedVCPUs    int      `json:"usedVCPUs"`
	UsedMemoryMB int64    `json:"usedMemoryMB"`
	UsedDiskMB   int64    `json:"usedDiskMB"`
	Sandboxes    int      `json:"sandboxes"`
	Warm         int      `json:"warm"`
	Templates    []string `json:"templates"`
	// Base is the node's current base template build. Built from the same
	// inputs it has the same build ID on every node; the api records the
	// first one it hears of (nodes cannot write to the store).
	Base *BaseBuild `json:"base,omitempty"`
}

// BaseBuild describes a node's base template build.
type BaseBuild struct {
	BuildID  string   `json:"buildID"`
	Dir      string   `json:"dir"`
	Runtimes []string `json:"runtimes"`
	VCPUs    int      `json:"vcpus"`
	MemoryMB int      `json:"memoryMB"`
	DiskMB   int      `json:"diskMB"`
}

// NodeJSON is a node as /admin/nodes and the heartbeat's reply show it.
type NodeJSON struct {
	Heartbeat
	State        string    `json:"state"`
	StateReason  string    `json:"stateReason,omitempty"`
	RegisteredAt time.Time `json:"registeredAt"`
	HeartbeatAt  time.Time `json:"heartbeatAt"`
}

func nodeJSON(n store.Node) NodeJSON {
	return NodeJSON{
		Heartbeat: Heartbeat{ID: n.ID, URL: n.URL, Runtimes: n.Runtimes, VCPUs: n.VCPUs, MemoryMB: n.MemoryMB, DiskMB: n.DiskMB,
			UsedVCPUs: n.UsedVCPUs, UsedMemoryMB: n.UsedMemoryMB, UsedDiskMB: n.UsedDiskMB, Sandboxes: n.Sandboxes, Warm: n.Warm,
			Templates: n.Templates},
		State: string(n.State), StateReason: n.StateReason, RegisteredAt: n.RegisteredAt, HeartbeatAt: n.HeartbeatAt,
	}
}

// maxTemplates bounds a heartbeat's template list (and its body).
const maxTemplates = 10000

// Handler serves the nodes' heartbeats (POST /nodes/heartbeat, with the
// node token as for the node RPC) and the admin's view and drain
// (GET /admin/nodes, POST /admin/nodes/{id}/drain and /undrain, with the
// admin token). Errors are {code, message}.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+HeartbeatPath, r.heartbeat)
	mux.HandleFunc("GET "+TemplateHoldersPath, r.templateHolders)
	mux.HandleFunc("GET "+AdminNodesPath, r.admin(r.listNodes))
	mux.HandleFunc("POST "+AdminNodesPath+"/{id}/drain", r.admin(r.setState(store.NodeDraining)))
	mux.HandleFunc("POST "+AdminNodesPath+"/{id}/undrain", r.admin(r.setState(store.NodeReady)))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}{status, msg})
}

func bearer(h http.Header) string {
	tok, _ := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	return tok
}

func tokenOK(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func (r *Registry) heartbeat(w http.ResponseWriter, req *http.Request) {
	if !tokenOK(bearer(req.Header), r.cfg.NodeToken) {
		writeError(w, http.StatusUnauthorized, "missing or wrong node token")
		return
	}
	var hb Heartbeat
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hb); err != nil {
		writeError(w, http.StatusBadRequest, "bad heartbeat: "+err.Error())
		return
	}
	if err := hb.validate(); err != nil {
		writeError(w, http.StatusBadRequest, "bad heartbeat: "+err.Error())
		return
	}
	// The control plane's clock stamps the beat: nodes' clocks may drift.
	n, err := r.cfg.Store.Heartbeat(req.Context(), store.Node{
		ID: hb.ID, URL: hb.URL, Runtimes: hb.Runtimes, VCPUs: hb.VCPUs, MemoryMB: hb.MemoryMB, DiskMB: hb.DiskMB,
		UsedVCPUs: hb.UsedVCPUs, UsedMemoryMB: hb.UsedMemoryMB, UsedDiskMB: hb.UsedDiskMB,
		Sandboxes: hb.Sandboxes, Warm: hb.Warm, Templates: hb.Templates, HeartbeatAt: r.cfg.Now(),
	})
	if err != nil {
		r.cfg.Logger.ErrorContext(req.Context(), "record heartbeat", "node", hb.ID, "err", err)
		writeError(w, http.StatusInternalServerError, "internal server error")
		return
	}
	if hb.Base != nil && r.cfg.OnBase != nil && r.newBase(hb.Base.BuildID) {
		if err := r.cfg.OnBase(req.Context(), *hb.Base); err != nil {
			r.forgetBase(hb.Base.BuildID)
			r.cfg.Logger.WarnContext(req.Context(), "record the base template a node has", "node", hb.ID, "build", hb.Base.BuildID, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, nodeJSON(n))
}

func (hb Heartbeat) validate() error {
	if hb.ID == "" || len(hb.ID) > 253 || strings.ContainsAny(hb.ID, "/ \t\n") {
		return fmt.Errorf("id %q: want a node name", hb.ID)
	}
	u, err := url.Parse(hb.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want http(s)://host:port of the node RPC", hb.URL)
	}
	if hb.VCPUs < 0 || hb.MemoryMB < 0 || hb.DiskMB < 0 || hb.UsedVCPUs < 0 || hb.UsedMemoryMB < 0 ||
		hb.UsedDiskMB < 0 || hb.Sandboxes < 0 || hb.Warm < 0 {
		return errors.New("negative capacity or load")
	}
	if b := hb.Base; b != nil && (b.BuildID == "" || b.Dir == "" || len(b.Runtimes) == 0 || b.VCPUs <= 0 || b.MemoryMB <= 0) {
		return errors.New("base: want buildID, dir, runtimes and a shape")
	}
	if len(hb.Templates) > maxTemplates {
		return fmt.Errorf("%d templates: at most %d", len(hb.Templates), maxTemplates)
	}
	return nil
}

func (r *Registry) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		tok := req.Header.Get("X-Admin-Token")
		if tok == "" {
			tok = bearer(req.Header)
		}
		if !tokenOK(tok, r.cfg.AdminToken) {
			writeError(w, http.StatusUnauthorized, "missing or wrong admin token")
			return
		}
		h(w, req)
	}
}

func (r *Registry) listNodes(w http.ResponseWriter, req *http.Request) {
	rows, err := r.cfg.Store.ListNodes(req.Context())
	if err != nil {
		r.cfg.Logger.ErrorContext(req.Context(), "list nodes", "err", err)
		writeError(w, http.StatusInternalServerError, "internal server error")
		return
	}
	out := make([]NodeJSON, 0, len(rows))
	for _, n := range rows {
		out = append(out, nodeJSON(n))
	}
	writeJSON(w, http.StatusOK, out)
}

func (r *Registry) setState(to store.NodeState) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		id := req.PathValue("id")
		cur, err := r.cfg.Store.GetNode(req.Context(), id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			writeError(w, http.StatusNotFound, fmt.Sprintf("node %q is not registered", id))
			return
		case err != nil:
			r.cfg.Logger.ErrorContext(req.Context(), "get node", "node", id, "err", err)
			writeError(w, http.StatusInternalServerError, "internal server error")
			return
		case cur.State == store.NodeLost:
			writeError(w, http.StatusConflict, fmt.Sprintf("node %q is lost; it is ready again when it heartbeats", id))
			return
		}
		reason := ""
		if to == store.NodeDraining {
			reason = "drained by an admin"
		}
		n, err := r.cfg.Store.SetNodeState(req.Context(), id, to, reason)
		if err != nil {
			r.cfg.Logger.ErrorContext(req.Context(), "set node state", "node", id, "err", err)
			writeError(w, http.StatusInternalServerError, "internal server error")
			return
		}
		r.cfg.Logger.InfoContext(req.Context(), "node state set by admin", "node", id, "state", to)
		// This replica places by the new state at once; others at their
		// next refresh (≤ 1 s).
		if err := r.Refresh(req.Context()); err != nil {
			r.cfg.Logger.WarnContext(req.Context(), "refresh nodes", "err", err)
		}
		writeJSON(w, http.StatusOK, nodeJSON(n))
	}
}
