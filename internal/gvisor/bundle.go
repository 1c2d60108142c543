package gvisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cocoon-run/cocoon/internal/runtime"
)

// The subset of the OCI runtime spec (v1.0) the driver writes. Declared here
// rather than importing opencontainers/runtime-spec for a dozen fields.
type ociSpec struct {
	OCIVersion string     `json:"ociVersion"`
	Process    ociProcess `json:"process"`
	Root       ociRoot    `json:"root"`
	Hostname   string     `json:"hostname,omitempty"`
	Mounts     []ociMount `json:"mounts"`
	Linux      ociLinux   `json:"linux"`
}

type ociProcess struct {
	User         ociUser          `json:"user"`
	Capabilities *ociCapabilities `json:"capabilities,omitempty"`
	Args         []string         `json:"args"`
	Env          []string         `json:"env"`
	Cwd          string           `json:"cwd"`
}

type ociCapabilities struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Permitted   []string `json:"permitted"`
	Inheritable []string `json:"inheritable"`
}

// envdCaps are what envd needs to run commands as other users (setuid,
// setgid), own their files and signal them: the usual container set. An
// OCI process without a capabilities section has none at all.
var envdCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	// envd's /init sets the clone's hostname (sethostname needs it). It is
	// gVisor's own kernel that grants it, inside the sandbox boundary.
	"CAP_SYS_ADMIN",
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociLinux struct {
	Namespaces  []ociNamespace `json:"namespaces"`
	UIDMappings []ociIDMapping `json:"uidMappings,omitempty"`
	GIDMappings []ociIDMapping `json:"gidMappings,omitempty"`
	CgroupsPath string         `json:"cgroupsPath,omitempty"`
	Resources   *ociResources  `json:"resources,omitempty"`
}

type ociIDMapping struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

type ociNamespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

type ociResources struct {
	Memory  *ociMemory  `json:"memory,omitempty"`
	CPU     *ociCPU     `json:"cpu,omitempty"`
	Pids    *ociPids    `json:"pids,omitempty"`
	BlockIO *ociBlockIO `json:"blockIO,omitempty"`
}

type ociPids struct {
	Limit int64 `json:"limit"`
}

type ociBlockIO struct {
	ThrottleReadBpsDevice   []ociThrottle `json:"throttleReadBpsDevice,omitempty"`
	ThrottleWriteBpsDevice  []ociThrottle `json:"throttleWriteBpsDevice,omitempty"`
	ThrottleReadIOPSDevice  []ociThrottle `json:"throttleReadIOPSDevice,omitempty"`
	ThrottleWriteIOPSDevice []ociThrottle `json:"throttleWriteIOPSDevice,omitempty"`
}

type ociThrottle struct {
	Major int64  `json:"major"`
	Minor int64  `json:"minor"`
	Rate  uint64 `json:"rate"`
}

type ociMemory struct {
	Limit int64 `json:"limit"`
}

type ociCPU struct {
	Quota  int64  `json:"quota"`
	Period uint64 `json:"period"`
}

// envdArgs is the sandbox's init: envd itself, PID 1, which reaps orphans
// (envd/reaper). Under tini as PID 1, a root user's `kill -9 -1` killed
// envd (kill -1 spares only PID 1 and the caller) and the sandbox died.
var envdArgs = []string{"/usr/local/bin/envd"}

// cpuPeriod is the CFS period of the CPU limit, at its maximum (1 s): the
// quota is VCPUs × period, so the average limit is the same as with the
// usual 100 ms, but a restore's burst of work across both the sandbox's
// and runsc's threads is not throttled. With a 100 ms period a 1-vCPU
// restore took ≈ 800 ms to envd answering instead of ≈ 450 ms.
const cpuPeriod = 1_000_000 // µs

// bundleParams is what varies between the bundles the driver writes.
type bundleParams struct {
	hostname string
	rootfs   string
	netns    string
	cgroup   string // cgroupsPath, "" for none
	vcpus    int
	memoryMB int
	// hostID is the host uid and gid that the sandbox's root maps to in
	// its user namespace (IDRange ids from there); 0 for none: the
	// sandbox and gofer then run as host root.
	hostID uint32
	pids   int64       // pids.max of the sandbox's cgroup; 0 for none
	io     *ociBlockIO // blkio throttles; nil for none
}

// blockIO is the OCI form of l on disk major:minor.
func blockIO(major, minor int64, l runtime.IOLimit) *ociBlockIO {
	dev := func(rate uint64) []ociThrottle {
		if rate == 0 {
			return nil
		}
		return []ociThrottle{{Major: major, Minor: minor, Rate: rate}}
	}
	return &ociBlockIO{
		ThrottleReadBpsDevice: dev(l.ReadBps), ThrottleWriteBpsDevice: dev(l.WriteBps),
		ThrottleReadIOPSDevice: dev(l.ReadIOPS), ThrottleWriteIOPSDevice: dev(l.WriteIOPS),
	}
}

func newSpec(p bundleParams) ociSpec {
	s := ociSpec{
		OCIVersion: "1.0.0",
		Process: ociProcess{
			// Root inside, so that envd can run commands as any user.
			User: ociUser{UID: 0, GID: 0},
			Capabilities: &ociCapabilities{
				Bounding: envdCaps, Effective: envdCaps, Permitted: envdCaps, Inheritable: envdCaps,
			},
			Args: envdArgs,
			Env: []string{
				"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"HOME=/root",
			},
			Cwd: "/",
		},
		// Not read-only in the spec: runsc only puts its writable overlay
		// (--overlay2) over a root it may write, and then serves the lower
		// layer read-only, so the shared template tree is never written.
		Root:     ociRoot{Path: p.rootfs},
		Hostname: p.hostname,
		Mounts: []ociMount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: ociLinux{
			Namespaces: []ociNamespace{
				{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"},
				{Type: "network", Path: p.netns},
			},
			CgroupsPath: p.cgroup,
		},
	}
	if p.hostID != 0 {
		// runsc starts the gofer and the sandbox (sentry) in a new user
		// namespace with these mappings, as its root: host uid hostID.
		s.Linux.Namespaces = append(s.Linux.Namespaces, ociNamespace{Type: "user"})
		m := []ociIDMapping{{ContainerID: 0, HostID: p.hostID, Size: IDRange}}
		s.Linux.UIDMappings, s.Linux.GIDMappings = m, m
	}
	var res ociResources
	if p.memoryMB > 0 {
		res.Memory = &ociMemory{Limit: int64(p.memoryMB) << 20}
	}
	if p.vcpus > 0 {
		res.CPU = &ociCPU{Quota: int64(p.vcpus) * cpuPeriod, Period: cpuPeriod}
	}
	if p.pids > 0 {
		res.Pids = &ociPids{Limit: p.pids}
	}
	res.BlockIO = p.io
	if res.Memory != nil || res.CPU != nil || res.Pids != nil || res.BlockIO != nil {
		s.Linux.Resources = &res
	}
	return s
}

// bundleFingerprint hashes the part of the bundle that runsc checks at
// restore against the checkpoint (the process: capabilities, args, env;
// the namespaces and id mappings), so that a snapshot taken before a change
// to it is known to be stale. hostID is the driver's (0: as root).
func bundleFingerprint(hostID uint32) string {
	s := newSpec(bundleParams{hostID: hostID})
	b, _ := json.Marshal(s.Process)
	if hostID != 0 {
		// Appended only with a user namespace, so that snapshots of
		// drivers running as root keep the fingerprint they had.
		l, _ := json.Marshal([]any{s.Linux.Namespaces, s.Linux.UIDMappings, s.Linux.GIDMappings})
		b = append(b, l...)
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// writeBundle writes dir/config.json.
func writeBundle(dir string, p bundleParams) error {
	b, err := json.MarshalIndent(newSpec(p), "", "  ")
	if err != nil {
		return fmt.Errorf("encode oci spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		return fmt.Errorf("write oci spec: %w", err)
	}
	return nil
}
