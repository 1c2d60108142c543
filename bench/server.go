package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// ServerConfig starts a `cocoon server` for the suite.
type ServerConfig struct {
	Binary  string // the cocoon binary
	DataDir string
	Runtime string // qemu | gvisor
	Accel   string // auto | kvm | tcg
	APIPort int    // the proxy listens on APIPort+1
	LogPath string
	Args    []string // extra flags
}

// Server is a running `cocoon server` child.
type Server struct {
	cmd      *exec.Cmd
	APIURL   string
	ProxyURL string
	APIKey   string
	// Runtime and Accel are what the server says it chose.
	Runtime, Accel string
	log            string
}

var chosenRE = regexp.MustCompile(`msg="runtime chosen" default=(\S+) .*accel=(\S*)`)

// StartServer starts the server and waits until its API answers.
func StartServer(ctx context.Context, c ServerConfig) (*Server, error) {
	api := fmt.Sprintf("127.0.0.1:%d", c.APIPort)
	proxy := fmt.Sprintf("127.0.0.1:%d", c.APIPort+1)
	args := []string{"server", "--data-dir", c.DataDir, "--listen", api, "--proxy-listen", proxy,
		"--net-prefix", "bench", "--net-pool", "10.240.0.0/16", "--runtime", c.Runtime,
		"--accel", c.Accel, "--node-id", "bench"}
	args = append(args, c.Args...)
	logf, err := os.Create(c.LogPath)
	if err != nil {
		return nil, fmt.Errorf("server log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(c.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start cocoon server: %w", err)
	}
	s := &Server{cmd: cmd, APIURL: "http://" + api, ProxyURL: "http://" + proxy, log: c.LogPath}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := http.Get(s.APIURL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				break
			}
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("cocoon server exited (%v); see %s", err, c.LogPath)
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("cocoon server did not answer within 3 min; see %s", c.LogPath)
		}
	}
	go func() { <-exited }()
	key, err := readEnvKey(filepath.Join(c.DataDir, "sdk.env"), "E2B_API_KEY")
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.APIKey = key
	if b, err := os.ReadFile(c.LogPath); err == nil {
		if m := chosenRE.FindSubmatch(b); m != nil {
			s.Runtime, s.Accel = string(m[1]), string(m[2])
		}
	}
	return s, nil
}

// Stop ends the server (SIGTERM, then SIGKILL after 15 s).
func (s *Server) Stop() {
	if s == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 150; i++ {
		if err := s.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = s.cmd.Process.Kill()
}

// PID of the server process.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// readEnvKey reads `export KEY=value` from an sdk.env file.
func readEnvKey(path, key string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read API key: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimPrefix(strings.TrimSpace(sc.Text()), "export ")
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return strings.Trim(v, `"'`), nil
		}
	}
	return "", errors.New("no " + key + " in " + path)
}
