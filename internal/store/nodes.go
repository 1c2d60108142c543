package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// NodeState is an orchestrator node's state in the fleet's registry.
type NodeState string

// Node states. A ready node takes new sandboxes; a draining one keeps its
// sandboxes but takes no new ones; a lost one missed its heartbeats and its
// sandboxes were reported dead ("node lost").
const (
	NodeReady    NodeState = "ready"
	NodeDraining NodeState = "draining"
	NodeLost     NodeState = "lost"
)

// Node is one orchestrator node of the fleet, as its last heartbeat told it.
type Node struct {
	ID       string
	URL      string   // base URL of the node RPC
	Runtimes []string // "gvisor", "qemu": runtimes it can start
	State    NodeState
	// StateReason says why a node is lost or draining.
	StateReason string

	// Capacity.
	VCPUs    int
	MemoryMB int64
	DiskMB   int64
	// Load: what the node's sandboxes hold, their number and the warm pool.
	UsedVCPUs    int
	UsedMemoryMB int64
	UsedDiskMB   int64
	Sandboxes    int
	Warm         int
	// Templates lists the build IDs whose artifacts are on the node.
	Templates []string

	RegisteredAt time.Time
	HeartbeatAt  time.Time
}

// NodeRegistry is the fleet's node registry. Heartbeats come from many api
// replicas at once: every write is a single statement or a compare-and-set.
type NodeRegistry interface {
	// Heartbeat records n's address, runtimes, capacity and load at
	// n.HeartbeatAt and returns the stored row. A new node is registered
	// ready; a lost node that heartbeats again is ready again (it reconciles
	// its sandboxes against the store); a draining node stays draining.
	Heartbeat(ctx context.Context, n Node) (Node, error)
	// GetNode returns a node; ErrNotFound if it never registered.
	GetNode(ctx context.Context, id string) (Node, error)
	// ListNodes returns every registered node, lost ones included, by ID.
	ListNodes(ctx context.Context) ([]Node, error)
	// SetNodeState moves a node to state with reason; ErrNotFound if none.
	SetNodeState(ctx context.Context, id string, state NodeState, reason string) (Node, error)
	// MarkLostNodes marks every node not lost whose last heartbeat is
	// before cutoff lost (with reason) and returns them. Each node is
	// returned by exactly one caller, however many run it at once.
	MarkLostNodes(ctx context.Context, cutoff time.Time, reason string) ([]Node, error)
}

const nodeCols = "id, url, runtimes, state, state_reason, vcpus, memory_mb, disk_mb, used_vcpus, used_memory_mb, used_disk_mb, sandboxes, warm, templates, registered_at, heartbeat_at"

func scanNode(sc scanner) (Node, error) {
	var (
		n             Node
		rts, tpls     string
		state         string
		regAt, beatAt int64
	)
	if err := sc.Scan(&n.ID, &n.URL, &rts, &state, &n.StateReason, &n.VCPUs, &n.MemoryMB, &n.DiskMB,
		&n.UsedVCPUs, &n.UsedMemoryMB, &n.UsedDiskMB, &n.Sandboxes, &n.Warm, &tpls, &regAt, &beatAt); err != nil {
		return Node{}, err
	}
	n.State = NodeState(state)
	n.RegisteredAt, n.HeartbeatAt = fromMicros(regAt), fromMicros(beatAt)
	if err := json.Unmarshal([]byte(rts), &n.Runtimes); err != nil {
		return Node{}, fmt.Errorf("node %s runtimes: %w", n.ID, err)
	}
	if err := json.Unmarshal([]byte(tpls), &n.Templates); err != nil {
		return Node{}, fmt.Errorf("node %s templates: %w", n.ID, err)
	}
	if n.Runtimes == nil {
		n.Runtimes = []string{}
	}
	if n.Templates == nil {
		n.Templates = []string{}
	}
	return n, nil
}

func (s *sqlStore) Heartbeat(ctx context.Context, n Node) (Node, error) {
	if n.ID == "" {
		return Node{}, errors.New("heartbeat: node id is required")
	}
	rts, err := listText(n.Runtimes)
	if err != nil {
		return Node{}, fmt.Errorf("heartbeat %s: %w", n.ID, err)
	}
	tpls, err := listText(n.Templates)
	if err != nil {
		return Node{}, fmt.Errorf("heartbeat %s: %w", n.ID, err)
	}
	at := micros(n.HeartbeatAt)
	// One statement: concurrent heartbeats through several api replicas
	// cannot interleave a read and a write. A lost node comes back ready;
	// a draining one stays draining.
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO nodes (`+nodeCols+`)
		VALUES (?, ?, ?, 'ready', '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
			url = excluded.url, runtimes = excluded.runtimes,
			vcpus = excluded.vcpus, memory_mb = excluded.memory_mb, disk_mb = excluded.disk_mb,
			used_vcpus = excluded.used_vcpus, used_memory_mb = excluded.used_memory_mb, used_disk_mb = excluded.used_disk_mb,
			sandboxes = excluded.sandboxes, warm = excluded.warm, templates = excluded.templates,
			heartbeat_at = excluded.heartbeat_at,
			state = CASE WHEN nodes.state = 'lost' THEN 'ready' ELSE nodes.state END,
			state_reason = CASE WHEN nodes.state = 'lost' THEN '' ELSE nodes.state_reason END`),
		n.ID, n.URL, rts, n.VCPUs, n.MemoryMB, n.DiskMB, n.UsedVCPUs, n.UsedMemoryMB, n.UsedDiskMB,
		n.Sandboxes, n.Warm, tpls, at, at)
	if err != nil {
		return Node{}, fmt.Errorf("heartbeat %s: %w", n.ID, err)
	}
	return s.GetNode(ctx, n.ID)
}

func (s *sqlStore) GetNode(ctx context.Context, id string) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return Node{}, fmt.Errorf("get node %s: %w", id, err)
	}
	return n, nil
}

func (s *sqlStore) ListNodes(ctx context.Context) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT "+nodeCols+" FROM nodes ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, fmt.Errorf("list nodes: %w", err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

func (s *sqlStore) SetNodeState(ctx context.Context, id string, state NodeState, reason string) (Node, error) {
	switch state {
	case NodeReady, NodeDraining, NodeLost:
	default:
		return Node{}, fmt.Errorf("set node %s state: unknown state %q", id, state)
	}
	if err := s.execOne(ctx, "UPDATE nodes SET state = ?, state_reason = ? WHERE id = ?", string(state), reason, id); err != nil {
		return Node{}, fmt.Errorf("set node %s state: %w", id, err)
	}
	return s.GetNode(ctx, id)
}

func (s *sqlStore) MarkLostNodes(ctx context.Context, cutoff time.Time, reason string) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes WHERE state <> 'lost' AND heartbeat_at < ? ORDER BY id"), micros(cutoff))
	if err != nil {
		return nil, fmt.Errorf("mark lost nodes: %w", err)
	}
	var stale []Node
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("mark lost nodes: %w", err)
		}
		stale = append(stale, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("mark lost nodes: %w", err)
	}
	var lost []Node
	for _, n := range stale {
		// Compare-and-set on the heartbeat seen: a node that beat since, or
		// another replica that marked it first, makes this a no-op.
		err := s.execOne(ctx, "UPDATE nodes SET state = 'lost', state_reason = ? WHERE id = ? AND state <> 'lost' AND heartbeat_at = ?",
			reason, n.ID, micros(n.HeartbeatAt))
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return lost, fmt.Errorf("mark node %s lost: %w", n.ID, err)
		}
		n.State, n.StateReason = NodeLost, reason
		lost = append(lost, n)
	}
	return lost, nil
}
