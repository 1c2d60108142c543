package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart draws the millisecond figures as horizontal bars (p50, with a tick
// at p99) on a logarithmic axis, since they span from a fork+exec to a
// cold boot.
func (r *Report) Chart(w io.Writer) error {
	var rows []Result
	for _, x := range r.Results {
		if x.Unit == "ms" && x.P50 > 0 {
			rows = append(rows, x)
		}
	}
	const (
		labelW = 430
		barW   = 560
		rowH   = 18
		top    = 40
		pad    = 10
	)
	width := labelW + barW + 2*pad + 90
	height := top + rowH*len(rows) + 30
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	text(pad, 18, "Cocoon bench: p50 (bar) and p99 (tick), ms, log scale; load "+r.Host.LoadBefore+" -> "+r.Host.LoadAfter, color.Black)
	lo, hi := 1.0, 10.0
	if len(rows) > 0 {
		lo, hi = math.Inf(1), math.Inf(-1)
	}
	for _, x := range rows {
		lo = math.Min(lo, x.P50)
		hi = math.Max(hi, math.Max(x.P99, x.P50))
	}
	lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 0.01))))
	hi = math.Pow(10, math.Ceil(math.Log10(math.Max(hi, lo*10))))
	xOf := func(v float64) int {
		v = math.Max(v, lo)
		return labelW + pad + int(float64(barW)*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo)))
	}
	grid := color.RGBA{220, 220, 220, 255}
	for d := lo; d <= hi*1.0001; d *= 10 {
		x := xOf(d)
		for y := top - 4; y < top+rowH*len(rows); y++ {
			img.Set(x, y, grid)
		}
		text(x-8, top+rowH*len(rows)+14, fmt.Sprintf("%g", d), color.Gray{90})
	}
	colors := map[string]color.RGBA{
		"qemu": {66, 133, 244, 255}, "gvisor": {52, 168, 83, 255},
		"runc": {251, 188, 5, 255}, "host": {120, 120, 120, 255},
	}
	for i, x := range rows {
		y := top + i*rowH
		text(pad, y+13, fmt.Sprintf("%s %s/%s", x.Name, x.Runtime, x.Accel), color.Black)
		c, ok := colors[x.Runtime]
		if !ok {
			c = color.RGBA{200, 80, 80, 255}
		}
		draw.Draw(img, image.Rect(labelW+pad, y+3, xOf(x.P50), y+rowH-3), image.NewUniform(c), image.Point{}, draw.Src)
		px := xOf(x.P50)
		if x.P99 > 0 { // scalars have no distribution
			px = xOf(x.P99)
			for yy := y + 1; yy < y+rowH-1; yy++ {
				img.Set(px, yy, color.Black)
			}
		}
		text(max(xOf(x.P50), px)+4, y+13, fmt.Sprintf("%.1f", x.P50), color.Black)
	}
	return png.Encode(w, img)
}
