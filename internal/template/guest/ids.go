package guest

import (
	"fmt"
	"os"
	"syscall"
)

// IDs is how many uids and gids a guest's tree holds: 0..65535, what a
// build sandbox or an image can map.
const IDs = 65536

// TreeHostID is the host uid and gid that a guest's root is shifted to in
// a tree unpacked from untrusted input (a build's export, an image's
// layers): its uid 1000 is host uid TreeHostID+1000, and so on for IDs
// ids. The range follows the gVisor sandboxes' (0x70000000) and the QEMU
// slots' (0x70010000); no process runs as any of these ids and no passwd
// entry may hold them (cocoon setup checks), so a setuid-root file of such
// a tree is setuid to a nobody on the host, not to root.
const TreeHostID = 0x70020000

// TreeBase returns the host id a tree's guest root is: the owner of the
// tree's root directory, which the guest sees as "/" owned by root. It is
// 0 for trees built on the host (the base template) and TreeHostID for
// unpacked ones; the drivers map base..base+IDs-1 onto what the sandbox
// sees as 0..IDs-1.
func TreeBase(tree string) (uint32, error) {
	fi, err := os.Stat(tree)
	if err != nil {
		return 0, fmt.Errorf("tree owner: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("tree owner: no owner for %s", tree)
	}
	if st.Uid != st.Gid {
		return 0, fmt.Errorf("tree owner: %s is owned by %d:%d, not a guest root", tree, st.Uid, st.Gid)
	}
	return st.Uid, nil
}

// TreeUserNS returns the process attributes of a child that works on a
// tree owned from hostID on as its own root: root of a new user namespace
// mapping 0..IDs-1 onto hostID..hostID+IDs-1, with no supplementary group
// of the host's. It holds no capability over anything the host's ids own.
func TreeUserNS(hostID uint32) *syscall.SysProcAttr {
	ids := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(hostID), Size: IDs}}
	return &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: ids, GidMappings: ids, GidMappingsEnableSetgroups: true,
		Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
}
