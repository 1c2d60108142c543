package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-run/cocoon/internal/gvisor"
	"github.com/cocoon-run/cocoon/internal/template/guest"
	"github.com/cocoon-run/cocoon/internal/vmm"
)

// idRange is a span of host uids or gids.
type idRange struct {
	name        string
	first, size uint64
}

// sandboxIDs are the host ids sandboxes run as (docs/decisions.md): the
// gVisor sandboxes' user namespace range and one uid per slot for QEMU,
// and the ids that own unpacked template trees. No account or subordinate
// id range of the host may hold them, or its owner could signal, trace or
// read the sandboxes' processes and files, or write template trees.
var sandboxIDs = []idRange{
	{"gVisor sandboxes", gvisor.DefaultHostID, gvisor.IDRange},
	{"QEMU sandboxes", vmm.DefaultUIDBase, 65536},
	{"template trees", guest.TreeHostID, guest.IDs},
}

// checkSandboxIDs reports every entry of etc/passwd, etc/group,
// etc/subuid and etc/subgid that overlaps sandboxIDs.
func checkSandboxIDs(etc string) error {
	var conflicts []string
	overlap := func(file, who string, first, size uint64) {
		for _, r := range sandboxIDs {
			if first < r.first+r.size && r.first < first+size {
				conflicts = append(conflicts, fmt.Sprintf("%s: %s holds ids %d-%d, in the %s' range %d-%d",
					file, who, first, first+size-1, r.name, r.first, r.first+r.size-1))
			}
		}
	}
	for _, f := range []struct {
		name string
		// field of the first id, field of the count (-1: one id)
		idField, sizeField int
	}{{"passwd", 2, -1}, {"group", 2, -1}, {"subuid", 1, 2}, {"subgid", 1, 2}} {
		file, err := os.Open(filepath.Join(etc, f.name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check sandbox ids: %w", err)
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) <= max(f.idField, f.sizeField) {
				continue
			}
			first, err := strconv.ParseUint(fields[f.idField], 10, 32)
			if err != nil {
				continue
			}
			size := uint64(1)
			if f.sizeField >= 0 {
				if size, err = strconv.ParseUint(fields[f.sizeField], 10, 32); err != nil {
					continue
				}
			}
			overlap(filepath.Join(etc, f.name), fields[0], first, size)
		}
		file.Close()
		if err := sc.Err(); err != nil {
			return fmt.Errorf("check sandbox ids: %w", err)
		}
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("sandbox ids taken on this host:\n  %s", strings.Join(conflicts, "\n  "))
	}
	return nil
}
