package bench

import (
	"bytes"
	"image/png"
	"testing"
)

func TestChart(t *testing.T) {
	for _, rep := range []*Report{
		{},
		{Results: []Result{
			{Name: "create.sequential", Runtime: "qemu", Accel: "tcg", Unit: "ms", N: 3, P50: 48, P99: 90},
			{Name: "floor.fork_exec_true", Runtime: "host", Accel: "native", Unit: "ms", N: 3, P50: 0.6, P99: 1},
			{Name: "density.idle_sandboxes", Runtime: "qemu", Accel: "tcg", Unit: "count", N: 1, Value: 150},
		}},
	} {
		var b bytes.Buffer
		if err := rep.Chart(&b); err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(&b)
		if err != nil {
			t.Fatal(err)
		}
		if want := 40 + 18*rep.countMS() + 30; img.Bounds().Dy() != want {
			t.Errorf("height %d, want %d", img.Bounds().Dy(), want)
		}
	}
}

func (r *Report) countMS() int {
	n := 0
	for _, x := range r.Results {
		if x.Unit == "ms" && x.P50 > 0 {
			n++
		}
	}
	return n
}
