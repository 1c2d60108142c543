package envd

import "testing"

func TestHostsWithName(t *testing.T) {
	tests := []struct {
		name, in, host, want string
	}{
		{"replace", "127.0.0.1\tlocalhost\n127.0.1.1\tcocoon\n::1\tlocalhost\n", "sbx-1",
			"127.0.0.1\tlocalhost\n127.0.1.1\tsbx-1\n::1\tlocalhost\n"},
		{"add", "127.0.0.1\tlocalhost\n", "sandbox", "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n"},
		{"empty", "", "sandbox", "127.0.1.1\tsandbox\n"},
		{"duplicates", "127.0.1.1 a\n127.0.1.1 b\n", "c", "127.0.1.1\tc\n"},
		{"same", "127.0.1.1\tsandbox\n", "sandbox", "127.0.1.1\tsandbox\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(hostsWithName([]byte(tt.in), tt.host)); got != tt.want {
				t.Errorf("hostsWithName(%q, %q) = %q, want %q", tt.in, tt.host, got, tt.want)
			}
		})
	}
}
