package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckSandboxIDs(t *testing.T) {
	for _, tc := range []struct {
		name, file, content string
		wantErr             string // "" for none
	}{
		{"free", "passwd", "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n", ""},
		{"user in the gVisor range", "passwd", "evil:x:1879048192:100::/:/bin/sh\n", "evil holds ids 1879048192-1879048192, in the gVisor sandboxes'"},
		{"group in the QEMU range", "group", "g:x:1879113730:\n", "g holds ids 1879113730-1879113730, in the QEMU sandboxes'"},
		{"subuid range across both", "subuid", "alice:1879000000:200000\n", "alice holds ids 1879000000-1879199999"},
		{"group in the template trees' range", "group", "t:x:1879180264:\n", "t holds ids 1879180264-1879180264, in the template trees'"},
		{"subgid below", "subgid", "bob:100000:65536\n", ""},
		{"malformed lines ignored", "subuid", "x\n:::\nc:abc:1\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			etc := t.TempDir()
			if err := os.WriteFile(filepath.Join(etc, tc.file), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			err := checkSandboxIDs(etc)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("got %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
	// This host passes.
	if err := checkSandboxIDs("/etc"); err != nil {
		t.Errorf("/etc: %v", err)
	}
}
