// Package placement chooses the orchestrator node for a new or resumed
// sandbox from the fleet's registry.
//
// A Snapshot is built from the registry's rows (store.Node) each time the
// control plane refreshes them, and answers Pick in O(K): every ready node
// that has the runtime and the free memory and disk is a candidate; the
// best of K candidates drawn at random (power of K choices), and of K drawn
// among the nodes holding the build, wins, scored by the free resources left after the
// sandbox lands plus a bonus when the node already holds the template's
// build (locality: no artifact fetch, warm page cache). Sampling keeps many
// api replicas, which all see the same registry, from piling onto the one
// emptiest node between two heartbeats; the snapshot also books what it
// placed until the next refresh replaces it.
//
// Measured (BenchmarkPick, 1,000 nodes, 2 cores shared): see bench/README.md.
package placement

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"

	"github.com/cocoon-run/cocoon/internal/store"
)

// DefaultK is how many candidates Pick compares.
const DefaultK = 5

// DefaultCPUOvercommit is how many vCPUs of sandboxes a node takes per host
// CPU: sandboxes of agents idle most of the time, so CPUs are shared, while
// memory and disk are never overcommitted. (A 2-CPU node takes 8 sandboxes
// of the base template's 2 vCPUs.)
const DefaultCPUOvercommit = 8

// localityBonus is added to the score of a node holding the build: a local
// build beats a remote one unless the remote node is markedly emptier.
const localityBonus = 0.25

// Request is the sandbox to place.
type Request struct {
	BuildID  string // the template build whose artifacts the sandbox starts from
	Runtime  string // required runtime ("" = any)
	VCPUs    int
	MemoryMB int64
	DiskMB   int64
	// Avoid excludes nodes (e.g. one that just failed this create).
	Avoid []string
}

// Options tune a Snapshot.
type Options struct {
	K             int     // candidates compared; <= 0 means DefaultK
	CPUOvercommit float64 // vCPUs per host CPU; <= 0 means DefaultCPUOvercommit
	// Rand draws the candidates; nil means a new unseeded source.
	Rand *rand.Rand
}

// Snapshot is the fleet as one refresh of the registry saw it. It is safe
// for concurrent use.
type Snapshot struct {
	opt Options

	mu      sync.Mutex
	nodes   []node
	byBuild map[string][]int // build ID -> indexes of the nodes holding it
	rng     *rand.Rand
}

type node struct {
	store.Node
	builds map[string]struct{}
}

// maxDraws bounds the random draws per wanted candidate before Pick falls
// back to a scan.
const maxDraws = 8

// New returns a snapshot of nodes.
func New(nodes []store.Node, opt Options) *Snapshot {
	if opt.K <= 0 {
		opt.K = DefaultK
	}
	if opt.CPUOvercommit <= 0 {
		opt.CPUOvercommit = DefaultCPUOvercommit
	}
	rng := opt.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	s := &Snapshot{opt: opt, rng: rng, nodes: make([]node, len(nodes)), byBuild: map[string][]int{}}
	for i, n := range nodes {
		b := make(map[string]struct{}, len(n.Templates))
		for _, id := range n.Templates {
			b[id] = struct{}{}
			s.byBuild[id] = append(s.byBuild[id], i)
		}
		s.nodes[i] = node{Node: n, builds: b}
	}
	return s
}

// NoNodeError says why no node could take a sandbox: the api answers 503
// with its message.
type NoNodeError struct {
	Nodes int // registered nodes
	// Why counts the nodes refused per reason ("draining", "lost", "no
	// gvisor runtime", "not enough memory", ...).
	Why map[string]int
}

func (e *NoNodeError) Error() string {
	if e.Nodes == 0 {
		return "no orchestrator node is registered"
	}
	reasons := make([]string, 0, len(e.Why))
	for r, n := range e.Why {
		reasons = append(reasons, fmt.Sprintf("%d %s", n, r))
	}
	slices.Sort(reasons)
	return fmt.Sprintf("%d nodes: %s", e.Nodes, strings.Join(reasons, ", "))
}

// refusal returns why n cannot take r, or "" if it can.
func (s *Snapshot) refusal(n *node, r Request) string {
	switch {
	case n.State == store.NodeDraining:
		return "draining"
	case n.State == store.NodeLost:
		return "lost"
	case n.State != store.NodeReady:
		return string(n.State)
	case slices.Contains(r.Avoid, n.ID):
		return "excluded"
	case r.Runtime != "" && !slices.Contains(n.Runtimes, r.Runtime):
		return "without runtime " + r.Runtime
	case n.MemoryMB-n.UsedMemoryMB < r.MemoryMB:
		return "short of memory"
	case n.DiskMB-n.UsedDiskMB < r.DiskMB:
		return "short of disk"
	case float64(n.UsedVCPUs+r.VCPUs) > float64(n.VCPUs)*s.opt.CPUOvercommit:
		return "short of vCPUs"
	}
	return ""
}

// score is higher for a better home: the free share of memory, disk and
// CPU left after the sandbox lands (the scarcest counts), plus locality.
func (s *Snapshot) score(n *node, r Request) float64 {
	frac := func(free, total float64) float64 {
		if total <= 0 {
			return 0
		}
		return free / total
	}
	cpuCap := float64(n.VCPUs) * s.opt.CPUOvercommit
	sc := min(
		frac(float64(n.MemoryMB-n.UsedMemoryMB-r.MemoryMB), float64(n.MemoryMB)),
		frac(float64(n.DiskMB-n.UsedDiskMB-r.DiskMB), float64(n.DiskMB)),
		frac(cpuCap-float64(n.UsedVCPUs+r.VCPUs), cpuCap),
	)
	if _, ok := n.builds[r.BuildID]; ok && r.BuildID != "" {
		sc += localityBonus
	}
	return sc
}

// Pick chooses a node for r and books r's resources on it in this
// snapshot, or returns a *NoNodeError.
//
// It draws up to K eligible candidates at random, and up to K more among
// the nodes holding the build, in O(K) draws: a fleet is mostly able to
// take a small sandbox. Only when the draws find nobody does it scan every
// node, to find the rare free one or to say why none can take it.
func (s *Snapshot) Pick(r Request) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.nodes) == 0 {
		return "", &NoNodeError{}
	}
	k := s.opt.K
	var buf [4 * DefaultK]int
	cand := buf[:0]
	draw := func(pool []int, n int) {
		found := 0
		for range maxDraws * k {
			if found == k {
				return
			}
			i := s.rng.IntN(n)
			if pool != nil {
				i = pool[i]
			}
			if s.refusal(&s.nodes[i], r) == "" {
				cand = append(cand, i)
				found++
			}
		}
	}
	draw(nil, len(s.nodes))
	if r.BuildID != "" {
		if pool := s.byBuild[r.BuildID]; len(pool) > 0 {
			draw(pool, len(pool))
		}
	}
	if len(cand) == 0 {
		why := map[string]int{}
		for i := range s.nodes {
			if reason := s.refusal(&s.nodes[i], r); reason != "" {
				why[reason]++
				continue
			}
			cand = append(cand, i)
			break
		}
		if len(cand) == 0 {
			return "", &NoNodeError{Nodes: len(s.nodes), Why: why}
		}
	}
	// Candidates come in random order: among equal scores (an idle fleet)
	// the first drawn wins, so ties spread instead of going to one node.
	best, bestScore := -1, 0.0
	for _, i := range cand {
		sc := s.score(&s.nodes[i], r)
		if best < 0 || sc > bestScore {
			best, bestScore = i, sc
		}
	}
	n := &s.nodes[best]
	n.UsedVCPUs += r.VCPUs
	n.UsedMemoryMB += r.MemoryMB
	n.UsedDiskMB += r.DiskMB
	n.Sandboxes++
	return n.ID, nil
}
