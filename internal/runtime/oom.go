package runtime

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ReasonOOM is the exit reason of a sandbox whose cgroup counted an OOM kill.
const ReasonOOM = "out of memory"

// ReasonExited is the exit reason of a sandbox whose runtime exited for no
// reason it could tell.
const ReasonExited = "runtime exited"

// ReasonKilled is the detail of a node's event for a sandbox killed on
// request (not a death): watchers that route to sandboxes (a fleet's
// proxies) drop their route; the api, which asked for the kill, ignores it.
const ReasonKilled = "killed"

// OOMKills returns how many processes the kernel's OOM killer killed in the
// memory cgroup rel (a path like "/cocoon-gvisor/<id>"): the oom_kill
// counter of memory.events (cgroup v2) or memory.oom_control (v1). It
// returns 0 when the cgroup or the counter does not exist.
func OOMKills(rel string) int {
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"} {
		if n := OOMKillsIn(filepath.Join(root, rel)); n > 0 {
			return n
		}
	}
	return 0
}

// OOMKillsIn is OOMKills for the cgroup directory dir.
func OOMKillsIn(dir string) int {
	for _, f := range []string{"memory.events", "memory.oom_control"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		if n, ok := counter(b, "oom_kill"); ok {
			return n
		}
	}
	return 0
}

// counter finds "name N" among the lines of b.
func counter(b []byte, name string) (int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == name {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return n, err == nil
		}
	}
	return 0, false
}
