package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Phases of the suite, selectable with Config.Only.
var Phases = []string{"create", "first", "exec", "compute", "files", "disk", "pause", "killall", "density", "codeinterp", "baseline"}

// Config configures a run of the suite.
type Config struct {
	// Binary is the cocoon binary used to start servers.
	Binary string
	// DataDir is the servers' data directory (its base template must be
	// built); OutDir receives the results.
	DataDir, OutDir string
	// Runtimes to measure, one server each: "qemu", "gvisor".
	Runtimes []string
	Accel    string // for qemu: auto | kvm | tcg
	APIPort  int
	// APIURL, ProxyURL and APIKey point at an already running server
	// instead (then Runtimes is what it runs, one entry).
	APIURL, ProxyURL, APIKey string
	Template                 string
	// CodeInterpreterTemplate is the template of the codeinterp phase
	// (default code-interpreter-v1).
	CodeInterpreterTemplate string
	Only                    map[string]bool
	// ServerArgs are extra flags for the started servers (e.g. --debug).
	ServerArgs []string

	Creates           int // sequential creates
	ConcurrentCreates int // creates spread over Concurrency clients (when ConcurrentFor is 0)
	// ConcurrentFor makes the Concurrency clients create for this long
	// instead of ConcurrentCreates times.
	ConcurrentFor    time.Duration
	Concurrency      int
	Execs            int
	ComputeRuns      int
	FileRuns         int // per size (1 MiB); the 100 MiB file runs FileRuns/4+1 times
	PauseRuns        int
	DensityBudgetMiB int
	DensityMax       int
	ColdBoots        int
	Floors           int // runc runs and fork+exec runs

	Log io.Writer
}

func (c *Config) want(phase string) bool { return len(c.Only) == 0 || c.Only[phase] }

func (c *Config) logf(format string, a ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
}

// target records the runtime/accel of a server under test.
type target struct {
	rt, accel string
	c         *Client
	dataDir   string
	serverPID int
}

// Run runs the suite and writes its report into cfg.OutDir.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	rep := newReport(cfg)
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("results dir: %w", err)
	}
	var errs []error
	for _, rt := range cfg.Runtimes {
		if err := runRuntime(ctx, &cfg, rep, rt); err != nil {
			cfg.logf("%s: %v", rt, err)
			errs = append(errs, fmt.Errorf("%s: %w", rt, err))
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", rt, err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	if cfg.want("compute") {
		cfg.logf("host: compute")
		if err := runHostCompute(ctx, &cfg, rep); err != nil {
			rep.Errors = append(rep.Errors, "host compute: "+err.Error())
		}
	}
	if cfg.want("baseline") {
		cfg.logf("baseline: fork+exec, runc, cold boot")
		if err := runBaselines(ctx, &cfg, rep); err != nil {
			errs = append(errs, err)
			rep.Errors = append(rep.Errors, "baseline: "+err.Error())
		}
	}
	rep.finish()
	if err := rep.Write(cfg.OutDir); err != nil {
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

func runRuntime(ctx context.Context, cfg *Config, rep *Report, rt string) error {
	t := &target{rt: rt, dataDir: cfg.DataDir}
	if cfg.APIURL != "" {
		t.c = NewClient(cfg.APIURL, cfg.ProxyURL, cfg.APIKey)
		t.accel = "unknown"
	} else {
		cfg.logf("%s: starting cocoon server", rt)
		srv, err := StartServer(ctx, ServerConfig{
			Binary: cfg.Binary, DataDir: cfg.DataDir, Runtime: rt, Accel: cfg.Accel,
			APIPort: cfg.APIPort, LogPath: filepath.Join(cfg.OutDir, "server-"+rt+".log"),
			Args: cfg.ServerArgs,
		})
		if err != nil {
			return err
		}
		defer srv.Stop()
		t.c = NewClient(srv.APIURL, srv.ProxyURL, srv.APIKey)
		t.serverPID = srv.PID()
		t.accel = srv.Accel
	}
	if rt == "gvisor" {
		t.accel = "systrap"
		if b, err := os.ReadFile(filepath.Join(cfg.DataDir, "bin", "runsc.platform")); err == nil {
			t.accel = strings.TrimSpace(string(b))
		}
	}
	if t.accel == "" {
		t.accel = "unknown"
	}
	rep.Runtimes = append(rep.Runtimes, rt+"/"+t.accel)
	cfg.logf("%s (%s): warming up", rt, t.accel)
	// Warm-up: the first creates fill pools and page caches; not counted.
	for range 3 {
		sb, err := t.c.Create(ctx, cfg.Template, 300)
		if err != nil {
			return fmt.Errorf("warm-up create: %w", err)
		}
		_ = t.c.Kill(ctx, sb.ID)
	}
	type phase struct {
		name string
		fn   func(context.Context, *Config, *Report, *target) error
	}
	for _, p := range []phase{
		{"create", benchCreate}, {"first", benchFirst}, {"exec", benchExec}, {"compute", benchCompute},
		{"files", benchFiles}, {"disk", benchDisk}, {"pause", benchPause}, {"killall", benchKillAll}, {"density", benchDensity},
		{"codeinterp", benchCodeInterpreter},
	} {
		if !cfg.want(p.name) || ctx.Err() != nil {
			continue
		}
		cfg.logf("%s: %s", rt, p.name)
		if err := p.fn(ctx, cfg, rep, t); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s %s: %v", rt, p.name, err))
			cfg.logf("%s %s: %v", rt, p.name, err)
		}
	}
	if t.c.Retries429 > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s: the API's rate limiter answered 429 %d times; those requests were retried and their wait counts in the figures", rt, t.c.Retries429))
	}
	return nil
}

// killAll kills ids with a few workers.
func killAll(ctx context.Context, c *Client, ids []string) {
	ch := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for id := range ch {
				_ = c.Kill(context.WithoutCancel(ctx), id)
			}
		})
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
}

// benchCreate: POST /sandboxes until envd answers through the proxy,
// sequentially and from Concurrency clients at once.
func benchCreate(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	var api, ready Samples
	var ids []string
	defer func() { killAll(ctx, t.c, ids) }()
	for range cfg.Creates {
		t0 := time.Now()
		sb, err := t.c.Create(ctx, cfg.Template, 300)
		if err != nil {
			return err
		}
		api = append(api, time.Since(t0))
		if err := t.c.Health(ctx, sb); err != nil {
			return err
		}
		ready = append(ready, time.Since(t0))
		// Killed right away: a sequential create must not pay for the
		// ones before it.
		if err := t.c.Kill(ctx, sb.ID); err != nil {
			return err
		}
	}
	rep.add(msResult("create.sequential", t.rt, t.accel, ready))
	rep.add(msResult("create.sequential.api", t.rt, t.accel, api))

	var mu sync.Mutex
	var conc Samples
	var firstErr error
	var issued atomic.Int64
	start := time.Now()
	next := func() bool {
		if cfg.ConcurrentFor > 0 {
			return time.Since(start) < cfg.ConcurrentFor
		}
		return issued.Add(1) <= int64(cfg.ConcurrentCreates)
	}
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for next() {
				t0 := time.Now()
				sb, err := t.c.Create(ctx, cfg.Template, 300)
				if err == nil {
					err = t.c.Health(ctx, sb)
				}
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conc = append(conc, d)
					ids = append(ids, sb.ID)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	wall := time.Since(start)
	r := msResult(fmt.Sprintf("create.concurrent%d", cfg.Concurrency), t.rt, t.accel, conc)
	rep.add(r)
	rep.add(scalar(fmt.Sprintf("create.concurrent%d.rate", cfg.Concurrency), t.rt, t.accel, "creates/s",
		float64(len(conc))/wall.Seconds(), fmt.Sprintf("%d creates in %.2fs by %d clients", len(conc), wall.Seconds(), cfg.Concurrency)))
	return firstErr
}

// benchFirst: what a user waits for after Sandbox.create: POST /sandboxes
// then the first commands.run('true') (process.Start of
// /bin/bash -l -c true, as the SDK sends it) to its end event, and the
// second run right after, on the same connection; Creates times, each
// sandbox killed before the next.
func benchFirst(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	var createFirst, first, second Samples
	for range cfg.Creates {
		t0 := time.Now()
		sb, err := t.c.Create(ctx, cfg.Template, 300)
		if err != nil {
			return err
		}
		pc := t.c.Process(sb, "user")
		r1, err := t.c.Run(ctx, pc, "/bin/bash", "-l", "-c", "true")
		if err == nil {
			createFirst = append(createFirst, time.Since(t0))
			first = append(first, r1.Elapsed)
			var r2 RunResult
			if r2, err = t.c.Run(ctx, pc, "/bin/bash", "-l", "-c", "true"); err == nil {
				second = append(second, r2.Elapsed)
			}
		}
		if kerr := t.c.Kill(ctx, sb.ID); err == nil {
			err = kerr
		}
		if err != nil {
			return err
		}
	}
	rep.add(msResult("create.first_exec", t.rt, t.accel, createFirst))
	rep.add(msResult("exec.first", t.rt, t.accel, first))
	rep.add(msResult("exec.second", t.rt, t.accel, second))
	// Where the first exec's time goes: the login shell itself, timed
	// inside by the guest's clock (a warm loop, as the snapshot's warm-up
	// leaves it), against the round trip above.
	sb, err := t.c.Create(ctx, cfg.Template, 300)
	if err != nil {
		return err
	}
	defer t.c.Kill(context.WithoutCancel(ctx), sb.ID)
	const loops = 20
	r, err := t.c.Run(ctx, t.c.Process(sb, "user"), "/bin/bash", "-c",
		`a=$(date +%s%N); for i in $(seq `+strconv.Itoa(loops)+`); do /bin/bash -l -c true; done; b=$(date +%s%N); echo $(( (b-a)/`+strconv.Itoa(loops)+` ))`)
	if err != nil {
		return err
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(r.Stdout), 64)
	if err != nil {
		return fmt.Errorf("in-sandbox timing %q: %w", r.Stdout, err)
	}
	rep.add(scalar("exec.bash_l_c_true.in_sandbox", t.rt, t.accel, "ms", ns/1e6,
		"/bin/bash -l -c true inside the sandbox as user (mean of a loop of 20, guest clock): the login shell's share of exec.first"))
	return nil
}

// benchKillAll: bad input, `sudo kill -9 -1` as user (root kills every
// process it may): the command must end at once with an error (its shell
// is killed), envd must live (it is PID 1, which kill -1 spares) and the
// next command must run. Three sandboxes; the end and the next exec are
// timed.
func benchKillAll(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	var end, next Samples
	status := ""
	for range 3 {
		sb, err := t.c.Create(ctx, cfg.Template, 300)
		if err != nil {
			return err
		}
		pc := t.c.Process(sb, "user")
		if _, err := t.c.Run(ctx, pc, "/bin/bash", "-c", "nohup sleep 600 >/dev/null 2>&1 &"); err != nil {
			_ = t.c.Kill(ctx, sb.ID)
			return err
		}
		r, err := t.c.Run(ctx, pc, "/bin/bash", "-l", "-c", "sudo kill -9 -1")
		if r.Elapsed == 0 { // no end event: a failed request, not a killed shell
			_ = t.c.Kill(ctx, sb.ID)
			return fmt.Errorf("kill -9 -1: %w", err)
		}
		end, status = append(end, r.Elapsed), r.Status
		r, err = t.c.Run(ctx, pc, "/bin/true")
		if kerr := t.c.Kill(ctx, sb.ID); err == nil {
			err = kerr
		}
		if err != nil {
			return fmt.Errorf("the command after kill -9 -1: %w", err)
		}
		next = append(next, r.Elapsed)
	}
	e := msResult("killall.end", t.rt, t.accel, end)
	e.Note = "sudo kill -9 -1 to its end event (" + status + ")"
	rep.add(e)
	n := msResult("killall.next_exec", t.rt, t.accel, next)
	n.Note = "process.Start of /bin/true right after it: the sandbox lives"
	rep.add(n)
	return nil
}

// benchDisk: 1 GiB written with dd inside a sandbox (to /home/user, the
// sandbox's disk) and on the host (into the data dir's filesystem), each
// timed by dd itself, conv=fsync on both.
func benchDisk(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	const dd = "dd if=/dev/zero of=%s bs=1M count=1024 conv=fsync 2>&1 | tail -1"
	sb, err := t.c.Create(ctx, cfg.Template, 600)
	if err != nil {
		return err
	}
	defer t.c.Kill(context.WithoutCancel(ctx), sb.ID)
	pc := t.c.Process(sb, "user")
	var in, host []float64
	hostFile := filepath.Join(cfg.DataDir, "bench-dd")
	defer os.Remove(hostFile)
	for range 3 {
		r, err := t.c.Run(ctx, pc, "/bin/bash", "-c", fmt.Sprintf(dd, "/home/user/bench-dd")+"; rm -f /home/user/bench-dd")
		if err != nil {
			return err
		}
		mbps, err := ddRate(r.Stdout)
		if err != nil {
			return err
		}
		in = append(in, mbps)
		out, err := exec.CommandContext(ctx, "/bin/bash", "-c", fmt.Sprintf(dd, hostFile)).Output()
		if err != nil {
			return fmt.Errorf("host dd: %w", err)
		}
		if mbps, err = ddRate(string(out)); err != nil {
			return err
		}
		host = append(host, mbps)
		os.Remove(hostFile)
	}
	r := distResult("disk.write_1GiB", t.rt, t.accel, "MB/s", in)
	r.Note = "dd bs=1M count=1024 conv=fsync into /home/user, dd's own rate"
	rep.add(r)
	h := distResult("disk.write_1GiB.host_"+t.rt, "host", "native", "MB/s", host)
	h.Note = "the same dd into the data dir on the host, alternating with the sandbox's"
	rep.add(h)
	return nil
}

// ddRate parses dd's summary line ("... copied, 1.2 s, 850 MB/s") into MB/s.
func ddRate(line string) (float64, error) {
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) < 2 {
		return 0, fmt.Errorf("dd: %q", line)
	}
	v, err := strconv.ParseFloat(f[len(f)-2], 64)
	if err != nil {
		return 0, fmt.Errorf("dd rate %q: %w", line, err)
	}
	switch f[len(f)-1] {
	case "GB/s":
		v *= 1000
	case "kB/s":
		v /= 1000
	case "MB/s":
	default:
		return 0, fmt.Errorf("dd unit in %q", line)
	}
	return v, nil
}

// benchExec: process.Start round trips through the proxy, and the protocol's
// share of one (round trip of `true` minus the in-sandbox cost of
// fork+exec of true, measured inside the sandbox over a loop).
func benchExec(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	sb, err := t.c.Create(ctx, cfg.Template, 600)
	if err != nil {
		return err
	}
	defer t.c.Kill(context.WithoutCancel(ctx), sb.ID)
	pc := t.c.Process(sb, "user")
	for range 3 { // warm the page cache and connections
		if _, err := t.c.Run(ctx, pc, "/bin/true"); err != nil {
			return err
		}
	}
	var tru, bash Samples
	for range cfg.Execs {
		r, err := t.c.Run(ctx, pc, "/bin/true")
		if err != nil {
			return err
		}
		tru = append(tru, r.Elapsed)
	}
	for range max(cfg.Execs/4, 3) {
		r, err := t.c.Run(ctx, pc, "/bin/bash", "-l", "-c", "true")
		if err != nil {
			return err
		}
		bash = append(bash, r.Elapsed)
	}
	// In-sandbox cost of one fork+exec of true: a loop of 200, timed by
	// the guest's own clock.
	const loops = 200
	r, err := t.c.Run(ctx, pc, "/bin/bash", "-c",
		`a=$(date +%s%N); for i in $(seq `+strconv.Itoa(loops)+`); do /bin/true; done; b=$(date +%s%N); echo $(( (b-a)/`+strconv.Itoa(loops)+` ))`)
	if err != nil {
		return err
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(r.Stdout), 64)
	if err != nil {
		return fmt.Errorf("in-sandbox timing %q: %w", r.Stdout, err)
	}
	inside := ns / 1e6
	rt := msResult("exec.true", t.rt, t.accel, tru)
	rep.add(rt)
	rep.add(msResult("exec.bash_l_c_true", t.rt, t.accel, bash))
	rep.add(scalar("exec.true.in_sandbox", t.rt, t.accel, "ms", inside, "fork+exec of /bin/true inside the sandbox (mean of a loop of 200, guest clock)"))
	share := make([]float64, len(tru))
	for i, d := range tru {
		share[i] = float64(d)/1e6 - inside
	}
	p := distResult("exec.protocol_share", t.rt, t.accel, "ms", share)
	p.Note = "round trip of process.Start(/bin/true) minus its in-sandbox fork+exec cost"
	rep.add(p)
	return nil
}

const computeScript = "import time\nt=time.perf_counter()\ns=0\nfor i in range(1000000):\n    s+=i\nprint((time.perf_counter()-t)*1000)"

// benchCompute: a CPU-bound Python loop (10^6 additions), timed by Python
// itself, in the sandbox and on the host with Debian's python3.
func benchCompute(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	sb, err := t.c.Create(ctx, cfg.Template, 600)
	if err != nil {
		return err
	}
	defer t.c.Kill(context.WithoutCancel(ctx), sb.ID)
	pc := t.c.Process(sb, "user")
	var inner []float64
	var rtt Samples
	for range cfg.ComputeRuns {
		r, err := t.c.Run(ctx, pc, "/usr/bin/python3", "-c", computeScript)
		if err != nil {
			return err
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(r.Stdout), 64)
		if err != nil {
			return fmt.Errorf("python output %q: %w", r.Stdout, err)
		}
		inner = append(inner, v)
		rtt = append(rtt, r.Elapsed)
	}
	c := distResult("compute.python_loop", t.rt, t.accel, "ms", inner)
	c.Note = "10^6 additions, timed inside python"
	rep.add(c)
	rep.add(msResult("compute.python_loop.round_trip", t.rt, t.accel, rtt))
	return nil
}

// benchFiles: upload and download of 1 MiB and 100 MiB through the proxy.
func benchFiles(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	sb, err := t.c.Create(ctx, cfg.Template, 600)
	if err != nil {
		return err
	}
	defer t.c.Kill(context.WithoutCancel(ctx), sb.ID)
	for _, sz := range []struct {
		name string
		n    int64
		runs int
	}{{"1MiB", 1 << 20, cfg.FileRuns}, {"100MiB", 100 << 20, cfg.FileRuns/4 + 1}} {
		data := make([]byte, sz.n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		var w, r Samples
		path := "/tmp/bench-" + sz.name
		for range sz.runs {
			t0 := time.Now()
			if err := t.c.WriteFile(ctx, sb, path, bytes.NewReader(data), sz.n); err != nil {
				return err
			}
			w = append(w, time.Since(t0))
			t0 = time.Now()
			got, err := t.c.ReadFile(ctx, sb, path)
			if err != nil {
				return err
			}
			if got != sz.n {
				return fmt.Errorf("read %s: %d bytes, want %d", path, got, sz.n)
			}
			r = append(r, time.Since(t0))
		}
		rep.add(msResult("files.write_"+sz.name, t.rt, t.accel, w))
		rep.add(msResult("files.read_"+sz.name, t.rt, t.accel, r))
	}
	return nil
}

// dirty100 leaves a process behind that holds 100 MiB of random data in
// its memory (a tmpfs would need a mount, which gVisor refuses, and its
// /dev/shm is too small).
const dirty100 = `setsid nohup python3 -c "import os,time; b=bytearray(os.urandom(100<<20)); open('/tmp/benchfill.ready','w').close(); time.sleep(86400)" >/dev/null 2>&1 < /dev/null & for i in $(seq 600); do [ -e /tmp/benchfill.ready ] && exit 0; sleep 0.1; done; exit 1`

// benchPause: pause and resume of a sandbox that dirtied 100 MiB.
func benchPause(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	var pause, resume Samples
	defer func() { // what was measured, also when a later step failed
		rep.add(msResult("pause.dirty100MiB", t.rt, t.accel, pause))
		rep.add(msResult("resume.dirty100MiB", t.rt, t.accel, resume))
	}()
	for range cfg.PauseRuns {
		sb, err := t.c.Create(ctx, cfg.Template, 600)
		if err != nil {
			return err
		}
		err = func() error {
			pc := t.c.Process(sb, "user")
			if _, err := t.c.Run(ctx, pc, "/bin/bash", "-c", dirty100); err != nil {
				return fmt.Errorf("dirty memory: %w", err)
			}
			t0 := time.Now()
			if err := t.c.Pause(ctx, sb.ID); err != nil {
				return err
			}
			pause = append(pause, time.Since(t0))
			t0 = time.Now()
			if err := t.c.Resume(ctx, sb.ID); err != nil {
				return err
			}
			if err := t.c.Health(ctx, sb); err != nil {
				return err
			}
			resume = append(resume, time.Since(t0))
			r, err := t.c.Run(ctx, pc, "/bin/bash", "-c", "pgrep -f benchfill.ready >/dev/null && echo alive")
			if err != nil {
				return err
			}
			if strings.TrimSpace(r.Stdout) != "alive" {
				return fmt.Errorf("after resume the process holding 100 MiB is gone: %q", r.Stdout)
			}
			return nil
		}()
		_ = t.c.Kill(context.WithoutCancel(ctx), sb.ID)
		if err != nil {
			return err
		}
	}
	return nil
}

// benchDensity starts idle sandboxes until the memory budget or the count
// cap is reached, then reports how many and their PSS.
func benchDensity(ctx context.Context, cfg *Config, rep *Report, t *target) error {
	var ids []string
	defer func() { killAll(ctx, t.c, ids) }()
	avail0 := memAvailableMiB()
	budget := float64(cfg.DensityBudgetMiB)
	var pss float64
	stop := ""
	for len(ids) < cfg.DensityMax {
		sb, err := t.c.Create(ctx, cfg.Template, 1800)
		if err != nil {
			stop = "create failed: " + err.Error()
			break
		}
		ids = append(ids, sb.ID)
		if len(ids)%10 == 0 || len(ids) == cfg.DensityMax {
			pss = sandboxPSSMiB(cfg.DataDir, t.serverPID)
			cfg.logf("density %s: %d sandboxes, PSS %.0f MiB, MemAvailable %.0f MiB", t.rt, len(ids), pss, memAvailableMiB())
			if pss >= budget {
				stop = "memory budget reached"
				break
			}
			if memAvailableMiB() < 2048 {
				stop = "host MemAvailable below 2 GiB (safety stop)"
				break
			}
		}
	}
	if stop == "" {
		stop = "count cap reached"
	}
	time.Sleep(2 * time.Second) // let the last ones settle
	pss = sandboxPSSMiB(cfg.DataDir, t.serverPID)
	used := avail0 - memAvailableMiB()
	n := float64(max(len(ids), 1))
	rep.add(scalar("density.idle_sandboxes", t.rt, t.accel, "count", float64(len(ids)),
		fmt.Sprintf("budget %d MiB, cap %d: stopped because %s", cfg.DensityBudgetMiB, cfg.DensityMax, stop)))
	rep.add(scalar("density.pss_per_sandbox", t.rt, t.accel, "MiB", pss/n,
		fmt.Sprintf("total PSS %.0f MiB of the sandbox processes; host MemAvailable fell %.0f MiB (%.1f MiB per sandbox)", pss, used, used/n)))
	return nil
}
