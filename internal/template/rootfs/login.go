package rootfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// loginEdits make a login shell fork nothing before its command. Every
// commands.run of the E2B SDK is one (/bin/bash -l -c CMD): it reads
// /etc/profile and the account's ~/.profile first, and each $(...) there
// is a fork and an exec, ≈ 18 ms apiece in a gVisor sandbox against
// ≈ 1 ms on a host. The edits keep what the scripts set (PATH and the
// rest); a file or line an image lacks is left alone.
var loginEdits = []struct{ path, old, new string }{
	// Debian's and Ubuntu's /etc/profile ask id(1) for the uid to choose
	// root's PATH; bash knows it (EUID), other shells still ask.
	{"etc/profile", `"$(id -u)"`, `"${EUID:-$(id -u)}"`},
	// root's ~/.profile runs mesg(1) at every login, terminal or not.
	{"root/.profile", "\nmesg n 2> /dev/null || true", "\n[ ! -t 0 ] || mesg n 2> /dev/null || true"},
}

// quickLogin applies loginEdits to tree. It never follows a symbolic
// link: in an imported image one may point anywhere on the host.
func quickLogin(tree string) error {
	for _, e := range loginEdits {
		p := filepath.Join(tree, e.path)
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("login: %w", err)
		}
		if !st.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("login: %w", err)
		}
		s := string(b)
		if !strings.Contains(s, e.old) || strings.Contains(s, e.new) {
			continue
		}
		if err := writeFile(p, []byte(strings.ReplaceAll(s, e.old, e.new)), st.Mode().Perm()); err != nil {
			return fmt.Errorf("login: %w", err)
		}
	}
	return nil
}
