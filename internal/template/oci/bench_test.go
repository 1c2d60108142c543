package oci

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cocoon-run/cocoon/internal/template/guest"
)

// BenchmarkExtractAs alternates the in-process extraction as root
// (Extract) and the unprivileged child (ExtractAs) of one tar stream, read
// from COCOON_BENCH_TAR (e.g. a tar of part of the base rootfs), so that
// both see the same host load. It reports each one's median in ms.
//
//	COCOON_BENCH_TAR=/tmp/sub.tar go test -run - -bench ExtractAs -benchtime 4x ./internal/template/oci
func BenchmarkExtractAs(b *testing.B) {
	path := os.Getenv("COCOON_BENCH_TAR")
	if path == "" || os.Geteuid() != 0 {
		b.Skip("needs root and COCOON_BENCH_TAR")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var asRoot, unprivileged []float64
	for i := 0; b.Loop(); i++ {
		for _, child := range []bool{i%2 == 0, i%2 != 0} {
			dir := filepath.Join(b.TempDir(), "rootfs")
			t0 := time.Now()
			if child {
				err = ExtractAs(context.Background(), bytes.NewReader(data), dir, guest.TreeHostID, ExtractOptions{})
			} else {
				err = Extract(bytes.NewReader(data), dir, ExtractOptions{})
			}
			if err != nil {
				b.Fatal(err)
			}
			ms := float64(time.Since(t0).Microseconds()) / 1000
			if child {
				unprivileged = append(unprivileged, ms)
			} else {
				asRoot = append(asRoot, ms)
			}
			os.RemoveAll(dir)
		}
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(median(asRoot), "ms-root")
	b.ReportMetric(median(unprivileged), "ms-userns")
}
