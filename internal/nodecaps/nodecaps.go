// Package nodecaps reads the capability bounding set a Cocoon node runs
// with, which deploy/cocoon.service declares (CapabilityBoundingSet=), and
// runs a command under it with setpriv(1), so that the runtimes' tests can
// prove the set is enough for sandboxes.
package nodecaps

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Unit is deploy/cocoon.service relative to the repository root.
const Unit = "deploy/cocoon.service"

// FromUnit returns the capabilities of the CapabilityBoundingSet= line of
// the systemd unit at path, as setpriv names them ("net_admin").
func FromUnit(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "CapabilityBoundingSet=")
		if !ok {
			continue
		}
		var caps []string
		for _, c := range strings.Fields(v) {
			caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
		return caps, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read unit: %w", err)
	}
	return nil, errors.New("unit has no CapabilityBoundingSet= line")
}

// Command returns cmd run by setpriv with a bounding set of exactly caps.
func Command(caps []string, name string, args ...string) (*exec.Cmd, error) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, fmt.Errorf("setpriv (util-linux): %w", err)
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return exec.Command(setpriv, append([]string{"--bounding-set", set, "--", name}, args...)...), nil
}
