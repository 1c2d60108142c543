package runtime

import (
	"fmt"
	"os"
	"testing"
)

func TestBlockDevice(t *testing.T) {
	major, minor, err := BlockDevice(os.TempDir())
	if err != nil {
		t.Skipf("temp dir not on a block device: %v", err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	if _, err := os.Stat(sys); err != nil {
		t.Errorf("BlockDevice = %d:%d, not a block device: %v", major, minor, err)
	}
	if _, err := os.Stat(sys + "/partition"); err == nil {
		t.Errorf("BlockDevice = %d:%d, a partition; want its disk", major, minor)
	}
	if _, _, err := BlockDevice("/proc/self"); err == nil {
		t.Error("BlockDevice(/proc/self) succeeded; want an error (procfs has no block device)")
	}
}
