package gvisor

import "testing"

func TestOverlayFlag(t *testing.T) {
	tests := []struct {
		overlay string
		dir     string
		diskMB  int
		want    string
	}{
		{DefaultOverlay, "/sb/1", 2048, "root:dir=/sb/1,size=2048m"},
		{DefaultOverlay, "/sb/1", 0, "root:dir=/sb/1"},
		{"root:memory", "/sb/1", 512, "root:memory,size=512m"},
		{"root:memory,size=1g", "/sb/1", 512, "root:memory,size=1g"},
		{"none", "/sb/1", 512, "none"},
	}
	for _, tt := range tests {
		d := &Driver{cfg: Config{Overlay: tt.overlay}}
		if got := d.overlayFlag(tt.dir, tt.diskMB); got != tt.want {
			t.Errorf("overlayFlag(%q, %q, %d) = %q, want %q", tt.overlay, tt.dir, tt.diskMB, got, tt.want)
		}
	}
}
