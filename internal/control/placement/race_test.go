//go:build race

package placement

// raceEnabled: the race detector slows every memory access ~10×, so the
// latency bound is only logged.
const raceEnabled = true
